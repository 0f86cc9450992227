"""The committed training results: the MQAR leaderboard is regenerated bit-for-bit from its run
records, and the shipped checkpoints are complete, small, and load offline."""

import json
from pathlib import Path

import pytest
import torch

from qdelta.harness.train import report as train_report
from qdelta.harness.train import zoology_report

ROOT = Path(__file__).resolve().parents[2]
MQAR = ROOT / "results" / "mqar"
CHECKPOINTS = ROOT / "results" / "checkpoints"


REFERENCE = MQAR / "long"  # the reference run (3500 steps)


@pytest.mark.parametrize(
    "folder", [REFERENCE, MQAR / "long_no_gate", MQAR / "cpu_small"], ids=["reference", "long_no_gate", "cpu_small"]
)
@pytest.mark.slow
def test_mqar_leaderboard_regenerates_bit_for_bit(tmp_path, folder):
    written = train_report.generate(folder / "runs", tmp_path)
    for name in ("leaderboard.md", "leaderboard.csv"):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name
    for path in written:
        assert path.stat().st_size > 0
    grid = json.loads((folder / "grid.json").read_text())
    runs = sorted(p.name for p in (folder / "runs").iterdir() if (p / "metrics.json").is_file())
    assert sorted(n for n, s in grid["status"].items() if s["state"] == "done") == runs


def test_zoology_leaderboard_regenerates_bit_for_bit(tmp_path):
    folder = MQAR / "zoology"  # zoology's protocol (configs/mqar_zoology.yaml), run on a GPU
    if not (folder / "runs").is_dir():
        pytest.skip("no zoology-protocol run records committed yet (the grid of docs/mqar.md runs on a GPU)")
    zoology_report.generate(folder / "runs", tmp_path, plots=False)
    for name in ("leaderboard.md", "leaderboard.csv"):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name


def test_cpu_seed_leaderboards_regenerate_bit_for_bit(tmp_path, cpu_seed, cpu_seed_folders):
    seed, folder = cpu_seed, cpu_seed_folders[cpu_seed]
    train_report.generate(folder / "runs", tmp_path, plots=False)  # md and csv only: fast
    for name in ("leaderboard.md", "leaderboard.csv"):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name
    grid = json.loads((folder / "grid.json").read_text())
    runs = sorted(p.name for p in (folder / "runs").iterdir() if (p / "metrics.json").is_file())
    assert sorted(n for n, s in grid["status"].items() if s["state"] == "done") == runs
    records = train_report.load_records(folder / "runs")
    assert sorted(r["type"] for r in records) == ["gated_deltanet", "qdelta"]
    for run in runs:  # each folder holds the seed it is listed under, and no output gate
        metrics = json.loads((folder / "runs" / run / "metrics.json").read_text())
        assert metrics["seed"] == seed, run
    assert all(r["model"]["use_gate"] is False for r in records)


def test_cpu_seed_table_in_readme_matches_the_records(cpu_seed_folders):
    readme = (ROOT / "docs" / "mqar.md").read_text()
    means = {}
    for seed, folder in cpu_seed_folders.items():
        by_type = {r["type"]: r["mean"] for r in train_report.load_records(folder / "runs")}
        q, g = by_type["qdelta"], by_type["gated_deltanet"]
        means[seed] = (q, g)
        assert f"| {seed} | {q:.3f} | {g:.3f} | +{g - q:.3f} |" in readme, seed
    q_all, g_all = [m[0] for m in means.values()], [m[1] for m in means.values()]
    mean_q, mean_g = sum(q_all) / len(q_all), sum(g_all) / len(g_all)
    assert f"| mean | {mean_q:.3f} | {mean_g:.3f} | +{mean_g - mean_q:.3f} |" in readme
    assert f"| min–max | {min(q_all):.3f}–{max(q_all):.3f} | {min(g_all):.3f}–{max(g_all):.3f} |" in readme


def test_mqar_leaderboard_reflects_the_records(tmp_path):
    records = train_report.load_records(REFERENCE / "runs")
    best = train_report.best_per_model(records)
    table = (REFERENCE / "leaderboard.md").read_text()
    for r in best:  # each row's numbers come from the best-lr record of that (model, d_model)
        assert f"| {r['d_model']} | {r['lr']:g} | {r['params']} |" in table
        assert f"| {r['mean']:.3f} |" in table
        assert r["mean"] == max(x["mean"] for x in records if (x["type"], x["d_model"]) == (r["type"], r["d_model"]))
    # a changed record changes the leaderboard
    import shutil

    copy = tmp_path / "runs"
    shutil.copytree(REFERENCE / "runs", copy)
    target = copy / best[0]["run"] / "metrics.json"
    metrics = json.loads(target.read_text())
    metrics["eval"] = {k: 0.5 for k in metrics["eval"]}
    target.write_text(json.dumps(metrics))
    train_report.generate(copy, tmp_path / "out", plots=False)
    assert (tmp_path / "out" / "leaderboard.md").read_bytes() != (REFERENCE / "leaderboard.md").read_bytes()


def _shipped():
    return sorted(p for p in CHECKPOINTS.iterdir() if (p / "config.json").is_file()) if CHECKPOINTS.is_dir() else []


def test_shipped_checkpoints_fit_the_size_budget():
    folders = _shipped()
    assert len(folders) >= 2
    total = sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())
    assert total <= 30 * 2**20, f"shipped checkpoints take {total / 2**20:.1f} MB (budget 30 MB)"


@pytest.mark.parametrize("folder", _shipped(), ids=lambda p: p.name)
def test_shipped_checkpoint_loads_and_runs_offline(folder):
    from transformers import AutoTokenizer

    import qdelta

    tok = AutoTokenizer.from_pretrained(folder)
    model = qdelta.load_model(str(folder)).eval()
    assert model.config.vocab_size == len(tok)
    text = "z 74 q 12 z"
    ids = torch.tensor([tok(text)["input_ids"]])
    assert tok.decode(ids[0]) == text
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()
    assert (folder / "train_config.yaml").is_file() and (folder / "train_log.jsonl").is_file()
