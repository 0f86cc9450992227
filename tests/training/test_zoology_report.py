"""The leaderboard of zoology's MQAR protocol (qdelta.harness.train.zoology_report) on run records made
the way the grid makes them: the resolved configs of configs/mqar_zoology.yaml's jobs, with random
accuracies."""

import csv
import json
import random
from pathlib import Path

import pytest
import yaml

from qdelta.harness.train import zoology_report
from qdelta.harness.train.config import TrainConfig, dump_config, from_dict
from qdelta.harness.train.grid import expand_grid

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = zoology_report.TEST_SETTINGS


def _write_run(runs: Path, job: dict, accuracies: dict, generator: str = "zoology") -> None:
    folder = runs / job["name"]
    folder.mkdir(parents=True)
    job = {**job, "data": {**job["data"], "generator": generator}}
    (folder / "train_config.yaml").write_text(dump_config(from_dict(TrainConfig, job)))
    metrics = {
        "name": job["name"],
        "lr": job["optim"]["lr"],
        "steps": 707,
        "seed": job["seed"],
        "num_parameters": 1000,
        "eval": {**accuracies, "mean": sum(accuracies.values()) / len(accuracies)},
        "final_loss": 1.5,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def _jobs(seeds, d_models=(128,), lrs=None):
    grid = yaml.safe_load((ROOT / "configs" / "mqar_zoology.yaml").read_text())
    grid.update(seeds=list(seeds), d_models=list(d_models))
    if lrs:
        grid["lrs"] = lrs
    return expand_grid(grid)


def _random_accuracies(rng) -> dict:
    return {f"L{L}_K{K}": round(rng.random(), 6) for L, K in SETTINGS}


@pytest.fixture
def runs(tmp_path):
    """Two lrs, three seeds, four models at d_model 128: at lr 1e-3 Q-Delta has the single best run
    (seed 0) but the lower mean over seeds; lr 1e-2 wins on the mean."""
    rng = random.Random(7)
    folder = tmp_path / "runs"
    for job in _jobs([0, 1, 2], lrs=[1.0e-3, 1.0e-2]):
        acc = _random_accuracies(rng)
        if job["model"]["type"] == "qdelta":
            level = {1.0e-3: [0.99, 0.1, 0.1], 1.0e-2: [0.6, 0.6, 0.6]}[job["optim"]["lr"]][job["seed"]]
            acc = {k: level for k in acc}
        _write_run(folder, job, acc)
    return folder


def test_csv_has_one_row_per_run_and_test_setting(runs, tmp_path):
    zoology_report.generate(runs, tmp_path / "out", plots=False)
    with open(tmp_path / "out" / "leaderboard.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == zoology_report.COLUMNS
        rows = list(reader)
    folders = sorted(p for p in runs.iterdir())
    assert len(rows) == len(folders) * len(SETTINGS) == 4 * 2 * 3 * 7
    by_key = {
        (r["model"], float(r["lr"]), int(r["seed"]), int(r["input_seq_len"]), int(r["num_kv_pairs"])): r for r in rows
    }
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        model = yaml.safe_load((folder / "train_config.yaml").read_text())["model"]
        for L, K in SETTINGS:
            row = by_key[(model["type"], metrics["lr"], metrics["seed"], L, K)]
            assert row["d_model"] == "128"
            assert float(row["accuracy"]) == pytest.approx(metrics["eval"][f"L{L}_K{K}"], abs=5e-5)
    assert {float(r["lr"]) for r in rows} == {1.0e-3, 1.0e-2}  # lr written so that it reads back exactly


def test_best_lr_is_the_best_mean_over_seeds(runs, tmp_path):
    zoology_report.generate(runs, tmp_path / "out", plots=False)
    table = (tmp_path / "out" / "leaderboard.md").read_text()
    assert table.startswith("# MQAR leaderboard, zoology's protocol (configs/mqar_zoology.yaml)")
    row = next(line for line in table.splitlines() if line.startswith("| Q-Delta | 128 |"))
    assert "| 0.01 |" in row and "| 0.600 |" in row and "| 3 | 0.600–0.600 |" in row, row


def test_same_records_same_bytes_and_three_plots(runs, tmp_path):
    first = zoology_report.generate(runs, tmp_path / "a")
    second = zoology_report.generate(runs, tmp_path / "b", plots=False)
    names = [p.name for p in first]
    assert names == [
        "leaderboard.md",
        "leaderboard.csv",
        "acc_vs_d_model.png",
        "acc_vs_state_size.png",
        "acc_vs_num_kv_pairs.png",
    ]
    for path in second:
        assert path.read_bytes() == (tmp_path / "a" / path.name).read_bytes(), path.name
    assert all(p.stat().st_size > 10_000 for p in first[2:])


def test_widths_without_seeds_beside_seeded_ones(tmp_path):
    rng = random.Random(3)
    folder = tmp_path / "runs"
    for job in _jobs([0], d_models=(64, 256), lrs=[1.0e-3]) + _jobs([1, 2], lrs=[1.0e-3]):
        _write_run(folder, job, _random_accuracies(rng))
    written = zoology_report.generate(folder, tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "leaderboard.csv")))
    assert sorted({(r["d_model"], r["seed"]) for r in rows}) == [("128", "1"), ("128", "2"), ("256", "0"), ("64", "0")]
    assert len(written) == 5


def test_refuses_runs_of_another_protocol(runs, tmp_path):
    job = _jobs([5], lrs=[1.0e-3])[0]
    _write_run(runs, {**job, "name": "other-generator"}, _random_accuracies(random.Random(1)), generator="qdelta")
    with pytest.raises(ValueError, match="run 'other-generator': data.generator is 'qdelta'"):
        zoology_report.generate(runs, tmp_path / "out", plots=False)


def test_refuses_runs_missing_a_test_setting(tmp_path, capsys):
    folder = tmp_path / "runs"
    job = _jobs([0], lrs=[1.0e-3])[0]
    accuracies = _random_accuracies(random.Random(2))
    accuracies.pop("L1024_K256")
    _write_run(folder, job, accuracies)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as stop:
        zoology_report.main([str(folder), str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"run '{job['name']}': tested on (L, K)" in err and "not zoology's" in err and "Traceback" not in err


@pytest.mark.parametrize("module", ["report", "zoology_report"])
def test_a_missing_runs_folder_is_one_line(tmp_path, capsys, module):
    from qdelta.harness.train import report

    main = {"report": report.main, "zoology_report": zoology_report.main}[module]
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"no folder {tmp_path / 'nowhere'}" in err and "Traceback" not in err
