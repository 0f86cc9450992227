"""``qdelta bench kernels``: time the Q-Delta Triton kernels against the authors' kernel, fla and SDPA in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "benchmark the Triton kernels (needs a CUDA GPU); writes results/bench/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["kernels"], help="what to benchmark")
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=None,
        help="sequence lengths T (default 2048 4096 8192 16384; 32768 tokens a batch)",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=["340M", "1.3B"],
        default=None,
        help="head configs (default both: H6 K128 V256 and H6 K256 V512)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/bench"),
        help="folder for kernels-<card>.json / .md (default results/bench)",
    )
    parser.add_argument(
        "--authors",
        default=None,
        metavar="DIR",
        help="folder holding the authors' qdelta_rule package (psmiz/Q-Delta's qdelta/qdelta_rule, never "
        "committed; default $QDELTA_AUTHORS_DIR); without it their kernel is skipped and the notes say why",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="measure nothing: combine earlier runs' kernels-<card>.json files (same card, "
        "versions and launch settings; a file later on the command line replaces an "
        "earlier one's rows of the same shape) into --out",
    )
    parser.epilog = (
        "examples:\n  qdelta bench kernels\n"
        "  qdelta bench kernels --lengths 2048 --configs 1.3B --out /tmp/bench\n"
        "  qdelta bench kernels --merge run1/kernels-h200.json run2/kernels-h200.json"
    )


def run(args) -> int:
    from qdelta.harness.bench import kernels as bench_kernels

    if args.merge:
        if args.lengths or args.configs or args.authors:
            raise ValueError("--merge combines finished runs; --lengths / --configs do not apply to it")
        for path in args.merge:
            if not path.is_file():
                raise ValueError(f"--merge: no such file {path} (give the kernels-<card>.json of each run)")
        report = bench_kernels.merge_reports([bench_kernels.load_report(p) for p in args.merge])
        paths = bench_kernels.write_report(report, args.out)
        print(bench_kernels.to_markdown(report))
        print(f"wrote {paths['json']} and {paths['md']}")
        return 0
    for T in args.lengths or []:  # checked before any device time is spent
        try:
            bench_kernels.batch_size(T)
        except ValueError as e:
            raise ValueError(f"--lengths: {e}") from None
    report = bench_kernels.run_benchmark(
        lengths=tuple(args.lengths or bench_kernels.LENGTHS),
        configs=tuple(args.configs or bench_kernels.HEAD_CONFIGS),
        on_progress=lambda r: bench_kernels.write_report(r, args.out),
        authors_dir=args.authors,
    )
    paths = bench_kernels.write_report(report, args.out)
    print(bench_kernels.to_markdown(report))
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0
