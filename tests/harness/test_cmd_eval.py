"""`qdelta eval` through the real lm-eval machinery (offline, CPU): oracle ~100 %, random at chance,
tiny checkpoints run, interrupted runs resume without recomputing, bad input fails cleanly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qdelta.harness import cli
from qdelta.harness.eval import records
from qdelta.harness.eval.leaderboard import write_leaderboard

REPO = Path(__file__).resolve().parents[2]
RESUME_TASKS = "qd_passkey_quick,qd_ar_quick,qd_mqar_quick,qd_niah_single_2_quick,qd_niah_single_3_quick"  # slow last


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, save_word_tokenizer):
    """Two tiny checkpoints (Q-Delta and Transformer) with a word-level tokenizer."""
    from qdelta.testing import tiny_model

    root = tmp_path_factory.mktemp("ckpt")
    for model_type in ("qdelta", "transformer"):
        folder = root / f"tiny_{model_type}"
        tiny_model(model_type, seed=0).save_pretrained(str(folder))
        save_word_tokenizer(folder)
    return root


def _eval(tmp_path, *argv):
    return cli.main(["eval", "--runs-dir", str(tmp_path / "runs"), "--leaderboard-dir", str(tmp_path / "board"), *argv])


def _samples(run_dir: Path):
    out = []
    for task_dir in sorted((run_dir / "tasks").iterdir()):
        out += [(task_dir.name, s) for s in records.read_samples(task_dir / "samples.jsonl")]
    return out


@pytest.mark.slow
def test_oracle_scores_100_and_random_scores_chance(tmp_path):
    from qdelta.tasks.oracle_models import chance_of

    assert _eval(tmp_path, "--model", "qd_oracle", "--tasks", "qd_recall_quick", "--no-leaderboard") == 0
    assert _eval(tmp_path, "--model", "qd_random", "--tasks", "qd_recall_quick") == 0
    runs = {r["summary"]["model"]: r for r in records.load_runs(tmp_path / "runs")}
    oracle, rand = runs["qd_oracle"], runs["qd_random"]
    assert len(oracle["tasks"]) >= 6 and set(oracle["tasks"]) == set(rand["tasks"])
    for task, data in oracle["tasks"].items():
        assert data["results"]["results"][task]["acc,none"] == 1.0, task
    samples = _samples(rand["path"])
    expected = [chance_of(s["doc"], s["arguments"][0][0]) for _, s in samples]
    observed = sum(s["acc"] for _, s in samples)
    spread = math.sqrt(sum(p * (1 - p) for p in expected))
    assert abs(observed - sum(expected)) <= 3 * spread + 1, (observed, sum(expected))
    assert observed / len(samples) < 0.5
    board = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "qd_oracle" in board and "qd_random" in board and "Reported by the paper" in board
    measured, reported = board.split("## Reported by the paper")
    assert "90.02" in reported and "90.02" not in measured  # the paper's numbers stay a separate table
    rows = (tmp_path / "board" / "leaderboard.csv").read_text().splitlines()
    assert rows[0] == "run_id,model,task,metric,value,prompts_truncated,requests_over_max_length"
    assert len(rows) == 1 + 2 * len(oracle["tasks"]) and all(r.endswith(",0,0") for r in rows[1:])
    assert "None: every score above was made on whole prompts" in measured
    assert (
        cli.main(
            [
                "leaderboard",
                "--runs-dir",
                str(tmp_path / "runs"),
                "--leaderboard-dir",
                str(tmp_path / "again"),
                "--no-plots",
            ]
        )
        == 0
    )
    assert (tmp_path / "again" / "leaderboard.csv").read_text() == (tmp_path / "board" / "leaderboard.csv").read_text()
    assert cli.main(["leaderboard", "--runs-dir", str(tmp_path / "nothing")]) == 2


@pytest.mark.slow
def test_main_job_and_checkpoints_run(tmp_path, checkpoints):
    """No lm-eval arguments: every checkpoint under --checkpoints-dir on qd_recall_quick, then the leaderboard."""
    only_one = tmp_path / "ckpts"
    only_one.mkdir()
    (only_one / "tiny_qdelta").symlink_to(checkpoints / "tiny_qdelta")
    assert _eval(tmp_path, "--checkpoints-dir", str(only_one)) == 0
    assert (
        _eval(
            tmp_path,
            "--model",
            "qdelta",
            "--model_args",
            f"pretrained={checkpoints / 'tiny_transformer'}",
            "--tasks",
            "qd_mqar_quick",
            "--batch_size",
            "4",
            "--device",
            "auto",
        )
        == 0
    )
    (run_q,) = [r for r in records.load_runs(tmp_path / "runs") if r["summary"]["model_label"] == "tiny_qdelta"]
    summary = run_q["summary"]
    assert summary["status"] == "done" and len(run_q["tasks"]) >= 6
    assert len(summary["weights_sha256"]) == 64 and summary["packages"]["lm_eval"]
    assert summary["model_info"]["model_type"] == "qdelta" and summary["model_info"]["state_size"]["per_token"] == 0
    entry = summary["tasks"]["qd_mqar_quick"]
    assert entry["adapter"]["prefix_groups"] > 0 and entry["version"] is not None and entry["data_sha256"]
    board = tmp_path / "board"
    csv_rows = (board / "leaderboard.csv").read_text().splitlines()
    assert any(row.startswith("tiny_transformer-") for row in csv_rows)
    for png in ("acc_vs_seq_len.png", "acc_vs_num_kv_pairs.png", "acc_vs_state_size.png"):
        assert (board / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_interrupted_run_resumes_without_recomputing(tmp_path, checkpoints):
    argv = [
        "--model",
        "qdelta",
        "--model_args",
        f"pretrained={checkpoints / 'tiny_qdelta'}",
        "--tasks",
        RESUME_TASKS,
        "--batch_size",
        "8",
        "--device",
        "cpu",
        "--no-leaderboard",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for attempt in range(3):  # on a busy machine the kill can come after the last task: try again
        runs = tmp_path / f"runs{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "qdelta.harness.cli", "eval", "--runs-dir", str(runs), *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=str(tmp_path),
        )
        deadline = time.time() + 240
        while time.time() < deadline and not list(runs.glob("*/tasks/*/results.json")):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (run_dir,) = runs.iterdir()
        finished = {p.parent.name: p.read_bytes() for p in run_dir.glob("tasks/*/results.json")}
        if len(finished) < 5:
            break
    assert 1 <= len(finished) < 5, "the kill must land between the first and the last task"
    assert not list(run_dir.glob("tasks/*/results.json.tmp"))
    stamps = {name: (run_dir / "tasks" / name / "results.json").stat().st_mtime_ns for name in finished}

    assert cli.main(["eval", "--runs-dir", str(runs), *argv]) == 0
    for name, content in finished.items():
        path = run_dir / "tasks" / name / "results.json"
        assert path.read_bytes() == content and path.stat().st_mtime_ns == stamps[name], f"{name} was recomputed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and len(summary["tasks"]) == 5
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*.json")}
    assert cli.main(["eval", "--runs-dir", str(runs), *argv]) == 0  # all done: the record is left untouched
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*.json")} == before

    fresh = tmp_path / "fresh"
    assert cli.main(["eval", "--runs-dir", str(fresh), *argv]) == 0
    write_leaderboard(runs, tmp_path / "board_resumed", plots=False)
    write_leaderboard(fresh, tmp_path / "board_fresh", plots=False)
    for name in ("leaderboard.csv", "slices.csv"):
        assert (tmp_path / "board_resumed" / name).read_text() == (tmp_path / "board_fresh" / name).read_text()
    table = [
        r for r in (tmp_path / "board_resumed" / "leaderboard.md").read_text().splitlines() if "| tiny_qdelta" in r
    ]
    assert table and table[0] in (tmp_path / "board_fresh" / "leaderboard.md").read_text()


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("llama") / "llama"
    tiny_llama().save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize(
    "case",
    ["unknown_task", "unknown_path", "other_model_type", "malformed_model_args", "unknown_model_arg", "unknown_model"],
)
def test_bad_input_one_line_error_no_records(case, tmp_path, capsys, checkpoints, llama_checkpoint):
    ckpt = checkpoints / "tiny_qdelta"
    argv, expected = {
        "unknown_task": (["--model", "qd_oracle", "--tasks", "qd_no_such_task"], "qdelta tasks list"),
        "unknown_path": (
            ["--model", "qdelta", "--model_args", "pretrained=/no/such/ckpt", "--tasks", "qd_ar_quick"],
            "pretrained=results/checkpoints/",
        ),
        "other_model_type": (
            ["--model", "qdelta", "--model_args", f"pretrained={llama_checkpoint}", "--tasks", "qd_ar_quick"],
            "--model hf",
        ),
        "malformed_model_args": (
            ["--model", "qdelta", "--model_args", "pretrained", "--tasks", "qd_ar_quick"],
            "key=value",
        ),
        "unknown_model_arg": (
            ["--model", "qdelta", "--model_args", f"pretrained={ckpt},colour=red", "--tasks", "qd_ar_quick"],
            "accepted: pretrained",
        ),
        "unknown_model": (["--model", "no_such_model", "--tasks", "qd_ar_quick"], "use qdelta"),
    }[case]
    assert _eval(tmp_path, *argv) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("qdelta eval: error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "board").exists()


@pytest.mark.slow
def test_data_parallel_two_processes_match_one(tmp_path, checkpoints):
    """lm-eval's data parallelism (2 CPU processes over gloo, as `accelerate launch` does on GPUs):
    rank 0 records every document, with the scores of a single-process run (per-slice metrics too)."""
    argv = [
        "--model",
        "qdelta",
        "--model_args",
        f"pretrained={checkpoints / 'tiny_qdelta'}",
        "--tasks",
        "qd_niah_single_1_quick,qd_ar_quick,qd_mqar_gen_quick",
        "--batch_size",
        "4",
        "--no-leaderboard",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "qdelta.harness.cli",
            "-v",
            "eval",
            "--runs-dir",
            str(tmp_path / "dp"),
            *argv,
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # the whole stderr on failure: torchelastic's summary at the end hides the failing rank's traceback
    # (seen once, 2026-11-27: rank 1 aborted with SIGABRT in one of ~9 full-suite runs; not reproduced since)
    assert done.returncode == 0, done.stderr[-30000:]
    assert "rank 1 of 2" in done.stderr
    assert cli.main(["eval", "--runs-dir", str(tmp_path / "one"), *argv]) == 0
    (dp_run,), (one_run,) = records.load_runs(tmp_path / "dp"), records.load_runs(tmp_path / "one")
    assert dp_run["summary"]["world_size"] == 2 and one_run["summary"]["world_size"] == 1
    assert (
        set(dp_run["tasks"]) == set(one_run["tasks"]) == {"qd_niah_single_1_quick", "qd_ar_quick", "qd_mqar_gen_quick"}
    )
    for task in dp_run["tasks"]:
        dp_samples = {s["doc_id"]: s for s in records.read_samples(dp_run["tasks"][task]["samples_path"])}
        one_samples = {s["doc_id"]: s for s in records.read_samples(one_run["tasks"][task]["samples_path"])}
        assert dp_samples.keys() == one_samples.keys()
        for doc_id, sample in one_samples.items():
            assert dp_samples[doc_id]["acc"] == sample["acc"]
            for got, want in zip(dp_samples[doc_id]["filtered_resps"], sample["filtered_resps"]):
                if isinstance(want, str):  # generation
                    assert got == want
                else:  # (log-likelihood, is_greedy); batches differ, so the sums may differ in the last bits
                    assert abs(got[0] - want[0]) < 1e-4 and got[1] == want[1]
        dp_metrics = dp_run["tasks"][task]["results"]["results"][task]
        one_metrics = one_run["tasks"][task]["results"]["results"][task]
        assert dp_metrics["acc,none"] == one_metrics["acc,none"]
        # lm-eval 0.4.13 aggregates a rank's per-slice metric only if rank 0 saw that slice too ...
        assert set(dp_metrics) <= set(one_metrics)
    # ... the leaderboard slices come from the gathered per-sample records: complete and identical
    write_leaderboard(tmp_path / "dp", tmp_path / "board_dp", plots=False)
    write_leaderboard(tmp_path / "one", tmp_path / "board_one", plots=False)
    for name in ("leaderboard.csv", "slices.csv"):
        assert (tmp_path / "board_dp" / name).read_text() == (tmp_path / "board_one" / name).read_text()
    slices = (tmp_path / "board_dp" / "slices.csv").read_text()
    assert ",qd_niah_single_1_quick,acc,depth," in slices and ",qd_niah_single_1_quick,acc,context_length," in slices


def test_run_id_follows_command_and_weights(tmp_path, checkpoints):
    import shutil

    from qdelta.harness.cli.eval import make_run_id, parse_lm_eval_args
    from qdelta.testing import tiny_model

    ckpt = tmp_path / "tiny"
    shutil.copytree(checkpoints / "tiny_qdelta", ckpt)

    def run_id(*extra):
        return make_run_id(
            parse_lm_eval_args(
                ["--model", "qdelta", "--model_args", f"pretrained={ckpt}", "--tasks", "qd_ar_quick", *extra]
            )
        )

    first = run_id()
    assert first.startswith("tiny-") and run_id("--batch_size", "7", "--device", "cpu") == first
    assert run_id("--limit", "2") != first
    tiny_model("qdelta", seed=5).save_pretrained(str(ckpt))  # retrained weights: a new run, nothing skipped
    assert run_id() != first


@pytest.mark.slow
def test_failed_task_keeps_the_others(tmp_path, capsys, save_word_tokenizer):
    """A Transformer limited to 64 positions: the 512-token haystack task fails (on_overflow=error),
    the short task is recorded; exit status 1, the leaderboard marks the failure, a re-run retries it."""
    from qdelta.testing import tiny_model

    ckpt = tmp_path / "short_transformer"
    tiny_model("transformer", seed=0, max_position_embeddings=64).save_pretrained(str(ckpt))
    save_word_tokenizer(ckpt)
    argv = [
        "--model",
        "qdelta",
        "--model_args",
        f"pretrained={ckpt}",
        "--tasks",
        "qd_niah_single_1_quick,qd_ar_quick",
        "--batch_size",
        "4",
        "--device",
        "cpu",
    ]
    assert _eval(tmp_path, *argv) == 1
    assert "1 task(s) failed" in capsys.readouterr().err
    (run,) = records.load_runs(tmp_path / "runs")
    assert set(run["tasks"]) == {"qd_ar_quick"}
    entry = run["summary"]["tasks"]["qd_niah_single_1_quick"]
    assert (
        entry["status"] == "failed"
        and "needs 818 tokens but max_length is 64" in entry["error"]
        and "truncation=left" in entry["error"]
    )
    assert run["summary"]["status"] == "failed"
    row = next(
        r for r in (tmp_path / "board" / "leaderboard.md").read_text().splitlines() if "| short_transformer" in r
    )
    assert "failed" in row
    done_before = (run["path"] / "tasks" / "qd_ar_quick" / "results.json").read_bytes()
    assert _eval(tmp_path, *argv) == 1  # retried (fails again), the finished task untouched
    assert (run["path"] / "tasks" / "qd_ar_quick" / "results.json").read_bytes() == done_before
