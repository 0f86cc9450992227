"""``include:`` of a shipped task by name from any folder: ``include: qd_mqar`` in ``my_tasks/x.yaml``.

lm-eval 0.4 resolves ``include:`` relative to the including file only. A name (or file name) that is
not there but names a shipped task, group or YAML file resolves to that file under ``TASKS_DIR``.
``enable_include_by_name()`` teaches lm-eval's YAML loader the same (``qdelta eval`` calls it);
``qdelta tasks validate`` resolves includes the same way.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Dict, Optional

from . import TASKS_DIR

_NAME = re.compile(r"^(?:task|group):\s*['\"]?([A-Za-z0-9_.\-]+)", re.MULTILINE)


@functools.lru_cache(maxsize=1)
def shipped_files() -> Dict[str, Path]:
    """Shipped YAML files by task / group name, by file name and by file stem."""
    found: Dict[str, Path] = {}
    for path in sorted(TASKS_DIR.rglob("*.yaml")):
        found.setdefault(path.name, path)
        found.setdefault(path.stem, path)
        for name in _NAME.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, path)
    return found


def resolve_include(base_dir: Path, include: str) -> Path:
    """The file an ``include:`` value names: relative to ``base_dir`` (or absolute), else a shipped task."""
    path = Path(include) if Path(include).is_absolute() else Path(base_dir) / include
    if path.exists():
        return path
    return shipped_files().get(str(include), path)


def shipped(include: str) -> Optional[Path]:
    return shipped_files().get(str(include))


def enable_include_by_name() -> None:
    """Make lm-eval's YAML loader resolve ``include: <shipped task name>`` from any folder (idempotent)."""
    from lm_eval.tasks import _yaml_loader

    if getattr(_yaml_loader.load_yaml, "qdelta_include_by_name", False):
        return
    original = _yaml_loader.load_yaml

    @functools.wraps(original)
    def load_yaml(path, *args, **kwargs):
        if not Path(path).expanduser().exists() and shipped(Path(path).name) is not None:
            path = shipped(Path(path).name)
        return original(path, *args, **kwargs)

    load_yaml.qdelta_include_by_name = True
    _yaml_loader.load_yaml = load_yaml
