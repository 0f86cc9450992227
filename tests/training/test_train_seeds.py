"""Several seeds in one grid: how ``seeds`` expands into jobs, and how the report aggregates the
runs of a (model type, d_model, lr) cell over seeds. No training: fake run records."""

import copy
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from qdelta.harness.train import grid as train_grid
from qdelta.harness.train import report as train_report
from qdelta.harness.train.config import load_config

TINY_HEADS = {"num_heads": 2, "head_dim": 16, "expand_v": 1}


def seeds_grid(seeds=None) -> dict:
    grid = {
        "base": {
            "seed": 7,
            "model": {"num_hidden_layers": 1, "intermediate_size": 32},
            "data": {"kind": "mqar", "vocab_size": 32, "configs": [[16, 2]]},
            "optim": {"warmup_steps": 1},
            "train": {"steps": 2, "batch_size": 4, "device": "cpu"},
            "eval": {"num_examples": 8},
        },
        "models": {"qdelta": TINY_HEADS, "gated_deltanet": TINY_HEADS},
        "heads_per": 16,
        "d_models": [64, 32],
        "lrs": [1e-3, 3e-3],
    }
    if seeds is not None:
        grid["seeds"] = seeds
    return grid


# today's order: d_models as given, then lrs, then model types
ONE_SEED_NAMES = [
    f"{m}-d{d}-lr{lr}" for d in (64, 32) for lr in ("0.001", "0.003") for m in ("qdelta", "gated_deltanet")
]


def test_without_seeds_jobs_are_as_before():
    grid = seeds_grid()
    before = copy.deepcopy(grid)
    jobs = train_grid.expand_grid(grid)
    assert [j["name"] for j in jobs] == ONE_SEED_NAMES
    assert {j["seed"] for j in jobs} == {7}
    assert grid == before  # the grid is not modified
    assert train_grid.expand_grid(seeds_grid(seeds=None)) == jobs  # `seeds: null` is no seeds


def test_one_seed_sets_the_seed_and_keeps_the_names():
    plain = train_grid.expand_grid(seeds_grid())
    jobs = train_grid.expand_grid(seeds_grid(seeds=[3]))
    assert [j["name"] for j in jobs] == ONE_SEED_NAMES
    assert [j["seed"] for j in jobs] == [3] * len(plain)
    assert [{**j, "seed": 7} for j in jobs] == plain


def test_several_seeds_put_the_seed_outermost():
    plain = train_grid.expand_grid(seeds_grid())
    jobs = train_grid.expand_grid(seeds_grid(seeds=[2, 0, 5]))
    assert len(jobs) == 3 * len(plain)
    # seed 2's jobs in today's order, then seed 0's, then seed 5's: a budget cuts seed 5 first
    assert [j["name"] for j in jobs] == [f"{n}-s{s}" for s in (2, 0, 5) for n in ONE_SEED_NAMES]
    assert [j["seed"] for j in jobs] == [s for s in (2, 0, 5) for _ in plain]
    assert jobs[len(plain) + 1]["name"] == "gated_deltanet-d64-lr0.001-s0"
    for i, job in enumerate(jobs):  # only the name and the seed differ from the one-seed job
        one = plain[i % len(plain)]
        assert {**job, "name": one["name"], "seed": one["seed"]} == one
    assert len({j["name"] for j in jobs}) == len(jobs)
    config = load_config(data={**jobs[-1], "output_dir": None})  # a job is a valid training config
    assert config.seed == 5 and config.name == "gated_deltanet-d32-lr0.003-s5"


@pytest.mark.parametrize(
    "seeds, message",
    [
        ([], r"non-empty list of integers, got \[\]"),
        (3, r"non-empty list of integers, got 3"),
        ("0,1", r"non-empty list of integers, got '0,1'"),
        ([1, 1.5], r"expected integers, got \[1, 1.5\] \(not integers: \[1.5\]\)"),
        ([0, True], r"not integers: \[True\]"),
        ([0, "1"], r"not integers: \['1'\]"),
        ([1, 2, 1], r"duplicates \[1\] in \[1, 2, 1\]"),
    ],
)
def test_bad_seeds_are_refused_with_the_fix(seeds, message):
    with pytest.raises(ValueError, match=r"'seeds'.*" + message + r".*e\.g\. seeds: \[0, 1, 2\]"):
        train_grid.expand_grid(seeds_grid(seeds=seeds))


# --- the report -----------------------------------------------------------------------------

SLICES = ("L32_K4", "L64_K12")


def fake_run(runs: Path, model_type: str, d_model: int, lr: float, seed, accs, *, seed_in="metrics", name=None) -> str:
    """One run record as the trainer writes it (the fields the report reads)."""
    name = name or f"{model_type}-d{d_model}-lr{lr:g}-s{seed}"
    folder = runs / name
    folder.mkdir(parents=True)
    config = {
        "name": name,
        "model": {
            "type": model_type,
            "hidden_size": d_model,
            "num_hidden_layers": 2,
            "num_heads": d_model // 32,
            "head_dim": 32,
            "expand_v": 1,
        },
        "data": {"vocab_size": 32},
        "train": {"batch_size": 32},
    }
    if seed_in in ("config", "both"):
        config["seed"] = seed
    metrics = {
        "name": name,
        "lr": lr,
        "steps": 400,
        "num_parameters": 1000 * d_model + (model_type == "qdelta"),
        "eval": {**dict(zip(SLICES, accs)), "mean": sum(accs) / len(accs)},
        "final_loss": 0.1,
    }
    if seed_in in ("metrics", "both"):
        metrics["seed"] = seed
    (folder / "train_config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return name


def seeded_runs(runs: Path) -> None:
    """qdelta d64: lr 1e-3 has the single best run (0.9) but the lower seed mean (0.4); lr 3e-3
    wins on the mean (0.5). gated_deltanet d64: two seeds of one lr (a replicate cut short)."""
    for seed, accs in zip((0, 1, 2), ([0.9, 0.9], [0.1, 0.1], [0.3, 0.1])):
        fake_run(runs, "qdelta", 64, 1e-3, seed, accs)
    for seed, accs in zip((0, 1, 2), ([0.6, 0.4], [0.5, 0.5], [0.4, 0.6])):
        fake_run(runs, "qdelta", 64, 3e-3, seed, accs)
    fake_run(runs, "gated_deltanet", 64, 3e-3, 0, [0.75, 0.25])
    fake_run(runs, "gated_deltanet", 64, 3e-3, 2, [1.0, 0.5], seed_in="config")  # seed read from the config


def test_best_lr_is_chosen_by_the_mean_over_seeds(tmp_path):
    seeded_runs(tmp_path / "runs")
    records = train_report.load_records(tmp_path / "runs")
    assert train_report.several_seeds(records)
    assert sorted(r["seed"] for r in records if r["type"] == "gated_deltanet") == [0, 2]
    best = {r["type"]: r for r in train_report.best_per_model(records)}
    q, g = best["qdelta"], best["gated_deltanet"]
    assert q["lr"] == 3e-3 and q["seeds"] == [0, 1, 2] and q["runs"][0] == "qdelta-d64-lr0.003-s0"
    assert q["mean"] == pytest.approx(0.5) and (q["mean_min"], q["mean_max"]) == (pytest.approx(0.5),) * 2
    assert q["slices"] == {"L32_K4": pytest.approx(0.5), "L64_K12": pytest.approx(0.5)}
    assert g["seeds"] == [0, 2] and g["mean"] == pytest.approx(0.625)
    assert g["slices"] == {"L32_K4": pytest.approx(0.875), "L64_K12": pytest.approx(0.375)}
    assert (g["mean_min"], g["mean_max"]) == (pytest.approx(0.5), pytest.approx(0.75))
    cells = {(r["type"], r["lr"]): r for r in train_report.seed_means(records)}
    lower = cells[("qdelta", 1e-3)]
    assert lower["mean"] == pytest.approx(0.4) and (lower["mean_min"], lower["mean_max"]) == (0.1, 0.9)


@pytest.mark.slow
def test_seeded_leaderboard_reports_means_counts_and_ranges(tmp_path):
    seeded_runs(tmp_path / "runs")
    written = train_report.generate(tmp_path / "runs", tmp_path / "out", plots=True)  # plots use the means
    assert all(p.stat().st_size > 0 for p in written)
    table = (tmp_path / "out" / "leaderboard.md").read_text()
    assert (
        "| model | d_model | best lr | params | state (L=64) | L32 K4 | L64 K12 | mean | seeds | mean min–max |"
        in table
    )
    assert "|---|---|---|---|---|---|---|---|---|---|" in table
    assert "| Q-Delta | 64 | 0.003 | 64001 | 4096 | 0.500 | 0.500 | 0.500 | 3 | 0.500–0.500 |" in table
    assert "| Gated DeltaNet | 64 | 0.003 | 64000 | 4096 | 0.875 | 0.375 | 0.625 | 2 | 0.500–0.750 |" in table
    assert (
        "mean over seeds per row" in table and "Runs: 8; learning rates tried: 0.001, 0.003; seeds: 0, 1, 2;" in table
    )
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "leaderboard.csv").read_text())))
    assert len(rows) == 8  # one row per run: nothing is lost
    by_run = {r["run"]: r for r in rows}
    assert by_run["qdelta-d64-lr0.001-s0"]["seed"] == "0" and by_run["qdelta-d64-lr0.001-s0"]["mean"] == "0.9000"
    assert by_run["gated_deltanet-d64-lr0.003-s2"]["seed"] == "2"
    assert list(rows[0])[:6] == ["run", "model_type", "d_model", "lr", "seed", "steps"]


def test_one_seed_per_cell_keeps_the_one_seed_format(tmp_path):
    """Seeds that differ between cells but not within one (here 4 and 9) change nothing."""
    runs = tmp_path / "runs"
    fake_run(runs, "qdelta", 64, 1e-3, 4, [0.9, 0.7], name="qdelta-d64-lr0.001")
    fake_run(runs, "qdelta", 64, 3e-3, 9, [0.2, 0.4], name="qdelta-d64-lr0.003", seed_in="both")
    fake_run(runs, "gated_deltanet", 64, 1e-3, 4, [0.5, 0.5], name="gated_deltanet-d64-lr0.001")
    records = train_report.load_records(runs)
    assert not train_report.several_seeds(records)
    best = train_report.best_per_model(records)
    assert [r["run"] for r in best] == ["qdelta-d64-lr0.001", "gated_deltanet-d64-lr0.001"]
    train_report.generate(runs, tmp_path / "out", plots=False)
    table = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "seed" not in table
    assert "| Q-Delta | 64 | 0.001 | 64001 | 4096 | 0.900 | 0.700 | 0.800 |\n" in table
    assert "|---|---|---|---|---|---|---|---|\n" in table
    header = (tmp_path / "out" / "leaderboard.csv").read_text().splitlines()[0]
    assert header == "run,model_type,d_model,lr,steps,params,state_L64,L32_K4,L64_K12,mean,final_loss"


def test_a_seed_twice_in_a_cell_is_refused(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "qdelta", 64, 1e-3, 0, [0.9, 0.7])
    fake_run(runs, "qdelta", 64, 1e-3, 1, [0.9, 0.7])
    fake_run(runs, "qdelta", 64, 1e-3, 1, [0.2, 0.7], name="qdelta-d64-lr0.001-s1-again")
    with pytest.raises(
        ValueError,
        match=r"'qdelta-d64-lr0.001-s1' and 'qdelta-d64-lr0.001-s1-again' are both "
        r"seed 1 of \(qdelta, d_model 64, lr 0.001\); keep one",
    ):
        train_report.generate(runs, tmp_path / "out", plots=False)


def test_the_five_cpu_seeds_in_one_folder_give_the_readme_means(tmp_path, cpu_seed_folders, mqar_results):
    """The committed five-seed CPU records (seed 0 in cpu_small_ablation/, 1-4 in cpu_small_seeds/),
    put in one runs folder as a seeds grid would name them, give the README's mean and range."""
    per_seed = {}
    for seed, folder in cpu_seed_folders.items():
        for run in (folder / "runs").iterdir():
            if (run / "metrics.json").is_file():
                shutil.copytree(run, tmp_path / "runs" / f"{run.name}-s{seed}")
        per_seed[seed] = {r["type"]: r["mean"] for r in train_report.load_records(folder / "runs")}
    train_report.generate(tmp_path / "runs", tmp_path / "out", plots=False)
    table = (tmp_path / "out" / "leaderboard.md").read_text()
    readme = (mqar_results.parents[1] / "docs" / "mqar.md").read_text()
    for model_type, label in (("qdelta", "Q-Delta"), ("gated_deltanet", "Gated DeltaNet")):
        means = [m[model_type] for m in per_seed.values()]
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} | 64 |"))
        assert row.endswith(f"| {sum(means) / 5:.3f} | 5 | {min(means):.3f}–{max(means):.3f} |"), row
        assert f"{min(means):.3f}–{max(means):.3f}" in readme  # the README's min–max row
    assert len((tmp_path / "out" / "leaderboard.csv").read_text().splitlines()) == 1 + 10
