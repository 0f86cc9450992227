"""The reference MQAR leaderboard, generated only from committed run records.

Records: ``<runs_dir>/<run>/metrics.json`` (written by :mod:`qdelta.harness.train.loop`, with the
held-out MQAR accuracy per ``L{L}_K{K}`` slice) and ``<run>/train_config.yaml``. Output
(deterministic: same records, same bytes)::

    leaderboard.md    best learning rate per (model type, d_model): accuracy per slice, mean
    leaderboard.csv   every run: model type, d_model, lr, steps, params, state size, slices, mean
    acc_vs_seq_len.png   accuracy against sequence length, one panel per d_model
    acc_vs_state.png     accuracy against recurrent state size (KV cache for the Transformer)

Several seeds (the training ``seed`` of each run's metrics.json, else of its train_config.yaml):
where some (model type, d_model, lr) cell has runs of two or more seeds, each cell is first
reduced to its mean over seeds (per slice and of the mean accuracy), the best lr per (model
type, d_model) is the one with the highest mean over seeds, the table gains the columns
``seeds`` (how many) and ``mean min–max`` (range of the per-seed mean accuracy), the CSV a
``seed`` column (still one row per run), and the plots show the per-cell means. With one seed
per cell the output is exactly the one-seed output.

Run ``python -m qdelta.harness.train.report RUNS_DIR OUT_DIR``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

MODEL_ORDER = ("qdelta", "gated_deltanet", "delta_net", "linear_attn", "transformer")
MODEL_LABELS = {
    "qdelta": "Q-Delta",
    "gated_deltanet": "Gated DeltaNet",
    "delta_net": "DeltaNet",
    "linear_attn": "Linear attention",
    "transformer": "Transformer",
}
SLICE = re.compile(r"^L(\d+)_K(\d+)$")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def state_size(model: Dict, seq_len: int) -> int:
    """Floats of inference state per sequence, all layers: recurrent ``H K V`` per layer (head sizes as
    the model's config resolves them, e.g. DeltaNet's ``hidden_size * expand_k / num_heads`` where
    ``head_dim`` is not given); the Transformer's KV cache ``2 L d`` per layer at length ``seq_len``."""
    layers = int(model.get("num_hidden_layers", 2))
    if model["type"] == "transformer":
        return 2 * seq_len * int(model["hidden_size"]) * layers
    return _recurrent_state(json.dumps(model, sort_keys=True)) * layers


@functools.lru_cache(maxsize=None)
def _recurrent_state(model_json: str) -> int:
    """``H K V`` of one layer of the recurrent model described by ``model_json``."""
    from transformers import AutoConfig

    import qdelta  # noqa: F401  registers our model types with transformers

    fields = json.loads(model_json)
    config = AutoConfig.for_model(fields.pop("type"), **fields)
    return int(config.num_heads) * int(config.head_k_dim) * int(config.head_v_dim)


def load_records(runs_dir: Path) -> List[Dict]:
    """One dict per finished run (a folder with metrics.json), sorted by folder name."""
    if not Path(runs_dir).is_dir():
        raise ValueError(
            f"no folder {runs_dir}: give the folder that holds the run folders (e.g. results/mqar/long/runs)"
        )
    records = []
    for folder in sorted(p for p in Path(runs_dir).iterdir() if (p / "metrics.json").is_file()):
        metrics = json.loads((folder / "metrics.json").read_text())
        config = yaml.safe_load((folder / "train_config.yaml").read_text())
        slices = {k: float(v) for k, v in metrics["eval"].items() if SLICE.match(k)}
        seed = int(metrics["seed"] if "seed" in metrics else config.get("seed", 0))  # TrainConfig default 0
        records.append(
            {
                "run": folder.name,
                "type": config["model"]["type"],
                "model": config["model"],
                "seed": seed,
                "vocab_size": int(config["data"]["vocab_size"]),
                "batch_size": int(config["train"]["batch_size"]),
                "d_model": int(config["model"]["hidden_size"]),
                "lr": float(metrics["lr"]),
                "steps": int(metrics["steps"]),
                "params": int(metrics["num_parameters"]),
                "slices": slices,
                "mean": float(metrics["eval"]["mean"]),
                "final_loss": metrics.get("final_loss"),
            }
        )
    if not records:
        raise ValueError(f"no run records (folders with metrics.json) under {runs_dir}")
    return records


def _slice_keys(records) -> List[str]:
    keys = {k for r in records for k in r["slices"]}
    return sorted(keys, key=lambda k: tuple(int(x) for x in SLICE.match(k).groups()))


def _cells(records: List[Dict]) -> Dict[Tuple[str, int, float], List[Dict]]:
    """The records grouped by (model type, d_model, lr), in first-seen order."""
    cells: Dict[Tuple[str, int, float], List[Dict]] = {}
    for r in records:
        cells.setdefault((r["type"], r["d_model"], r["lr"]), []).append(r)
    return cells


def several_seeds(records: List[Dict]) -> bool:
    """Whether some (model type, d_model, lr) cell has runs of two or more distinct seeds."""
    return any(len({r["seed"] for r in runs}) > 1 for runs in _cells(records).values())


def seed_means(records: List[Dict]) -> List[Dict]:
    """One row per (model type, d_model, lr) cell: the fields of its lowest-seed run, with
    ``slices`` and ``mean`` replaced by their means over the cell's seeds, plus ``seeds`` (sorted),
    ``runs`` (in seed order), ``mean_min`` and ``mean_max`` (range of the per-seed mean). A slice
    missing from some runs is averaged over the runs that have it."""
    rows = []
    for (model_type, d_model, lr), runs in _cells(records).items():
        runs = sorted(runs, key=lambda r: (r["seed"], r["run"]))
        for a, b in zip(runs, runs[1:]):
            if a["seed"] == b["seed"]:
                raise ValueError(
                    f"runs {a['run']!r} and {b['run']!r} are both seed {a['seed']} of "
                    f"({model_type}, d_model {d_model}, lr {lr:g}); keep one of them in the runs folder"
                )
        keys = {k for r in runs for k in r["slices"]}
        slices = {
            k: sum(r["slices"][k] for r in runs if k in r["slices"]) / sum(k in r["slices"] for r in runs) for k in keys
        }
        means = [r["mean"] for r in runs]
        rows.append(
            {
                **{k: v for k, v in runs[0].items() if k not in ("run", "seed")},
                "slices": slices,
                "mean": sum(means) / len(means),
                "seeds": [r["seed"] for r in runs],
                "runs": [r["run"] for r in runs],
                "mean_min": min(means),
                "mean_max": max(means),
            }
        )
    return rows


def best_per_model(records: List[Dict]) -> List[Dict]:
    """For each (model type, d_model): the run with the highest mean accuracy (ties: lower lr);
    with several seeds (:func:`several_seeds`), the :func:`seed_means` cell with the highest
    mean over seeds."""
    best: Dict[Tuple[str, int], Dict] = {}
    for r in seed_means(records) if several_seeds(records) else records:
        key = (r["type"], r["d_model"])
        if key not in best or (r["mean"], -r["lr"]) > (best[key]["mean"], -best[key]["lr"]):
            best[key] = r
    order = {t: i for i, t in enumerate(MODEL_ORDER)}
    return sorted(best.values(), key=lambda r: (r["d_model"], order.get(r["type"], 99), r["type"]))


REFERENCE = {"vocab_size": 8192, "slices": ["L64_K4", "L128_K8", "L256_K16", "L512_K64"]}


def _max_len(records) -> int:
    return max(int(SLICE.match(k).group(1)) for k in _slice_keys(records))


def render_markdown(
    records: List[Dict], title: Optional[str] = None, generator: str = "qdelta.harness.train.report", note: str = ""
) -> str:
    """The best-lr table; ``title`` replaces the default (reference or not, from the slices and vocab),
    ``generator`` names the module in the heading, ``note`` (a paragraph) follows the source line."""
    keys = _slice_keys(records)
    L = _max_len(records)
    reference = keys == REFERENCE["slices"] and {r["vocab_size"] for r in records} == {REFERENCE["vocab_size"]}
    if title is None:
        title = "MQAR reference leaderboard" if reference else "MQAR leaderboard (not the reference protocol)"
    seeded = several_seeds(records)
    head = (
        f"| model | d_model | best lr | params | state (L={L}) | "
        + " | ".join(k.replace("_", " ") for k in keys)
        + " | mean |"
        + (" seeds | mean min–max |" if seeded else "")
    )
    vocabs = ", ".join(str(v) for v in sorted({r["vocab_size"] for r in records}))
    what = (
        "mean over seeds per row, best learning rate per row by that mean" if seeded else "best learning rate per row"
    )
    lines = [
        f"# {title} (generated by {generator}; do not edit)",
        "",
        f"Held-out zoology MQAR accuracy (vocab {vocabs}), {what}. Source: the run records in `runs/`.",
        "",
        *([note, ""] if note else []),
        head,
        "|" + "---|" * (6 + len(keys) + 2 * seeded),
    ]
    for r in best_per_model(records):
        cells = [
            MODEL_LABELS.get(r["type"], r["type"]),
            str(r["d_model"]),
            f"{r['lr']:g}",
            str(r["params"]),
            str(state_size(r["model"], L)),
        ]
        cells += [f"{r['slices'][k]:.3f}" if k in r["slices"] else "-" for k in keys]
        cells.append(f"{r['mean']:.3f}")
        if seeded:
            cells += [str(len(r["seeds"])), f"{r['mean_min']:.3f}–{r['mean_max']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lrs = sorted({r["lr"] for r in records})
    budgets = sorted({(r["steps"], r["batch_size"]) for r in records})
    seeds = f"seeds: {', '.join(str(s) for s in sorted({r['seed'] for r in records}))}; " if seeded else ""
    lines += [
        "",
        f"Runs: {len(records)}; learning rates tried: {', '.join(f'{x:g}' for x in lrs)}; {seeds}"
        f"training per run: {', '.join(f'{s} steps of {b} sequences' for s, b in budgets)}. "
        "Every run is in `leaderboard.csv`.",
        "",
    ]
    return "\n".join(lines)


def render_csv(records: List[Dict]) -> str:
    keys = _slice_keys(records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    L = _max_len(records)
    seeded = several_seeds(records)  # one row per run either way; the seed column only where seeds vary
    writer.writerow(
        [
            "run",
            "model_type",
            "d_model",
            "lr",
            *(["seed"] if seeded else []),
            "steps",
            "params",
            f"state_L{L}",
            *keys,
            "mean",
            "final_loss",
        ]
    )
    for r in sorted(records, key=lambda r: r["run"]):
        loss = "" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        writer.writerow(
            [
                r["run"],
                r["type"],
                r["d_model"],
                f"{r['lr']:g}",
                *([r["seed"]] if seeded else []),
                r["steps"],
                r["params"],
                state_size(r["model"], L),
                *(f"{r['slices'][k]:.4f}" if k in r["slices"] else "" for k in keys),
                f"{r['mean']:.4f}",
                loss,
            ]
        )
    return buf.getvalue()


def _plots(records: List[Dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_per_model(records)
    keys = _slice_keys(records)
    seq_lens = [int(SLICE.match(k).group(1)) for k in keys]
    dims = sorted({r["d_model"] for r in best})
    fig, axes = plt.subplots(1, len(dims), figsize=(4 * len(dims), 3.4), squeeze=False)
    for ax, d in zip(axes[0], dims):
        for r in (r for r in best if r["d_model"] == d):
            ax.plot(
                seq_lens,
                [r["slices"].get(k, float("nan")) for k in keys],
                marker="o",
                label=MODEL_LABELS.get(r["type"], r["type"]),
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(seq_lens, [f"{k.replace('_', ' ')}" for k in keys], fontsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"d_model = {d}")
        ax.set_xlabel("sequence length, key-value pairs")
    axes[0][0].set_ylabel("MQAR accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "acc_vs_seq_len.png", dpi=100, metadata={"Software": None})
    plt.close(fig)

    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
    for ax, k, L in zip(axes[0], keys, seq_lens):
        for t in MODEL_ORDER:
            rows = sorted((r for r in best if r["type"] == t), key=lambda r: state_size(r["model"], L))
            if rows:
                ax.plot(
                    [state_size(r["model"], L) for r in rows],
                    [r["slices"].get(k, float("nan")) for r in rows],
                    marker="o",
                    label=MODEL_LABELS[t],
                )
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(k.replace("_", " "))
        ax.set_xlabel("state floats per sequence")
    axes[0][0].set_ylabel("MQAR accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "acc_vs_state.png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def generate(runs_dir, out_dir, plots: bool = True) -> List[Path]:
    """Write the leaderboard files from the records under ``runs_dir``; returns their paths."""
    records = load_records(Path(runs_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "leaderboard.md", render_markdown(records).encode())
    _write_atomic(out / "leaderboard.csv", render_csv(records).encode())
    written = [out / "leaderboard.md", out / "leaderboard.csv"]
    if plots:
        _plots(records, out)
        written += [out / "acc_vs_seq_len.png", out / "acc_vs_state.png"]
    return written


def run_cli(argv, generate_fn, description: str, prog: str) -> int:
    """``RUNS_DIR OUT_DIR [--no-plots]``: write a leaderboard with ``generate_fn``; bad records end in
    one line (exit 2)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("runs_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    try:
        paths = generate_fn(args.runs_dir, args.out_dir, plots=not args.no_plots)
    except ValueError as err:
        parser.exit(2, f"{prog}: {err}\n")
    for path in paths:
        print(path)
    return 0


def main(argv=None) -> int:
    return run_cli(argv, generate, "MQAR leaderboard from training run records", "report")


if __name__ == "__main__":
    raise SystemExit(main())
