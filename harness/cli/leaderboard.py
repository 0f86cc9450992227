"""``qdelta leaderboard``: rebuild the leaderboard files from the run records and print the table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NEEDS_MODELS = False  # reads YAML / run records only
HELP = "rebuild results/leaderboards/ (markdown, CSV, PNG plots) from the run records in results/runs/"

EPILOG = """examples:
  qdelta leaderboard                         # results/runs -> results/leaderboards
  qdelta leaderboard --runs-dir /tmp/runs --leaderboard-dir /tmp/board --no-plots
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default="results/runs", help="run records root (default: results/runs)")
    parser.add_argument(
        "--leaderboard-dir",
        default="results/leaderboards",
        help="output folder, the same flag as on `qdelta eval` (default: results/leaderboards)",
    )
    parser.add_argument("--out-dir", dest="out_dir", default=None, help=argparse.SUPPRESS)  # deprecated alias
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.epilog = EPILOG


def run(args) -> int:
    from qdelta.harness.eval.leaderboard import write_leaderboard

    if args.out_dir is not None:
        print("qdelta leaderboard: --out-dir is deprecated; write --leaderboard-dir", file=sys.stderr)
        args.leaderboard_dir = args.out_dir
    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(f"--runs-dir {runs_dir} does not exist; run `qdelta eval` first or pass --runs-dir DIR")
    written = write_leaderboard(runs_dir, Path(args.leaderboard_dir), plots=not args.no_plots)
    print((Path(args.leaderboard_dir) / "leaderboard.md").read_text())
    print("written: " + ", ".join(str(p) for p in written))
    return 0
