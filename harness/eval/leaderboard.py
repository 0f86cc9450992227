"""Leaderboards built only from run records (``results/runs/*``), never from anything else.

Outputs under the leaderboard folder:

    leaderboard.md        model x task table (each task's primary lm-eval metric), slices by
                          sequence length / number of key-value pairs / depth, the runs, and the
                          paper's reported numbers as a separate, labelled table
    leaderboard.csv       model x task, long format (run_id, model, task, metric, value,
                          prompts_truncated, requests_over_max_length)
    slices.csv            per-slice scores (run_id, model, task, metric, field, slice, score, n)
    reported_paper.csv    the paper's reported numbers (separate source)
    acc_vs_<field>.png    per slice field, one panel per task carrying it, one line per run
                          (distinct markers and line styles, runs offset sideways so equal
                          scores stay visible), y axis 0-100 %
    acc_by_task.png       every task's primary metric, grouped bars per run, 0-100 %
    acc_vs_state_size.png mean accuracy against the cached state size

Slices come from the per-sample records: every document field named in ``SLICE_FIELDS`` groups
the samples, and the sample's value of the task's primary metric is averaged per group.

A score whose run cut prompts (``truncation=left``) or counted requests longer than ``max_length``
(``on_overflow=count``) carries those counts from its record: a ``*`` on its cell and a section that
lists them, so such a number is never read as one made on the whole prompts.
"""

from __future__ import annotations

import csv
import io
import logging
import math
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
    "num_pairs": "number of pairs (AR, key-value recall)",
    "depth": "needle depth",
    "context_length": "context length",
}
PLOTS = {field: f"acc_vs_{field}.png" for field in SLICE_FIELDS}  # one panel per task carrying the field


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
            entry = tasks_status.get(task, {})
            events = (entry.get("adapter") or {}).get("events") or {}
            scores.append(
                {
                    "run_id": run_id,
                    "model": model,
                    "task": task,
                    "metric": metric,
                    "value": value,
                    "prompts_truncated": (entry.get("truncation") or {}).get("prompts_truncated", 0),
                    "requests_over_max_length": sum(n for e, n in events.items() if e.endswith("_over_max_length")),
                }
            )
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


def _cut(score: dict) -> bool:
    """Whether the run scored this task on cut prompts or counted over-length requests."""
    return bool(score.get("prompts_truncated") or score.get("requests_over_max_length"))


def _cut_section(data: dict) -> List[str]:
    cut = [s for s in data["scores"] if _cut(s)]
    lines = ["## Cut prompts and over-length requests", ""]
    if not cut:
        return lines + ["None: every score above was made on whole prompts within the model's max_length.", ""]
    lines += [
        "Cells marked `*` above: the run left-truncated prompts to its max_length (`truncation=left`: scored on "
        "their last tokens), or scored requests longer than it as wrong (`on_overflow=count`).",
        "",
        "| run | task | prompts truncated | requests over max_length |",
        "|---|---|---:|---:|",
    ]
    for s in cut:
        lines.append(f"| {s['run_id']} | {s['task']} | {s['prompts_truncated']} | {s['requests_over_max_length']} |")
    return lines + [""]


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
                shown = _fmt(cell["value"]) + ("*" if _cut(cell) else "") if cell else None
                cells.append(shown or ("failed" if t in run["failed"] else "–"))
            mean = _fmt(statistics.mean(values)) if values else "–"
            lines.append(f"| {run['run_id']} | {run['model']} | " + " | ".join(cells) + f" | {mean} |")
        lines.append("")
        lines += _cut_section(data)
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

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    records.atomic_write_bytes(path, buffer.getvalue())


MARKERS = "osD^v<>Xp*h"
LINESTYLES = ("-", "--", "-.", ":")


def _style(k: int, n: int) -> dict:
    """Marker, line style and a small horizontal offset for the k-th of n runs, so lines that
    coincide (two models at 100 %) stay visible side by side."""
    return {
        "marker": MARKERS[k % len(MARKERS)],
        "linestyle": LINESTYLES[k % len(LINESTYLES)],
        "offset": (k - (n - 1) / 2) * 0.06,
        "markersize": 6,
        "clip_on": False,
    }


def _percent_axis(ax, label: str = "accuracy (%)") -> None:
    ax.set_ylim(0, 100)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)


def _slice_figure(data: dict, field: str, run_ids: List[str]):
    """One panel per task carrying ``field``; in each, one line per run (score vs slice value)."""
    import matplotlib.pyplot as plt

    series: Dict[str, Dict[str, Dict[float, List[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for s in data["slices"]:
        if s["field"] == field:
            series[s["task"]][s["run_id"]][float(s["slice"])].append(s["score"])
    tasks = sorted(series)
    cols = min(3, max(1, len(tasks)))
    rows = max(1, math.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    log_x = field != "depth"
    for ax, task in zip(axes.flat, tasks):
        for k, run_id in enumerate(run_ids):
            points = series[task].get(run_id)
            if not points:
                continue
            style = _style(k, len(run_ids))
            offset = style.pop("offset")
            xs = sorted(points)
            shifted = [x * 2**offset if log_x else x + offset / 6 for x in xs]
            ax.plot(shifted, [100 * statistics.mean(points[x]) for x in xs], label=run_id, **style)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel(SLICE_FIELDS[field], fontsize=8)
        _percent_axis(ax)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    if not tasks:
        axes.flat[0].text(0.5, 0.5, f"no samples carry `{field}`", ha="center", transform=axes.flat[0].transAxes)
    fig.suptitle(f"accuracy vs {SLICE_FIELDS[field]} per task (measured; runs offset sideways)", fontsize=10)
    _legend(fig, axes.flat[0])
    return fig


def _legend(fig, ax) -> None:
    """One legend for the figure, below the panels."""
    handles, labels = ax.get_legend_handles_labels()
    bottom = 0.0
    if handles:
        bottom = min(0.4, (0.35 * math.ceil(len(labels) / 3)) / fig.get_figheight())
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7)
    fig.tight_layout(rect=(0, bottom, 1, 0.95))


def _task_figure(data: dict, run_ids: List[str]):
    """Every task's primary score (in %), grouped bars per run; non-percent metrics are named below."""
    import matplotlib.pyplot as plt

    percent = [s for s in data["scores"] if 0.0 <= s["value"] <= 1.0]
    other = sorted(
        {f"{s['task']} ({s['metric']})" for s in data["scores"]} - {f"{s['task']} ({s['metric']})" for s in percent}
    )
    tasks = sorted({s["task"] for s in percent})
    value = {(s["run_id"], s["task"]): s["value"] for s in percent}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(tasks) + 2), 4.5))
    width = 0.8 / max(1, len(run_ids))
    hatches = ("", "//", "..", "xx", "\\\\", "++")
    for k, run_id in enumerate(run_ids):
        xs = [i + (k - (len(run_ids) - 1) / 2) * width for i, t in enumerate(tasks) if (run_id, t) in value]
        ys = [100 * value[(run_id, t)] for t in tasks if (run_id, t) in value]
        bars = ax.bar(xs, ys, width=width, label=run_id, hatch=hatches[k % len(hatches)], edgecolor="black", lw=0.4)
        marker = _style(k, len(run_ids))["marker"]  # a marker on each bar: a 0 % bar stays visible
        ax.plot(
            xs, ys, linestyle="none", marker=marker, color=bars.patches[0].get_facecolor(), mec="black", clip_on=False
        )
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=35, ha="right", fontsize=8)
    _percent_axis(ax, "primary metric (%)")
    ax.set_title("every task, primary metric (measured)" + (f"; not in %: {', '.join(other)}" if other else ""))
    _legend(fig, ax)
    return fig


def _state_figure(data: dict, run_ids: List[str]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    by_id = {run["run_id"]: run for run in data["runs"]}
    for k, run_id in enumerate(run_ids):
        run = by_id[run_id]
        run_slices = [s for s in data["slices"] if s["run_id"] == run_id and s["field"] == "seq_len"]
        seq_len = statistics.mean(float(s["slice"]) for s in run_slices) if run_slices else 0.0
        size = _state_size(run["summary"], seq_len)
        values = [s["value"] for s in data["scores"] if s["run_id"] == run_id]
        if size and values:
            style = _style(k, len(run_ids))
            ax.scatter(
                [size * 2 ** style["offset"]], [100 * statistics.mean(values)], marker=style["marker"], label=run_id
            )
    ax.set_xlabel("cached state per sequence (elements; KV cache at the mean sequence length)")
    ax.set_title("accuracy vs state size (measured)")
    _percent_axis(ax, "mean accuracy over tasks (%)")
    if ax.collections:
        sizes = [x for c in ax.collections for x, _ in c.get_offsets()]
        if max(sizes) > 10 * min(sizes):
            ax.set_xscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figures(data: dict) -> Dict[str, object]:
    """Every leaderboard plot as a matplotlib figure, by file name."""
    import matplotlib

    matplotlib.use("Agg")
    run_ids = [run["run_id"] for run in data["runs"]]
    out = {name: _slice_figure(data, field, run_ids) for field, name in PLOTS.items()}
    out["acc_by_task.png"] = _task_figure(data, run_ids)
    out["acc_vs_state_size.png"] = _state_figure(data, run_ids)
    return out


def _plot(data: dict, out_dir: Path) -> List[Path]:
    written = []
    for name, fig in figures(data).items():
        _save(fig, out_dir / name)
        written.append(out_dir / name)
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
        "leaderboard.csv": _csv(
            data["scores"],
            ["run_id", "model", "task", "metric", "value", "prompts_truncated", "requests_over_max_length"],
        ),
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
