"""lm-eval's own command line on our checkpoints: ``lm_eval --model hf ... trust_remote_code=True``
(lm-eval's HFLM, no qdelta import of ours) and ``qdelta lm-eval`` (its CLI with model ``qdelta``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from qdelta.harness import cli

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "results" / "checkpoints" / "qdelta-tiny-recall"
TASKS = REPO / "tasks" / "recall"


def _results(out: Path) -> dict:
    files = sorted(out.rglob("results_*.json"))
    assert files, f"lm-eval wrote no results under {out}"
    return json.loads(files[-1].read_text())


def test_lm_eval_hf_model_runs_a_shipped_checkpoint(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    argv = [sys.executable, "-m", "lm_eval", "--model", "hf"]
    argv += ["--model_args", f"pretrained={CHECKPOINT},trust_remote_code=True", "--tasks", "qd_niah_single_1_quick"]
    argv += ["--include_path", str(TASKS), "--limit", "2", "--device", "cpu", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = _results(tmp_path / "out")
    assert result["config"]["model"] == "hf"
    assert "acc,none" in result["results"]["qd_niah_single_1_quick"]
    assert result["n-samples"]["qd_niah_single_1_quick"]["effective"] == 2


def test_qdelta_lm_eval_is_lm_evals_cli_with_model_qdelta(tmp_path, capsys):
    argv = ["lm-eval", "run", "--model", "qdelta", "--model_args", f"pretrained={CHECKPOINT}"]
    argv += ["--tasks", "qd_passkey_quick", "--include_path", str(TASKS), "--limit", "2", "--device", "cpu"]
    assert cli.main(argv + ["--output_path", str(tmp_path / "out")]) == 0
    result = _results(tmp_path / "out")
    assert result["config"]["model"] == "qdelta"
    assert "acc,none" in result["results"]["qd_passkey_quick"]

    assert cli.main(["lm-eval", "--help"]) == 0
    assert "Language Model Evaluation Harness" in capsys.readouterr().out
    assert cli.main(["lm-eval", "run", "--model", "qdelta", "--tasks", "no_such_task_here", "--limit", "1"]) == 2
    assert "qdelta lm-eval: error: Tasks not found: no_such_task_here" in capsys.readouterr().err
