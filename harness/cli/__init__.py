"""The ``qdelta`` command line: one entry point, one thin module per subcommand.

Each subcommand lives in ``qdelta/harness/cli/<name>.py`` and defines

    HELP: str                         one line for ``qdelta --help``
    def add_arguments(parser): ...    its options (``parser.epilog`` holds examples)
    def run(args) -> int: ...         the work; returns the exit code

Modules are found by name, so adding a subcommand means adding one file. They import nothing
heavy at module level, so ``qdelta --help`` and ``qdelta CMD --help`` answer without loading torch;
before ``run`` the models are imported and registered with transformers (``qdelta.load()``) unless
the module sets ``NEEDS_MODELS = False``. A subcommand that forwards unknown options (``qdelta
eval`` passes them to lm-eval) calls ``parser.set_defaults(_accepts_extra=True)``; it finds them
in ``args.extra``. A module may set ``NAME`` (the subcommand's name when it is no Python name,
e.g. ``lm-eval``), and ``PASSES_ALL_ARGUMENTS = True`` with ``run_argv(argv)``: every argument
after the subcommand, ``--help`` included, then goes to it unparsed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import List, Optional


def _subcommands():
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    modules = [importlib.import_module(f"{__name__}.{name}") for name in names]
    return [(getattr(module, "NAME", name), module) for name, module in zip(names, modules)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qdelta",
        description="Q-Delta: exact ops, models and a long-context recall evaluation harness.",
        epilog="examples:\n  qdelta eval                 # shipped checkpoints on the offline recall suite\n"
        "  qdelta eval --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v one level below the subcommand's default (eval: INFO, others: DEBUG), -vv DEBUG",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _subcommands():
        p = sub.add_parser(
            name, help=module.HELP, description=module.HELP, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _needs_models=getattr(module, "NEEDS_MODELS", True))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    for name, module in _subcommands():
        if argv[:1] == [name] and getattr(module, "PASSES_ALL_ARGUMENTS", False):
            try:
                return int(module.run_argv(argv[1:]) or 0)
            except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
                print(f"qdelta {name}: error: {err}", file=sys.stderr)
                return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    level = max(logging.DEBUG, getattr(args, "_log_level", logging.INFO) - 10 * args.verbose)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "_accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args._needs_models:  # the `qdelta` script defers torch / transformers until a command runs
        import qdelta

        qdelta.load()
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"qdelta {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"qdelta {args.command}: {err or 'interrupted; re-run the same command to resume'}", file=sys.stderr)
        return 130
