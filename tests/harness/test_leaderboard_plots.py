"""Leaderboard plots: every task in some plot, coinciding runs still visible, y axis 0-100 %."""

from __future__ import annotations

import random

from qdelta.harness.eval.leaderboard import PLOTS, figures

TASK_FIELDS = {
    "qd_mqar_quick": {"seq_len": [32, 64], "num_kv_pairs": [4, 8]},
    "qd_ar_quick": {"num_pairs": [8, 16]},
    "qd_niah_single_1_quick": {"context_length": [512], "depth": [0.0, 1.0]},
    "qd_other": {},  # no slice field: still in the per-task figure
}


def _data(seed=0):
    rng = random.Random(seed)
    runs = ["run_a", "run_b", "run_c"]
    scores, slices = [], []
    for task, fields in TASK_FIELDS.items():
        shared = rng.random()
        for run in runs:
            value = shared if run != "run_c" else rng.random()  # run_a and run_b coincide everywhere
            scores.append({"run_id": run, "model": run, "task": task, "metric": "acc", "value": value})
            for field, keys in fields.items():
                for key in keys:
                    score = shared if run != "run_c" else rng.random()
                    slices.append({"run_id": run, "task": task, "field": field, "slice": key, "score": score, "n": 4})
    summary = {"model_info": {"state_size": {"fixed": 1000, "per_token": 0}}}
    return {"scores": scores, "slices": slices, "runs": [{"run_id": r, "summary": summary} for r in runs]}


def test_every_task_in_some_plot_coinciding_runs_visible_axes_0_100():
    figs = figures(_data())
    assert set(figs) >= set(PLOTS.values()) | {"acc_by_task.png", "acc_vs_state_size.png"}
    plotted = set()
    for name, fig in figs.items():
        for ax in fig.axes:
            if not ax.get_visible() or not ax.has_data():
                continue
            assert ax.get_ylim() == (0.0, 100.0), name
            plotted.add(ax.get_title())
            plotted.update(t.get_text() for t in ax.get_xticklabels())
            lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
            if {"run_a", "run_b"} <= set(lines):
                a, b = lines["run_a"], lines["run_b"]
                assert list(a.get_ydata()) == list(b.get_ydata())  # the same scores ...
                assert a.get_marker() != b.get_marker() and list(a.get_xdata()) != list(b.get_xdata())  # ... apart
    assert set(TASK_FIELDS) <= plotted, plotted
