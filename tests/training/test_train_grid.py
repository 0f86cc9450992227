"""The grid runner: GPU assignment of workers, what grid.json records, what the records tar packs."""

import json
import os
import tarfile

import pytest
import torch

from qdelta.harness.train import grid as train_grid


def tiny_grid(steps: int = 2) -> dict:
    return {
        "base": {
            "seed": 0,
            "model": {"num_hidden_layers": 1, "intermediate_size": 32},
            "data": {"kind": "mqar", "vocab_size": 32, "configs": [[16, 2]]},
            "optim": {"warmup_steps": 1},
            "train": {
                "steps": steps,
                "batch_size": 4,
                "log_every": 1,
                "eval_every": 0,
                "save_every": 0,
                "device": "cpu",
            },
            "eval": {"num_examples": 8},
        },
        "models": {"qdelta": {"num_heads": 2, "head_dim": 16, "expand_v": 1}},
        "heads_per": 16,
        "d_models": [32],
        "lrs": [1e-3, 3e-3],
    }


def test_workers_go_round_robin_over_the_gpus():
    assert [train_grid.gpu_for_worker(i, 4) for i in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert [train_grid.gpu_for_worker(i, 3) for i in range(4)] == [0, 1, 2, 0]
    assert {train_grid.gpu_for_worker(i, g) for i in range(5) for g in (0, 1)} == {None}
    with pytest.raises(ValueError, match="gpus"):
        train_grid.gpu_for_worker(0, -1)


def test_visible_devices_stay_inside_the_parents_choice():
    assert train_grid.visible_devices_for(None, "2,3") is None
    assert train_grid.visible_devices_for(3, None) == "3"
    assert train_grid.visible_devices_for(1, "2, 3") == "3"
    with pytest.raises(ValueError, match="--gpus 2"):
        train_grid.visible_devices_for(2, "2,3")


def test_child_environment_is_set_for_the_start_and_restored(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with train_grid._child_environment(1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    with train_grid._child_environment(1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    with train_grid._child_environment(None):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"


@pytest.mark.slow
def test_grid_json_records_the_gpu_each_worker_saw(tmp_path, monkeypatch):
    """Two spawn workers on two (pretend) GPUs: each job's record names the worker's GPU and the
    CUDA_VISIBLE_DEVICES that the worker process itself read at its start."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    summary = train_grid.run_grid(tiny_grid(), tmp_path / "grid", workers=2, budget_s=300, gpus=2)
    on_disk = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert on_disk == summary and on_disk["gpus"] == 2 and on_disk["done"] == 2
    for name, entry in on_disk["status"].items():
        assert entry["state"] == "done", (name, entry)
        assert entry["gpu"] == entry["worker"] % 2
        assert entry["cuda_visible_devices"] == str(entry["worker"] % 2)
        assert 0 <= entry["started_s"] <= entry["at_s"]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    train_grid.pack_records(tmp_path / "grid", tmp_path / "records.tgz")
    with tarfile.open(tmp_path / "records.tgz") as tar:
        names = set(tar.getnames())
    assert names == {"grid.json"} | {
        f"runs/qdelta-d32-lr{lr:g}/{f}" for lr in (1e-3, 3e-3) for f in train_grid.RECORD_FILES
    }


def test_records_tar_keeps_a_cut_runs_partial_log_and_no_weights(tmp_path):
    out = tmp_path / "grid"
    cut = out / "qdelta-d64-lr0.001"
    cut.mkdir(parents=True)
    log_lines = [json.dumps({"step": s, "loss": 8.3 - 0.01 * s}) for s in (1, 50, 100)]
    (cut / "train_log.jsonl").write_text("\n".join(log_lines) + "\n")
    (cut / "train_config.yaml").write_text("name: qdelta-d64-lr0.001\n")
    (cut / "model.safetensors").write_bytes(os.urandom(64))
    (out / "grid.json").write_text(json.dumps({"status": {cut.name: {"state": "cut: running"}}}))
    train_grid.pack_records(out, tmp_path / "records.tgz")
    with tarfile.open(tmp_path / "records.tgz") as tar:
        assert set(tar.getnames()) == {
            "grid.json",
            f"runs/{cut.name}/train_log.jsonl",
            f"runs/{cut.name}/train_config.yaml",
        }
        packed = tar.extractfile(f"runs/{cut.name}/train_log.jsonl").read().decode()
    assert packed.splitlines() == log_lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cli_refuses_more_gpus_than_visible(tmp_path):
    import yaml

    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(tiny_grid()))
    with pytest.raises(ValueError, match="--gpus: 2 asked for, but 0 GPU"):
        train_grid.main([str(grid_file), str(tmp_path / "out"), "--gpus", "2", "--workers", "1"])


def test_auto_steps_is_refused_for_epochs_over_fixed_sets(tmp_path):
    grid = tiny_grid()
    grid["auto_steps"] = {"wave_fraction": 0.5}
    grid["base"]["data"]["train_sets"] = [[16, 2, 8]]
    with pytest.raises(ValueError, match="auto_steps"):
        train_grid.run_grid(grid, tmp_path / "grid", workers=1, budget_s=60)


@pytest.mark.slow
def test_grid_over_fixed_sets_prepares_the_cache_and_resumes(tmp_path):
    grid = tiny_grid()
    del grid["base"]["train"]["steps"]
    grid["base"]["train"].update(epochs=2, save_every=1)
    grid["base"]["data"].update(
        train_sets=[[16, 2, 8], [20, 2, 4]], test_sets=[[16, 2, 4]], cache_dir=str(tmp_path / "c")
    )
    grid["lrs"] = [1e-3]
    summary = train_grid.run_grid(grid, tmp_path / "grid", workers=1, budget_s=300)
    assert summary["done"] == 1 and len(list((tmp_path / "c").glob("*.npz"))) == 3
    metrics = json.loads((tmp_path / "grid" / "qdelta-d32-lr0.001" / "metrics.json").read_text())
    assert metrics["steps"] == 2 * 3 and set(metrics["eval"]) == {"L16_K2", "mean", "all"}
    again = train_grid.run_grid(grid, tmp_path / "grid", workers=1, budget_s=300)  # a finished run is kept
    assert again["done"] == 1
    assert json.loads((tmp_path / "grid" / "qdelta-d32-lr0.001" / "metrics.json").read_text()) == metrics
