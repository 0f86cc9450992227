"""``qdelta tasks show``: the prompts and targets a task hands the model, rendered by lm-eval itself."""

from __future__ import annotations

import json
from typing import Iterator, List, Optional, Tuple

RULE = "=" * 100


def _leaf_tasks(task_dict) -> Iterator[Tuple[str, object]]:
    from lm_eval.api.task import Task

    for key, value in task_dict.items():
        if isinstance(value, Task):
            yield getattr(key, "group_name", None) or str(key), value
        elif isinstance(value, dict):
            yield from _leaf_tasks(value)


def _load(names, manager) -> dict:
    """The tasks of ``names``: TaskManager.load (lm-eval 0.4.13, a flat dict) where it exists, else
    get_task_dict (nested by group; deprecated in 0.4.13)."""
    if hasattr(manager, "load"):
        return manager.load(names)["tasks"]
    from lm_eval.tasks import get_task_dict

    return get_task_dict(names, manager)


def _counter(tokenizer: Optional[str]):
    if tokenizer is None:
        return "words", lambda text: len(text.split())
    from qdelta.tasks.haystack import LengthCounter

    count = LengthCounter(tokenizer)
    return count.unit, count


def render(name: str, limit: int, tokenizer: Optional[str], include_path: Optional[str]) -> List[str]:
    """Lines showing the first ``limit`` docs of task or group ``name``: each request's context
    and continuation as lm-eval builds them (``build_all_requests``), the target and the lengths."""
    from .eval import _register_plugins, resolve_tasks

    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    _register_plugins()
    metadata = {"tokenizer": tokenizer} if tokenizer else {}
    manager, names = resolve_tasks([name], include_path, metadata)
    unit, count = _counter(tokenizer)
    lines: List[str] = []
    for task_name, task in _leaf_tasks(_load(names, manager)):
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        by_doc: dict = {}
        for inst in task.instances:
            by_doc.setdefault(inst.doc_id, []).append(inst)
        for doc_id, insts in sorted(by_doc.items()):
            first = insts[0]
            context = first.args[0]
            head = f"{task_name}  doc {doc_id}  {first.request_type}"
            if first.request_type == "generate_until":
                head += "  " + json.dumps(first.args[1], sort_keys=True, default=str)
            lines += [RULE, head, f"--- prompt ({count(context)} {unit}, {len(context)} characters)", context]
            for inst in insts:
                if inst.request_type != "generate_until" and len(inst.args) > 1:
                    lines += [f"--- continuation scored ({count(inst.args[1])} {unit})", repr(inst.args[1])]
            lines += ["--- target", repr(task.doc_to_target(first.doc))]
    if not lines:
        raise ValueError(f"task {name!r} has no documents to show")
    return lines + [RULE]


def show(args) -> int:
    for line in render(args.task, args.limit, args.tokenizer, args.include_path):
        print(line)
    return 0
