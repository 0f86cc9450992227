"""``qdelta bench kernels``: time the Q-Delta Triton kernels against the authors' kernel, fla and SDPA in one run.
``qdelta bench model``: training step, prefill, greedy generation and peak memory of the authors' Q-Delta model and
fla's Gated DeltaNet against ours, same weights."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "benchmark the Triton kernels or the whole model (needs a CUDA GPU); writes results/bench/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "what", choices=["kernels", "model"], help="kernels: the chunk ops; model: the authors' 340M model against ours"
    )
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
        help="folder for kernels-<card>.json / model-<card>.json and their .md (default results/bench)",
    )
    parser.add_argument(
        "--authors",
        default=None,
        metavar="DIR",
        help="psmiz/Q-Delta's qdelta/ folder (holding qdelta_rule/ and modeling_qdelta.py; never committed; "
        "default $QDELTA_AUTHORS_DIR); kernels: without it their kernel is skipped and the notes say why; "
        "model: required (their model makes the weights)",
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        metavar="BxT",
        help="model: batch x length shapes (default 8x2048 2x8192)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="model: timed calls per model and round (median; default 5)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="model: rounds in which a family's models take turns (default 3; a figure is the median of its rounds)",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="model: skip the per-op CUDA profile of one training step"
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="GROUPS",
        help="model: measure only these comma-separated groups (default all): qdelta (authors vs ours, training "
        "and prefill), gdn (fla's Gated DeltaNet vs ours), gen (greedy generation of the qdelta models), "
        "gen-gdn (generation of the Gated DeltaNet pair)",
    )
    parser.add_argument(
        "--gen",
        default=None,
        metavar="BxTxN",
        help="model: generation shape, B prompts of T tokens and N new tokens (default 64x2048x128); off: none",
    )
    parser.add_argument(
        "--gen-repeats", type=int, default=None, help="model: timed generate calls per figure (median; default 3)"
    )
    parser.add_argument(
        "--keep-fla-guard",
        action="store_true",
        help="model: keep fla 0.6's refusal of its Gated DeltaNet backward on Hopper with Triton < 3.7.1 "
        "(default: lifted while fla-gdn is timed; the report says so)",
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
        "  qdelta bench kernels --merge run1/kernels-h200.json run2/kernels-h200.json\n"
        "  qdelta bench model --authors .authors/qdelta --shapes 8x2048\n"
        "  qdelta bench model --authors .authors/qdelta --only gdn,gen,gen-gdn --gen 64x2048x128"
    )


def run_model(args) -> int:
    from qdelta.harness.bench import model as bench_model
    from qdelta.harness.bench.generation import GEN_SHAPE, parse_gen

    if args.lengths or args.configs or args.merge:
        raise ValueError("--lengths / --configs / --merge belong to 'qdelta bench kernels'; the model takes --shapes")
    steps, rounds = args.steps or 5, args.rounds or 3
    for flag, value in (("--steps", args.steps), ("--rounds", args.rounds)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    if args.gen_repeats is not None and args.gen_repeats < 1:
        raise ValueError(f"--gen-repeats must be a positive integer, got {args.gen_repeats}")
    shapes = tuple(bench_model.parse_shape(s) for s in args.shapes) if args.shapes else bench_model.SHAPES
    groups = bench_model.parse_groups(args.only) if args.only else bench_model.GROUPS
    gen_shape = parse_gen(args.gen) if args.gen else GEN_SHAPE
    if gen_shape is None and not any(g in groups for g in ("qdelta", "gdn")):
        raise ValueError(f"--gen off leaves nothing to measure with --only {args.only}; add qdelta or gdn")
    report = bench_model.run_benchmark(
        authors_dir=args.authors,
        shapes=shapes,
        steps=steps,
        rounds=rounds,
        profile=not args.no_profile,
        on_progress=lambda r: bench_model.write_report(r, args.out),
        groups=groups,
        gen_shape=gen_shape,
        gen_repeats=args.gen_repeats or 3,
        lift_fla_guard=not args.keep_fla_guard,
    )
    paths = bench_model.write_report(report, args.out)
    print(bench_model.to_markdown(report))
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0


def run(args) -> int:
    from qdelta.harness.bench import kernels as bench_kernels

    if args.what == "model":
        return run_model(args)
    model_only = (args.shapes, args.no_profile, args.only, args.gen, args.keep_fla_guard, args.gen_repeats)
    if any(model_only) or args.steps is not None or args.rounds is not None:
        raise ValueError(
            "--shapes / --steps / --rounds / --no-profile / --only / --gen / --gen-repeats / --keep-fla-guard "
            "belong to 'qdelta bench model'"
        )

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
