"""`qdelta eval --model qdelta`: generation arguments it cannot honour and bad truncation settings are
one-line errors before anything runs (exit 2); an over-length prompt fails its task naming the task,
the length and the fix (exit 1, the other tasks recorded); with truncation=left the run record and
the results JSON count the truncated prompts per task."""

from __future__ import annotations

import json

import pytest

from qdelta.harness import cli
from qdelta.harness.cli.eval import check_generation_kwargs


@pytest.fixture(scope="module")
def short_checkpoint(tmp_path_factory, save_short_transformer):
    """A tiny Transformer limited to 24 tokens; qd_mqar_gen_quick's prompts need 27."""
    return save_short_transformer(tmp_path_factory.mktemp("ckpt") / "short", max_positions=24)


def _eval(tmp_path, *argv):
    return cli.main(["eval", "--runs-dir", str(tmp_path / "runs"), "--no-leaderboard", "--device", "cpu", *argv])


def _fails_briefly(tmp_path, capsys, argv, *named):
    code = _eval(tmp_path, *argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and 1 <= len(lines) <= 3, err
    assert "Traceback" not in err and all(n in err for n in named), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "gen_kwargs,named",
    [
        ("do_sample=true,temperature=0.7", ("qd_mqar_gen_quick: sampling asked for", "--gen_kwargs do_sample=false")),
        ("do_sample=true", ("do_sample=True)", "sample with --model hf")),
        ("num_beams=4", ("num_beams=4: beam search is not implemented",)),
        ("repetition_penalty=1.1", ("repetition_penalty: not implemented by --model qdelta",)),
    ],
)
def test_generation_kwargs_qdelta_cannot_honour_exit_2(gen_kwargs, named, tmp_path, capsys, short_checkpoint):
    argv = ["--model", "qdelta", "--model_args", f"pretrained={short_checkpoint}", "--tasks", "qd_mqar_gen_quick"]
    _fails_briefly(tmp_path, capsys, [*argv, "--gen_kwargs", gen_kwargs], *named)


@pytest.mark.parametrize(
    "model_args,named",
    [
        ("truncation=right", ("truncation must be one of", "'left'")),
        ("truncation=left,on_overflow=count", ("pass one of them",)),
        ("max_length=100", ("max_length=100 exceeds the model's max_sequence_length 24",)),
        ("cuda_graph=sometimes", ("cuda_graph must be auto, true or false", "'sometimes'")),
        ("cuda_graph=true", ("cuda_graph=True needs a recurrent model",)),  # a Transformer (and no GPU here)
    ],
)
def test_bad_truncation_arguments_exit_2(model_args, named, tmp_path, capsys, short_checkpoint):
    argv = [
        "--model",
        "qdelta",
        "--model_args",
        f"pretrained={short_checkpoint},{model_args}",
        "--tasks",
        "qd_ar_quick",
    ]
    _fails_briefly(tmp_path, capsys, argv, *named)


class _Task:
    def __init__(self, output_type, generation_kwargs):
        self.config = {"output_type": output_type, "generation_kwargs": generation_kwargs}

    def get_config(self, key):
        return self.config[key]


def test_gen_kwargs_update_the_task_settings_as_lm_eval_does():
    sampling = {"t": _Task("generate_until", {"until": ["\n"], "do_sample": True, "temperature": 0.7})}
    with pytest.raises(
        ValueError, match=r"task t: sampling asked for \(generation_kwargs do_sample=True, temperature=0.7\)"
    ):
        check_generation_kwargs(sampling, None, 256)
    check_generation_kwargs(sampling, {"do_sample": False}, 256)  # the fix the error names
    check_generation_kwargs(sampling, "do_sample=false", 256)
    check_generation_kwargs({"t": _Task("loglikelihood", None)}, {"num_beams": 4}, 256)  # no generation: unread


def test_over_length_fails_the_task_or_is_truncated_and_counted(tmp_path, caplog, short_checkpoint):
    from qdelta.harness.eval import records

    tasks = ["--tasks", "qd_ar_quick,qd_mqar_gen_quick", "--limit", "3"]
    assert _eval(tmp_path, "--model", "qdelta", "--model_args", f"pretrained={short_checkpoint}", *tasks) == 1
    failure = [r.getMessage() for r in caplog.records if "failed: ValueError" in r.getMessage()]
    assert len(failure) == 1 and len(failure[0].splitlines()) == 1, failure
    assert "task qd_mqar_gen_quick: a generate_until request needs 27 tokens but max_length is 24" in failure[0]
    assert "truncation=left" in failure[0]
    (failed,) = records.load_runs(tmp_path / "runs")
    assert "needs 27 tokens" in failed["summary"]["tasks"]["qd_mqar_gen_quick"]["error"]
    assert set(failed["tasks"]) == {"qd_ar_quick"}  # the other task is recorded

    argv = ["--model", "qdelta", "--model_args", f"pretrained={short_checkpoint},truncation=left", *tasks]
    assert _eval(tmp_path, *argv) == 0
    (run,) = [r for r in records.load_runs(tmp_path / "runs") if "truncation=left" in r["summary"]["command"]]
    entries = run["summary"]["tasks"]
    generated = entries["qd_mqar_gen_quick"]["truncation"]
    assert generated["mode"] == "left" and generated["max_length"] == 24
    assert generated["prompts_truncated"] == 3 and generated["tokens_dropped"] > 0
    assert entries["qd_ar_quick"]["truncation"]["prompts_truncated"] == 0
    merged = json.loads((run["path"] / records.RESULTS).read_text())
    assert merged["truncation"] == {name: entry["truncation"] for name, entry in entries.items()}
    assert run["tasks"]["qd_mqar_gen_quick"]["results"]["truncation"]["qd_mqar_gen_quick"] == generated
    from qdelta.harness.eval.leaderboard import write_leaderboard

    write_leaderboard(tmp_path / "runs", tmp_path / "board", plots=False)
    board = (tmp_path / "board" / "leaderboard.md").read_text()
    row = next(line for line in board.splitlines() if line.startswith(f"| {run['summary']['run_id']} |"))
    assert row.count("*") == 1  # qd_mqar_gen_quick's cell; qd_ar_quick was scored on whole prompts
    assert f"| {run['summary']['run_id']} | qd_mqar_gen_quick | 3 | 0 |" in board
    csv_rows = (tmp_path / "board" / "leaderboard.csv").read_text().splitlines()
    assert any(
        r.startswith(run["summary"]["run_id"]) and ",qd_mqar_gen_quick," in r and r.endswith(",3,0") for r in csv_rows
    )
