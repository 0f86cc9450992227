"""``qdelta leaderboard``: rebuild the leaderboard files from the run records and print the table."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "rebuild results/leaderboards/ (markdown, CSV, PNG plots) from the run records in results/runs/"

EPILOG = """examples:
  qdelta leaderboard                         # results/runs -> results/leaderboards
  qdelta leaderboard --runs-dir /tmp/runs --out-dir /tmp/board --no-plots
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default="results/runs", help="run records root (default: results/runs)")
    parser.add_argument(
        "--out-dir", default="results/leaderboards", help="output folder (default: results/leaderboards)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.epilog = EPILOG


def run(args) -> int:
    from qdelta.harness.eval.leaderboard import write_leaderboard

    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(f"--runs-dir {runs_dir} does not exist; run `qdelta eval` first or pass --runs-dir DIR")
    written = write_leaderboard(runs_dir, Path(args.out_dir), plots=not args.no_plots)
    print((Path(args.out_dir) / "leaderboard.md").read_text())
    print("written: " + ", ".join(str(p) for p in written))
    return 0
