"""`qdelta --help` and every subcommand's `--help` answer without importing torch or transformers;
the deferred import still gives every command (and `import qdelta` users) the registered models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qdelta.harness import cli

SCRIPT = Path(sys.executable).parent / "qdelta"
SUBCOMMANDS = [name for name, module in cli._subcommands() if not getattr(module, "PASSES_ALL_ARGUMENTS", False)]
PASS_THROUGH = [name for name, module in cli._subcommands() if getattr(module, "PASSES_ALL_ARGUMENTS", False)]


def _imports(argv, **env):
    """Modules the console script imports for ``argv`` (python -X importtime), and its stdout."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, modules


@pytest.mark.skipif(not SCRIPT.is_file(), reason="the qdelta console script is not installed next to python")
@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in SUBCOMMANDS])
def test_help_imports_neither_torch_nor_transformers(argv):
    done, modules = _imports(argv)
    assert done.returncode == 0 and "usage: qdelta" in done.stdout, done.stderr[-2000:]
    assert "examples" in done.stdout or argv == ["--help"]
    assert not {"torch", "transformers", "lm_eval"} & modules, sorted(modules & {"torch", "transformers", "lm_eval"})


@pytest.mark.skipif(not SCRIPT.is_file(), reason="the qdelta console script is not installed next to python")
@pytest.mark.parametrize("name", PASS_THROUGH)
def test_pass_through_help_is_the_wrapped_programs_own(name):
    """``qdelta lm-eval --help`` hands ``--help`` to lm-eval: its usage, not qdelta's parser."""
    done, _ = _imports([name, "--help"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: qdelta" not in done.stdout and f"usage: {name}" in done.stdout, done.stdout[:500]


@pytest.mark.slow
def test_deferred_import_still_registers_the_models(tmp_path):
    code = (
        "import qdelta, sys; assert 'torch' not in sys.modules; "
        "from qdelta.testing import tiny_model; tiny_model('gated_deltanet').save_pretrained(sys.argv[1]); "
        "from transformers import AutoModelForCausalLM; "
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); print(type(m).__name__, qdelta.QDeltaConfig.model_type)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m")],
        capture_output=True,
        text=True,
        env={**os.environ, "QDELTA_LAZY_IMPORT": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["GatedDeltaNetForCausalLM", "qdelta"]


@pytest.mark.slow
def test_one_leaderboard_flag_everywhere(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    base = ["leaderboard", "--runs-dir", str(tmp_path / "runs"), "--no-plots"]
    assert cli.main([*base, "--leaderboard-dir", str(tmp_path / "board")]) == 0
    assert (tmp_path / "board" / "leaderboard.md").is_file()
    assert cli.main([*base, "--out-dir", str(tmp_path / "old")]) == 0  # the deprecated alias still works
    assert (tmp_path / "old" / "leaderboard.md").is_file() and "deprecated" in capsys.readouterr().err
    eval_help = subprocess.run(
        [sys.executable, "-m", "qdelta.harness.cli", "eval", "--help"], capture_output=True, text=True, timeout=300
    ).stdout
    assert "--leaderboard-dir" in eval_help
