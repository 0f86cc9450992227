"""Run records state the code, weights and task version they were made with; resume reuses only
matching tasks and says so; files get the user's umask; two processes on one run lose and
duplicate nothing (a lock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qdelta.harness import cli
from qdelta.harness.eval import records

TASKS = "qd_ar_quick,qd_passkey_quick"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, save_word_tokenizer):
    from qdelta.testing import tiny_model

    folder = tmp_path_factory.mktemp("ckpt") / "tiny_qdelta"
    tiny_model("qdelta", seed=0).save_pretrained(str(folder))
    save_word_tokenizer(folder)
    return folder


def _argv(ckpt, runs):
    return [
        "eval",
        "--runs-dir",
        str(runs),
        "--no-leaderboard",
        "--model",
        "qdelta",
        "--model_args",
        f"pretrained={ckpt}",
        "--tasks",
        TASKS,
        "--device",
        "cpu",
    ]


def test_umask_respected(tmp_path):
    old = os.umask(0o022)
    try:
        records.atomic_write_text(tmp_path / "a.json", "{}")
        os.umask(0o077)
        records.atomic_write_text(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_resume_reuses_only_matching_tasks_and_says_from_which_code(tmp_path, capsys, tiny_checkpoint):
    runs = tmp_path / "runs"
    assert cli.main(_argv(tiny_checkpoint, runs)) == 0
    (run,) = records.load_runs(runs)
    entry = run["summary"]["tasks"]["qd_ar_quick"]
    assert len(entry["weights_sha256"]) == 64 and entry["version"] is not None and entry["data_sha256"]
    assert entry["code"].startswith("qdelta ")
    capsys.readouterr()

    # pretend another code version with another task version wrote qd_ar_quick
    entry_file = run["path"] / "tasks" / "qd_ar_quick" / "entry.json"
    stale = {**json.loads(entry_file.read_text()), "version": 0.5, "code": "qdelta 0.0 @ abc123+dirty"}
    entry_file.write_text(json.dumps(stale))
    summary = json.loads((run["path"] / "summary.json").read_text())
    summary["tasks"]["qd_ar_quick"] = stale
    summary["tasks"]["qd_passkey_quick"]["code"] = "qdelta 0.0 @ abc123+dirty"
    (run["path"] / "tasks" / "qd_passkey_quick" / "entry.json").write_text(
        json.dumps(summary["tasks"]["qd_passkey_quick"])
    )
    (run["path"] / "summary.json").write_text(json.dumps(summary))
    passkey = (run["path"] / "tasks" / "qd_passkey_quick" / "results.json").stat().st_mtime_ns

    assert cli.main(_argv(tiny_checkpoint, runs)) == 0
    err = capsys.readouterr().err
    assert "1 of 2 tasks already in the run record" in err and "made by qdelta 0.0 @ abc123+dirty" in err, err
    assert "recorded qd_ar_quick came from other weights or another task version: rerun" in err, err
    (run,) = records.load_runs(runs)
    assert run["summary"]["tasks"]["qd_ar_quick"]["version"] != 0.5  # re-evaluated
    assert (run["path"] / "tasks" / "qd_passkey_quick" / "results.json").stat().st_mtime_ns == passkey


@pytest.mark.slow
def test_two_processes_on_one_run_lose_and_duplicate_nothing(tmp_path, tiny_checkpoint):
    runs = tmp_path / "runs"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "qdelta.harness.cli", *_argv(tiny_checkpoint, runs)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(tmp_path),
        )
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    evaluated = [line for err in errs for line in err.splitlines() if " requests in " in line]
    assert len(evaluated) == 2, errs  # each task evaluated once, by one of the two
    assert any("2 of 2 tasks already in the run record" in err for err in errs), errs
    (run,) = records.load_runs(runs)
    assert set(run["tasks"]) == set(TASKS.split(",")) == set(run["summary"]["tasks"])
    assert run["summary"]["status"] == "done"
    for task, data in run["tasks"].items():
        n = run["summary"]["tasks"][task]["n_samples"]
        assert n > 0 and len(records.read_samples(data["samples_path"])) == n
