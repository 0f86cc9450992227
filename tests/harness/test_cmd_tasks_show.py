"""`qdelta tasks show`: the prompts and targets lm-eval builds for a task, printed verbatim."""

from __future__ import annotations

from pathlib import Path

from qdelta.harness import cli
from qdelta.tasks.needle import build_passkey

TOKENIZER = Path(__file__).resolve().parents[2] / "results" / "checkpoints" / "qdelta-tiny-recall"


def test_show_prints_each_prompt_and_target_as_built(capsys):
    assert cli.main(["tasks", "show", "qd_passkey_quick", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    docs = build_passkey(seed=0, haystack="noise", digits=5, context_lengths=[512], num_depths=2)["test"]
    for doc in list(docs)[:2]:
        assert f"\n{doc['context']}\n--- continuation scored" in out
        assert repr(doc["target"]) in out
    assert out.count("qd_passkey_quick  doc ") == 2 and "loglikelihood" in out and "words" in out


def test_show_counts_in_the_given_tokenizer_and_shows_generation_settings(capsys):
    argv = ["tasks", "show", "qd_niah_single_1_quick", "--tokenizer", str(TOKENIZER)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("qd_niah_single_1_quick  doc ") == 1
    assert f"tokens:{TOKENIZER}" in out and '"max_gen_toks":' in out and "--- target" in out


def test_show_refuses_bad_input(capsys):
    assert cli.main(["tasks", "show", "qd_passkey_quick", "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    assert cli.main(["tasks", "show", "qd_no_such_task"]) == 2
    assert "unknown task(s): qd_no_such_task" in capsys.readouterr().err
