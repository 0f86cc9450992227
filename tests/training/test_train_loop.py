"""The training loop on CPU: it learns MQAR, resumes exactly after a kill, sweeps learning rates."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qdelta
from qdelta.harness.train.config import load_config
from qdelta.harness.train.loop import train
from qdelta.tasks.mqar import evaluate_mqar

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


@pytest.mark.slow
def test_loss_falls_and_mqar_accuracy_rises(tmp_path, tiny_train_config):
    torch.set_num_threads(1)
    config = load_config(data=tiny_train_config(tmp_path / "run", steps=100))
    result = train(config, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[0] > 3.2 and losses[-1] < losses[0] - 0.8, losses
    # accuracy of the untrained model (same init seed) vs the trained one, on the same held-out data
    chance = 1 / 16  # values are drawn from 16 ids
    untrained = qdelta.load_model(str(tmp_path / "run"))
    torch.manual_seed(0)
    from qdelta.harness.train.loop import build_model

    fresh = build_model(config.model, 32, config.seed).eval()
    before = evaluate_mqar(fresh, 32, settings=[(16, 2)], num_examples=64, seed=config.eval.seed)["mean"]
    after = evaluate_mqar(untrained.eval(), 32, settings=[(16, 2)], num_examples=64, seed=config.eval.seed)["mean"]
    assert result["eval"]["mean"] == pytest.approx(after)
    assert before < 2 * chance and after > 3 * chance, (before, after)
    # the output folder is a complete HF checkpoint with a working tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "run")
    assert tok("3 17")["input_ids"] == [3, 17]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 100


def _train_cmd(config_path):
    return [sys.executable, "-m", "qdelta.harness.cli", "train", "--config", str(config_path), "--no-progress"]


@pytest.mark.slow
def test_resume_after_kill_ends_like_an_uninterrupted_run(tmp_path, tiny_train_config, write_config):
    steps = 30
    straight = write_config(
        tmp_path / "a.yaml", tiny_train_config(tmp_path / "a", steps=steps, save_every=5, eval_every=15)
    )
    killed = write_config(
        tmp_path / "b.yaml", tiny_train_config(tmp_path / "b", steps=steps, save_every=5, eval_every=15)
    )
    subprocess.run(_train_cmd(straight), env=ENV, check=True, capture_output=True)

    proc = subprocess.Popen(_train_cmd(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "b" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir())):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "b" / "metrics.json").exists()
    done = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step-"))
    assert done and int(done[-1].split("-")[1]) < steps

    resumed = subprocess.run(_train_cmd(killed), env=ENV, check=True, capture_output=True, text=True)
    assert "resuming" in resumed.stderr
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    def strip(p):
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in p.read_text().splitlines()]

    assert strip(tmp_path / "a" / "train_log.jsonl") == strip(tmp_path / "b" / "train_log.jsonl")
    ma, mb = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in "ab")
    assert ma["eval"] == mb["eval"] and ma["final_loss"] == mb["final_loss"]
    # checkpoints are complete HF folders with optimizer state; only the last two are kept
    last = sorted((tmp_path / "a" / "checkpoints").iterdir())
    assert [p.name for p in last] == ["step-0000020", "step-0000025"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt"} <= {
        p.name for p in last[-1].iterdir()
    }


@pytest.mark.slow
def test_resume_refuses_a_changed_config(tmp_path, tiny_train_config):
    torch.set_num_threads(1)
    train(load_config(data=tiny_train_config(tmp_path / "r", steps=10, save_every=5)), progress=False)
    (tmp_path / "r" / "metrics.json").unlink()  # pretend it stopped after the checkpoint
    with pytest.raises(ValueError, match="different training config"):
        train(load_config(data=tiny_train_config(tmp_path / "r", steps=10, save_every=5, lr=1e-2)), progress=False)


@pytest.mark.slow
def test_lr_sweep_picks_the_best(tmp_path, tiny_train_config):
    torch.set_num_threads(1)
    result = train(load_config(data=tiny_train_config(tmp_path / "s", steps=8, lr=[1e-4, 3e-3])), progress=False)
    sweep = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [r["lr"] for r in sweep["runs"]] == [1e-4, 3e-3]
    assert (tmp_path / "s" / "lr-0.0001" / "metrics.json").is_file()
    best = max(sweep["runs"], key=lambda r: (r["eval"]["mean"], -r["final_loss"]))
    assert sweep["best_lr"] == best["lr"] == result["lr"]


@pytest.mark.slow
def test_ddp_on_two_cpu_ranks_matches_one_process(tmp_path, tiny_train_config, write_config):
    """torchrun with 2 gloo ranks (each takes half of every global batch) ends where one process ends."""
    import shutil
    import socket

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed")
    torch.set_num_threads(1)
    train(load_config(data=tiny_train_config(tmp_path / "one", steps=6, batch_size=8)), progress=False)
    two = write_config(tmp_path / "two.yaml", tiny_train_config(tmp_path / "two", steps=6, batch_size=8))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "qdelta.harness.cli",
        "train",
        "--config",
        str(two),
        "--no-progress",
    ]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    ma, mb = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in ("one", "two"))
    assert mb["world_size"] == 2 and ma["world_size"] == 1
    assert mb["final_loss"] == pytest.approx(ma["final_loss"], rel=1e-4)
