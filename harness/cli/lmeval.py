"""``qdelta lm-eval ARGS...``: lm-eval's own command line, with the ``qdelta`` model registered.

Every argument goes to lm-eval unchanged (``lm-eval run``, ``ls``, ``validate``, the legacy
form without a subcommand, ``--help``); before it runs, the lm-eval models ``qdelta``,
``qd_oracle`` and ``qd_random`` are registered. Nothing else is added: give our task folder
with ``--include_path`` as with lm-eval itself. ``HF_HUB_OFFLINE`` and ``HF_DATASETS_OFFLINE``
default to 1 as in ``qdelta eval``. The exit code is lm-eval's.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List

NAME = "lm-eval"
HELP = "lm-eval's own CLI (run, ls, validate) with the lm-eval model `qdelta` registered"
PASSES_ALL_ARGUMENTS = True  # qdelta's parser never sees the arguments (see run_argv)

EPILOG = """every argument is lm-eval's; see `qdelta lm-eval --help` and `qdelta lm-eval run --help`.

examples:
  qdelta lm-eval --model qdelta --model_args pretrained=results/checkpoints/qdelta-tiny-recall \\
      --tasks qd_recall_quick --include_path "$(python -c 'from qdelta.tasks import TASKS_DIR; print(TASKS_DIR)')" \\
      --device cpu
  qdelta lm-eval ls tasks --include_path DIR
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG


def run_argv(argv: List[str]) -> int:
    """Run lm-eval's CLI on ``argv`` (the arguments after ``qdelta lm-eval``); its exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.__main__ import cli_evaluate

    import qdelta.harness.eval.adapter  # noqa: F401  (registers the lm-eval model `qdelta`)
    import qdelta.tasks.oracle_models  # noqa: F401  (registers qd_oracle and qd_random)

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


def run(args) -> int:  # reached only through run_argv; kept for the subcommand interface
    return run_argv(list(getattr(args, "extra", [])))
