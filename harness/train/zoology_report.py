"""The MQAR leaderboard of zoology's protocol (``configs/mqar_zoology.yaml``), from committed run records.

Records as :mod:`qdelta.harness.train.report` reads them (``<runs_dir>/<run>/metrics.json`` and
``train_config.yaml``); every run must have been trained on zoology's data (``data.generator: zoology``)
and tested on zoology's seven test settings, or the report refuses it by name. Output (same records,
same bytes)::

    leaderboard.csv          one row per run and test setting:
                             model,d_model,lr,seed,input_seq_len,num_kv_pairs,accuracy
    leaderboard.md           per (model, d_model): the learning rate with the highest mean accuracy
                             over seeds, its accuracy per test setting, seeds and their range
    acc_vs_d_model.png       accuracy against d_model, a panel per input_seq_len (zoology's
                             ``valid/input_seq_len/accuracy-L``: the mean over that length's settings)
    acc_vs_state_size.png    the same against the state floats per sequence (the Transformer's KV cache)
    acc_vs_num_kv_pairs.png  accuracy against the test setting's num_kv_pairs, a panel per d_model

``accuracy`` is the test setting's mean over its 1,000 examples of each example's accuracy over its
query positions, as zoology's ``compute_metrics`` averages; with equal-size settings the mean over
settings is zoology's ``valid/accuracy``. Curves show the best-lr cell's mean over seeds, bars its
min–max over seeds.

Run ``python -m qdelta.harness.train.zoology_report RUNS_DIR OUT_DIR``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List, Tuple

import yaml

from .report import (
    MODEL_LABELS,
    MODEL_ORDER,
    SLICE,
    _write_atomic,
    best_per_model,
    load_records,
    render_markdown,
    run_cli,
    state_size,
)

TEST_SETTINGS = ((64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256))  # original_mqar_configs.py
COLUMNS = ("model", "d_model", "lr", "seed", "input_seq_len", "num_kv_pairs", "accuracy")
PROTOCOL = "configs/mqar_zoology.yaml"


def _setting(key: str) -> Tuple[int, int]:
    L, K = SLICE.match(key).groups()
    return int(L), int(K)


def load_zoology_records(runs_dir: Path) -> List[Dict]:
    """:func:`~qdelta.harness.train.report.load_records`, each run checked to be one of zoology's
    protocol: its data generator and its test settings."""
    records = load_records(Path(runs_dir))
    fix = f"this report takes runs of {PROTOCOL}; move the run out of {runs_dir}"
    for r in records:
        data = yaml.safe_load((Path(runs_dir) / r["run"] / "train_config.yaml").read_text())["data"]
        if data.get("generator") != "zoology":
            raise ValueError(f"run {r['run']!r}: data.generator is {data.get('generator')!r}, not 'zoology'; {fix}")
        tested = tuple(sorted(_setting(k) for k in r["slices"]))
        if tested != TEST_SETTINGS:
            raise ValueError(
                f"run {r['run']!r}: tested on (L, K) {list(tested)}, not zoology's {list(TEST_SETTINGS)}; {fix}"
            )
    return records


def _order(r: Dict) -> Tuple:
    rank = MODEL_ORDER.index(r["type"]) if r["type"] in MODEL_ORDER else len(MODEL_ORDER)
    return rank, r["type"], r["d_model"], r["lr"], r["seed"]


def render_csv(records: List[Dict]) -> str:
    """One row per run and test setting, in model order, then d_model, lr, seed and setting; ``lr`` as
    Python's shortest round-trip repr (``0.0031622776601683794``), accuracy to 4 decimals."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in sorted(records, key=_order):
        for L, K in TEST_SETTINGS:
            writer.writerow(
                [r["type"], r["d_model"], repr(r["lr"]), r["seed"], L, K, f"{r['slices'][f'L{L}_K{K}']:.4f}"]
            )
    return buf.getvalue()


def _by_length(slices: Dict[str, float]) -> Dict[int, float]:
    """Accuracy per input_seq_len: the mean over that length's test settings."""
    lengths: Dict[int, List[float]] = {}
    for key, acc in slices.items():
        lengths.setdefault(_setting(key)[0], []).append(acc)
    return {L: sum(a) / len(a) for L, a in sorted(lengths.items())}


def _cells(records: List[Dict]) -> List[Dict]:
    """The best-lr cell per (model, d_model), with ``members``: its runs, one per seed."""
    runs = {r["run"]: r for r in records}
    return [{**b, "members": [runs[n] for n in b["runs"]] if "runs" in b else [b]} for b in best_per_model(records)]


def _line(ax, points, label) -> None:
    """``points``: (x, the cell's mean over seeds, its per-seed values); min–max bars."""
    xs, means, seeds = zip(*points)
    bars = [[max(0.0, m - min(s)) for m, s in zip(means, seeds)], [max(0.0, max(s) - m) for m, s in zip(means, seeds)]]
    ax.errorbar(xs, means, yerr=bars, marker="o", capsize=2, label=label)


def _point(x, cell, value):
    return x, value(cell["slices"]), [value(r["slices"]) for r in cell["members"]]


def _figure(plt, panels, draw, title, xlabel, path: Path) -> Path:
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        draw(ax, panel)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title(panel), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    axes[0][0].set_ylabel("MQAR accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def _plots(records: List[Dict], out: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _cells(records)
    types = [t for t in MODEL_ORDER if any(c["type"] == t for c in cells)] + sorted(
        {c["type"] for c in cells} - set(MODEL_ORDER)
    )
    label = {t: MODEL_LABELS.get(t, t) for t in types}
    lengths = sorted({L for L, _ in TEST_SETTINGS})

    def against(x_of):  # accuracy at one input_seq_len against x_of(cell, L), a line per model
        def draw(ax, L):
            for t in types:
                row = sorted((c for c in cells if c["type"] == t), key=lambda c: x_of(c, L))
                _line(ax, [_point(x_of(c, L), c, lambda s: _by_length(s)[L]) for c in row], label[t])

        return draw

    def by_pairs(ax, d):  # accuracy per test setting against its num_kv_pairs, a line per model
        for t in types:
            for c in (c for c in cells if (c["type"], c["d_model"]) == (t, d)):
                _line(ax, [_point(K, c, lambda s, k=f"L{L}_K{K}": s[k]) for L, K in TEST_SETTINGS], label[t])

    def length_title(L):
        return f"input_seq_len = {L}"

    return [
        _figure(plt, lengths, against(lambda c, L: c["d_model"]), length_title, "d_model", out / "acc_vs_d_model.png"),
        _figure(
            plt,
            lengths,
            against(lambda c, L: state_size(c["model"], L)),
            length_title,
            "state floats per sequence",
            out / "acc_vs_state_size.png",
        ),
        _figure(
            plt,
            sorted({c["d_model"] for c in cells}),
            by_pairs,
            lambda d: f"d_model = {d}",
            "num_kv_pairs of the test setting",
            out / "acc_vs_num_kv_pairs.png",
        ),
    ]


TITLE = f"MQAR leaderboard, zoology's protocol ({PROTOCOL})"
NOTE = (
    f"Data, test settings, budget, optimiser, lr sweep and per-mixer settings are zoology's original sweep; "
    f"the blocks, the Transformer's positions, precision and the noise tokens are not: the list is in "
    f"`{PROTOCOL}`. Each accuracy is the last test of its run (after 32 epochs or at the early stop, "
    f"mean test accuracy > 0.99)."
)


def generate(runs_dir, out_dir, plots: bool = True) -> List[Path]:
    """Write the leaderboard files from the zoology-protocol records under ``runs_dir``; returns their paths."""
    records = load_zoology_records(Path(runs_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(
        out / "leaderboard.md",
        render_markdown(records, title=TITLE, generator="qdelta.harness.train.zoology_report", note=NOTE).encode(),
    )
    _write_atomic(out / "leaderboard.csv", render_csv(records).encode())
    written = [out / "leaderboard.md", out / "leaderboard.csv"]
    return written + (_plots(records, out) if plots else [])


def main(argv=None) -> int:
    return run_cli(argv, generate, "MQAR leaderboard of zoology's protocol from training run records", "zoology_report")


if __name__ == "__main__":
    raise SystemExit(main())
