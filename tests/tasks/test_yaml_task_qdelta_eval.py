"""The README's YAML-only task, saved in a temporary folder as a user would, runs via `qdelta eval`."""

import json
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from qdelta.harness.cli import main  # noqa: E402

pytestmark = pytest.mark.slow  # CPU-heavy: run by the full suite, skipped by -m 'not slow'

README = Path(__file__).resolve().parents[2] / "tasks" / "README.md"


def _user_folder(tmp_path: Path, **metadata) -> Path:
    block = README.read_text().split("<!-- worked-example: qd_locker_codes.yaml -->", 1)[1]
    text = re.search(r"```yaml\n(.*?)```", block, re.S).group(1)
    for key, value in metadata.items():
        text = re.sub(rf"(?m)^  {key}: .*$", f"  {key}: {value}", text)
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "qd_locker_codes.yaml").write_text(text)
    return folder


def _results(runs: Path) -> dict:
    (record,) = [p for p in runs.iterdir() if p.is_dir()]
    return json.loads((record / "results.json").read_text())["results"]["qd_locker_codes"]


@pytest.mark.parametrize("model, expect", [("qd_oracle", 1.0), ("qd_random", 0.0)])
def test_readme_yaml_task_runs_via_qdelta_eval(tmp_path, monkeypatch, model, expect):
    folder = _user_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    rc = main(
        [
            "eval",
            "--model",
            model,
            "--tasks",
            "qd_locker_codes",
            "--include_path",
            str(folder),
            "--runs-dir",
            str(runs),
            "--no-leaderboard",
        ]
    )
    assert rc == 0
    res = _results(runs)
    assert res["sample_len"] == 20 and res["acc,none"] == pytest.approx(expect, abs=0.1)
    assert {"acc_pairs8,none", "acc_pairs32,none"} <= set(res)


def test_readme_yaml_task_runs_on_a_tiny_checkpoint(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from qdelta.testing import tiny_model

    folder = _user_folder(tmp_path, num_examples=2, num_pairs="[2, 4]")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<eos>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["Locker opens with code 0123456789 Every locker below has its own code."], trainer=trainer)
    ckpt = tmp_path / "ckpt"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(ckpt)
    tiny_model("qdelta", vocab_size=len(tok.get_vocab())).save_pretrained(ckpt)
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    rc = main(
        [
            "eval",
            "--model",
            "qdelta",
            "--model_args",
            f"pretrained={ckpt}",
            "--tasks",
            "qd_locker_codes",
            "--include_path",
            str(folder),
            "--runs-dir",
            str(runs),
            "--no-leaderboard",
            "--batch_size",
            "4",
        ]
    )
    assert rc == 0
    res = _results(runs)
    assert res["sample_len"] == 4 and 0.0 <= res["acc,none"] <= 1.0


def test_readme_include_by_name_runs_via_qdelta_eval(tmp_path, monkeypatch):
    """tasks/README.md's `include: qd_mqar` example, saved in a folder of its own, runs through lm-eval."""
    block = README.read_text().split("<!-- worked-example: qd_my_mqar.yaml -->", 1)[1]
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "qd_my_mqar.yaml").write_text(re.search(r"```yaml\n(.*?)```", block, re.S).group(1))
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--model", "qd_oracle", "--tasks", "qd_my_mqar", "--include_path", str(folder)]
    assert main([*argv, "--runs-dir", str(tmp_path / "runs"), "--no-leaderboard"]) == 0
    (record,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    res = json.loads((record / "results.json").read_text())["results"]["qd_my_mqar"]
    assert res["acc,none"] == 1.0 and {"acc_L256_K32,none", "acc_L512_K64,none"} <= set(res)
