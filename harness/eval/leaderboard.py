"""Leaderboards built only from run records (``results/runs/*``), never from anything else.

Outputs under the leaderboard folder:

    leaderboard.md        model x task table (each task's primary lm-eval metric), slices by
                          sequence length / number of key-value pairs / depth, the runs, and the
                          paper's reported numbers as a separate, labelled table
    leaderboard.csv       model x task, long format (run_id, model, task, metric, value)
    slices.csv            per-slice scores (run_id, model, task, metric, field, slice, score, n)
    reported_paper.csv    the paper's reported numbers (separate source)
    acc_vs_seq_len.png, acc_vs_num_kv_pairs.png, acc_vs_state_size.png

Slices come from the per-sample records: every document field named in ``SLICE_FIELDS`` groups
the samples, and the sample's value of the task's primary metric is averaged per group.
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import records
from .reported import reported_markdown, reported_rows

log = logging.getLogger(__name__)

SLICE_FIELDS = {
    "seq_len": "sequence length",
    "num_kv_pairs": "number of key-value pairs",
    "depth": "needle depth",
    "context_length": "context length",
}
PLOTS = {"seq_len": "acc_vs_seq_len.png", "num_kv_pairs": "acc_vs_num_kv_pairs.png"}


def primary_metric(task_results: dict) -> Optional[Tuple[str, str, float]]:
    """(metric, filter, value): ``acc`` when reported, else the first numeric metric of the task."""
    keys = sorted(task_results, key=lambda k: k.partition(",")[0] != "acc")
    for key in keys:
        value = task_results[key]
        if key == "alias" or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        metric, _, filt = key.partition(",")
        return metric, filt or "none", float(value)
    return None


def collect(runs_dir: Path) -> dict:
    """Scores, slices and run info from the records: the leaderboard's only input."""
    scores: List[dict] = []
    slices: List[dict] = []
    runs: List[dict] = []
    for run in records.load_runs(runs_dir):
        summary = run["summary"]
        run_id, model = summary.get("run_id", run["path"].name), summary.get("model_label", "?")
        tasks_status = summary.get("tasks", {})
        runs.append(
            {
                "run_id": run_id,
                "model": model,
                "summary": summary,
                "done": sorted(run["tasks"]),
                "failed": sorted(
                    t for t, e in tasks_status.items() if e.get("status") == "failed" and t not in run["tasks"]
                ),
            }
        )
        for task, data in sorted(run["tasks"].items()):
            found = primary_metric(data["results"].get("results", {}).get(task, {}))
            if found is None:
                continue
            metric, filt, value = found
            scores.append({"run_id": run_id, "model": model, "task": task, "metric": metric, "value": value})
            groups: Dict[Tuple[str, object], List[float]] = defaultdict(list)
            for sample in records.read_samples(data["samples_path"]):
                if sample.get("filter", "none") != filt or not isinstance(sample.get(metric), (int, float, bool)):
                    continue
                doc = sample.get("doc") or {}
                for field in SLICE_FIELDS:
                    if isinstance(doc.get(field), (int, float)):
                        groups[(field, doc[field])].append(float(sample[metric]))
            for (field, key), values in sorted(groups.items(), key=lambda kv: (kv[0][0], float(kv[0][1]))):
                slices.append(
                    {
                        "run_id": run_id,
                        "model": model,
                        "task": task,
                        "metric": metric,
                        "field": field,
                        "slice": key,
                        "score": sum(values) / len(values),
                        "n": len(values),
                    }
                )
    return {"scores": scores, "slices": slices, "runs": runs}


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _csv(rows: List[dict], columns: List[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c) for c in columns})
    return buffer.getvalue()


def _slice_table(data: dict, field: str) -> List[str]:
    """Rows: runs; columns: slice values; cell: mean over the tasks that carry the field."""
    cells: Dict[Tuple[str, object], List[float]] = defaultdict(list)
    for s in data["slices"]:
        if s["field"] == field:
            cells[(s["run_id"], s["slice"])].append(s["score"])
    if not cells:
        return []
    keys = sorted({k for _, k in cells}, key=float)
    run_ids = sorted({r for r, _ in cells})
    lines = [
        f"### By {SLICE_FIELDS[field]} (`{field}`; mean over the tasks that carry it)",
        "",
        "| run | " + " | ".join(str(k) for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for run_id in run_ids:
        row = [_fmt(statistics.mean(cells[(run_id, k)])) if cells.get((run_id, k)) else "–" for k in keys]
        lines.append(f"| {run_id} | " + " | ".join(row) + " |")
    return lines + [""]


def render_markdown(data: dict) -> str:
    tasks = sorted({s["task"] for s in data["scores"]} | {t for run in data["runs"] for t in run["failed"]})
    by_cell = {(s["run_id"], s["task"]): s for s in data["scores"]}
    metric_of = {s["task"]: s["metric"] for s in data["scores"]}
    lines = [
        "# qdelta leaderboard (measured)",
        "",
        "Built by `qdelta leaderboard` from the run records only; each cell is the task's primary lm-eval "
        "metric in percent (`–`: not run, `failed`: the task failed in that run).",
        "",
    ]
    if not data["runs"]:
        lines += ["No run records yet: run `qdelta eval`.", ""]
    else:
        lines += [
            "| run | model | " + " | ".join(f"{t} ({metric_of.get(t, '–')})" for t in tasks) + " | mean |",
            "|---|---|" + "---:|" * (len(tasks) + 1),
        ]
        for run in data["runs"]:
            values = [by_cell[(run["run_id"], t)]["value"] for t in tasks if (run["run_id"], t) in by_cell]
            cells = []
            for t in tasks:
                cell = by_cell.get((run["run_id"], t))
                cells.append(_fmt(cell["value"]) if cell else ("failed" if t in run["failed"] else "–"))
            mean = _fmt(statistics.mean(values)) if values else "–"
            lines.append(f"| {run['run_id']} | {run['model']} | " + " | ".join(cells) + f" | {mean} |")
        lines.append("")
        lines += ["## Slices", ""]
        for field in SLICE_FIELDS:
            lines += _slice_table(data, field)
        lines += [
            "## Runs",
            "",
            "| run | model path | weights sha256 | tasks done | failed | device | git commit | command |",
            "|---|---|---|---:|---|---|---|---|",
        ]
        for run in data["runs"]:
            s = run["summary"]
            lines.append(
                f"| {run['run_id']} | {s.get('pretrained') or s.get('model')} | "
                f"{(s.get('weights_sha256') or '–')[:12]} | {len(run['done'])} | {', '.join(run['failed']) or '–'} "
                f"| {s.get('device', '–')} | {(s.get('git_commit') or '–')[:12]} | `{s.get('command', '')}` |"
            )
        lines.append("")
    lines.append(reported_markdown())
    return "\n".join(lines)


def _state_size(summary: dict, seq_len: float) -> Optional[float]:
    size = (summary.get("model_info") or {}).get("state_size")
    if not size:
        return None
    return size["fixed"] + size["per_token"] * seq_len


def _save(fig, path: Path) -> None:
    """PNG through a temporary file and os.replace, like every other output."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    records.atomic_write_bytes(path, buffer.getvalue())


def _plot(data: dict, out_dir: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for field, name in PLOTS.items():
        per_run: Dict[str, Dict[float, List[float]]] = defaultdict(lambda: defaultdict(list))
        for s in data["slices"]:
            if s["field"] == field:
                per_run[s["run_id"]][float(s["slice"])].append(s["score"])
        fig, ax = plt.subplots(figsize=(6, 4))
        for run_id in sorted(per_run):
            xs = sorted(per_run[run_id])
            ax.plot(xs, [100 * statistics.mean(per_run[run_id][x]) for x in xs], marker="o", label=run_id)
        ax.set_xlabel(SLICE_FIELDS[field])
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"accuracy vs {SLICE_FIELDS[field]} (measured)")
        if per_run:
            ax.set_xscale("log", base=2)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no samples carry `{field}`", ha="center", transform=ax.transAxes)
        _save(fig, out_dir / name)
        written.append(out_dir / name)
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in data["runs"]:
        run_slices = [s for s in data["slices"] if s["run_id"] == run["run_id"] and s["field"] == "seq_len"]
        seq_len = statistics.mean(float(s["slice"]) for s in run_slices) if run_slices else 0.0
        size = _state_size(run["summary"], seq_len)
        values = [s["value"] for s in data["scores"] if s["run_id"] == run["run_id"]]
        if size and values:
            ax.scatter([size], [100 * statistics.mean(values)], label=run["run_id"])
    ax.set_xlabel("cached state per sequence (elements; KV cache at the mean sequence length)")
    ax.set_ylabel("mean accuracy over tasks (%)")
    ax.set_title("accuracy vs state size (measured)")
    if ax.collections:
        sizes = [x for c in ax.collections for x, _ in c.get_offsets()]
        if max(sizes) > 10 * min(sizes):
            ax.set_xscale("log")
        ax.legend(fontsize=7)
    _save(fig, out_dir / "acc_vs_state_size.png")
    written.append(out_dir / "acc_vs_state_size.png")
    return written


def write_leaderboard(runs_dir: Path, out_dir: Path, plots: bool = True) -> List[Path]:
    """Rebuild every leaderboard file from the run records; returns the written paths."""
    out_dir = Path(out_dir)
    with records.folder_lock(out_dir):  # two rebuilds at once: one after the other
        return _write_leaderboard(Path(runs_dir), out_dir, plots)


def _write_leaderboard(runs_dir: Path, out_dir: Path, plots: bool) -> List[Path]:
    data = collect(runs_dir)
    outputs = {
        "leaderboard.md": render_markdown(data),
        "leaderboard.csv": _csv(data["scores"], ["run_id", "model", "task", "metric", "value"]),
        "slices.csv": _csv(data["slices"], ["run_id", "model", "task", "metric", "field", "slice", "score", "n"]),
        "reported_paper.csv": _csv(
            reported_rows(), ["model", "commonsense_avg_340M", "commonsense_avg_1.3B", "sniah_avg_1.3B", "source"]
        ),
    }
    written = []
    for name, text in outputs.items():
        records.atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)
    if plots:
        written += _plot(data, out_dir)
    return written
