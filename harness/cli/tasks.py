"""``qdelta tasks``: list the shipped tasks and groups, or check a task YAML before a run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

NEEDS_MODELS = False  # reads YAML / run records only
HELP = "list the recall/LM tasks, or validate a task YAML file"

EPILOG = """examples:
  qdelta tasks list                          # shipped tasks and groups
  qdelta tasks list --include_path my_tasks  # plus your own folder
  qdelta tasks validate my_tasks/qd_colors.yaml
  qdelta tasks show qd_niah_single_1 --limit 1 --tokenizer results/checkpoints/qdelta-tiny-recall
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="tasks_command", metavar="ACTION")
    p_list = sub.add_parser("list", help="list tasks and groups (name, kind, output type, file)")
    p_list.add_argument(
        "--include_path",
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="also list the YAML files under DIR (repeatable)",
    )
    p_show = sub.add_parser("show", help="print the rendered prompts and targets of a task (what the model sees)")
    p_show.add_argument("task", metavar="TASK", help="task or group name (ours, lm-eval's or under --include_path)")
    p_show.add_argument("--limit", type=int, default=1, metavar="N", help="docs per task (default 1)")
    p_show.add_argument("--tokenizer", default=None, metavar="PATH", help="metadata.tokenizer: lengths in its tokens")
    p_show.add_argument("--include_path", "--include-path", default=None, metavar="DIR", help="your own task folder")
    p_val = sub.add_parser("validate", help="check task YAML files: fields, types, impossible combinations")
    p_val.add_argument("files", nargs="+", type=Path, metavar="FILE")


def _rows(root: Path) -> List[tuple]:
    from qdelta.tasks import HUB_TASKS
    from qdelta.tasks.validate import FunctionRef, load_task_yaml

    rows = []
    for path in sorted(root.rglob("*.yaml")):
        if path.name.startswith("_"):
            continue
        try:
            cfg = load_task_yaml(path)
        except ValueError as err:
            rows.append(("?", "error", str(err), str(path)))
            continue
        if "group" in cfg:
            members = cfg.get("task") or []
            names = [m if isinstance(m, str) else str(m.get("task", m.get("group"))) for m in members]
            hub = [n for n in names if n in HUB_TASKS]
            note = f"{len(names)} tasks" + (f", {len(hub)} need the HF hub or a filled cache" if hub else "")
            rows.append((cfg["group"], "group", note, str(path)))
        elif "task" in cfg:
            src = cfg.get("custom_dataset")
            src = src.spec if isinstance(src, FunctionRef) else cfg.get("dataset_path", "?")
            rows.append((cfg["task"], "task", f"{cfg.get('output_type', 'generate_until')} <- {src}", str(path)))
    return rows


def run(args) -> int:
    if args.tasks_command == "show":
        from ._tasks_show import show

        return show(args)
    if args.tasks_command == "validate":
        from qdelta.tasks.validate import validate_task_file

        bad = 0
        for path in args.files:
            problems = validate_task_file(path)
            if problems:
                bad += 1
                print(f"{path}: {len(problems)} problem(s)")
                for line in problems:
                    print(f"  {line}")
            else:
                print(f"{path}: ok")
        return 1 if bad else 0
    if args.tasks_command == "list":
        from qdelta.tasks import TASKS_DIR

        roots = [TASKS_DIR] + [Path(p) for p in args.include_path]
        for root in roots:
            if not root.is_dir():
                raise FileNotFoundError(f"--include_path {root}: not a folder; give a folder of task YAML files")
        rows = [r for root in roots for r in _rows(root)]
        width = max((len(r[0]) for r in rows), default=4)
        for name, kind, note, path in rows:
            print(f"{name:<{width}}  {kind:<5}  {note}")
        print(
            "\nThe qd_ recall tasks run offline. lm-eval's built-in tasks in qd_lm (wikitext, lambada_openai, "
            "piqa, ...) download their data from the Hugging Face hub: offline they need a filled cache."
        )
        return 0
    print("usage: qdelta tasks {list,show,validate} ...  (qdelta tasks --help)")
    return 2
