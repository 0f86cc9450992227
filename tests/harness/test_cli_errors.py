"""Bad input to `qdelta eval` gets one short error naming the field and the fix (exit 2, at most
3 lines on stderr, no traceback, nothing written); Ctrl-C says how far the run got (exit 130)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from qdelta.harness import cli


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, save_word_tokenizer):
    from qdelta.testing import tiny_model

    folder = tmp_path_factory.mktemp("ckpt") / "tiny_qdelta"
    tiny_model("qdelta", seed=0).save_pretrained(str(folder))
    save_word_tokenizer(folder)
    return folder


def _fails_briefly(tmp_path, capsys, argv, *named):
    code = cli.main(["eval", "--runs-dir", str(tmp_path / "runs"), "--leaderboard-dir", str(tmp_path / "b"), *argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and 1 <= len(lines) <= 3, err
    assert "Traceback" not in err and all(n in err for n in named), err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "b").exists()
    return err


def test_yaml_syntax_error_in_include_path_names_file_and_line(tmp_path, capsys):
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "qd_mine.yaml").write_text("task: qd_mine\nmetadata:\n  seed: 1\n   num_pairs: [4]\n")
    argv = ["--model", "qd_oracle", "--tasks", "qd_mine", "--include_path", str(folder)]
    _fails_briefly(tmp_path, capsys, argv, "qd_mine.yaml:4: YAML syntax error", "fix the file")


def test_batch_size_in_model_args_names_the_flag(tmp_path, capsys, tiny_checkpoint):
    argv = ["--model", "qdelta", "--model_args", f"pretrained={tiny_checkpoint},batch_size=4", "--tasks", "qd_ar_quick"]
    _fails_briefly(tmp_path, capsys, argv, "--model_args batch_size=4", "write --batch_size 4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_is_an_error_and_auto_is_the_default(tmp_path, capsys, tiny_checkpoint):
    from qdelta.harness.cli.eval import parse_lm_eval_args

    argv = ["--model", "qdelta", "--model_args", f"pretrained={tiny_checkpoint}", "--tasks", "qd_ar_quick"]
    _fails_briefly(
        tmp_path, capsys, [*argv, "--device", "cuda"], "--device cuda: CUDA is not available", "--device cpu"
    )
    assert parse_lm_eval_args(argv).device == "cpu"  # no --device: auto


def test_model_type_of_another_of_our_types(tmp_path, capsys, tiny_checkpoint):
    folder = tmp_path / "renamed"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "transformer"}))
    argv = ["--model", "qdelta", "--model_args", f"pretrained={folder}", "--tasks", "qd_ar_quick"]
    _fails_briefly(tmp_path, capsys, argv, "'head_dim'", "belong to model_type 'qdelta'", "check the model_type")


@pytest.mark.slow
def test_ctrl_c_says_how_far_and_exits_130(tmp_path, tiny_checkpoint):
    runs = tmp_path / "runs"
    tasks = "qd_passkey_quick,qd_ar_quick,qd_mqar_quick,qd_niah_single_2_quick,qd_niah_single_3_quick"
    argv = ["--model", "qdelta", "--model_args", f"pretrained={tiny_checkpoint}", "--tasks", tasks]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qdelta.harness.cli", "eval", "--runs-dir", str(runs), "--no-leaderboard", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(tmp_path),
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(runs.glob("*/tasks/*/results.json")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    done = len(list(runs.glob("*/tasks/*/results.json")))
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed (busy machine)")
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    # progress: task i of N, requests done, time left; lm-eval's hints that do not apply are gone
    assert "[1/5] " in err and " of 5 tasks, " in err and " requests done; about " in err, err[-3000:]
    assert "max_seq_lengths" not in err and "No aggregation function" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == f"qdelta eval: interrupted after {done} of 5 tasks; re-run the same command to resume", err[-3000:]
