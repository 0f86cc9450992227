"""Check a task or group YAML before a run: ``validate_task_file(path) -> list of problems``.

Each problem is one line ``<field>: <what is wrong>; <how to fix it>``; every problem of a file is
reported (metadata combinations are checked once every metadata field has a valid type); an
empty list means the file is fine. Checked:

- the YAML parses (else file and line); ``include:`` files exist (merged as lm-eval merges them:
  local keys win; a shipped task can be included by name, e.g. ``include: qd_mqar``);
- unknown top-level fields (with the closest known name), wrong types of known fields;
- ``output_type`` is one lm-eval knows, and combinations it cannot run (no data source, no split,
  ``generation_kwargs`` on a non-generating task, ``multiple_choice`` without ``doc_to_choice``);
- ``!function`` references that cannot be imported;
- for tasks built on a qdelta generator (``custom_dataset: !function qdelta.tasks...build_*``):
  every ``metadata`` field (unknown names, types, impossible combinations such as more pairs than
  fit in the length or a vocabulary too small for the pairs) and ``{{field}}`` placeholders that
  name no field of the generated docs;
- a task name that shadows one of lm-eval's built-in tasks.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .docs import COMMON_FIELDS
from .spec import spec_problems

TASK_FIELDS: Dict[str, Tuple[type, ...]] = {
    "task": (str,),
    "task_alias": (str,),
    "tag": (str, list),
    "custom_dataset": ("function",),
    "dataset_path": (str,),
    "dataset_name": (str, type(None)),
    "dataset_kwargs": (dict,),
    "training_split": (str,),
    "validation_split": (str,),
    "test_split": (str,),
    "fewshot_split": (str,),
    "process_docs": ("function",),
    "doc_to_text": (str, int, "function"),
    "doc_to_target": (str, int, list, "function"),
    "doc_to_image": (str, list, "function"),
    "doc_to_audio": (str, list, "function"),
    "unsafe_code": (bool,),
    "doc_to_choice": (str, list, dict, "function"),
    "process_results": ("function",),
    "use_prompt": (str,),
    "description": (str,),
    "target_delimiter": (str,),
    "fewshot_delimiter": (str,),
    "fewshot_config": (dict,),
    "num_fewshot": (int,),
    "metric_list": (list,),
    "output_type": (str,),
    "generation_kwargs": (dict,),
    "repeats": (int,),
    "filter_list": (str, list),
    "should_decontaminate": (bool,),
    "doc_to_decontamination_query": (str,),
    "gen_prefix": (str,),
    "metadata": (dict,),
    "include": (str, list),
    "class": ("function",),
}
GROUP_FIELDS: Dict[str, Tuple[type, ...]] = {
    "group": (str,),
    "group_alias": (str,),
    "task": (str, list),
    "aggregate_metric_list": (list, dict),
    "metadata": (dict,),
    "include": (str, list),
}
OUTPUT_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until", "multiple_choice")
GENERATOR_MODULES = ("qdelta.tasks.synthetic", "qdelta.tasks.needle")  # each defines SPECS


@dataclasses.dataclass(frozen=True)
class FunctionRef:
    """A ``!function module.name`` value, kept unresolved."""

    spec: str
    base_dir: Path


def _loader(base_dir: Path):
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: FunctionRef(loader.construct_scalar(node), base_dir))
    return Loader


def load_task_yaml(path: Path, _seen: Optional[set] = None, problems: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parse ``path`` with ``!function`` kept as :class:`FunctionRef` and ``include:`` merged.

    ``include:`` takes a path relative to the file, an absolute path, or the name of a shipped task
    (:mod:`qdelta.tasks.includes`). With ``problems`` given, a missing or broken included file is
    appended there and skipped; otherwise it raises ``ValueError``.
    """
    from .includes import resolve_include

    path = Path(path).expanduser().resolve()
    seen = set() if _seen is None else _seen
    if path in seen:
        raise ValueError(f"include: cycle through {path}; remove the circular include")
    seen.add(path)
    try:
        with path.open("rb") as fh:
            cfg = yaml.load(fh, Loader=_loader(path.parent))  # noqa: S506 (SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ValueError(describe_yaml_error(path, err)) from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path.name}: expected a mapping of fields at the top level, got {type(cfg).__name__}")
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: Dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = resolve_include(path.parent, str(inc))
        try:
            if not inc_path.is_file():
                raise ValueError(
                    f"include: {inc!r} not found (looked for {inc_path}); give a path relative to "
                    f"{path.parent}, an absolute path or a shipped task name (`qdelta tasks list`)"
                )
            sub = load_task_yaml(inc_path, seen, problems)
        except ValueError as err:
            if problems is None:
                raise
            problems.append(str(err))
            continue
        sub.pop("task_list", None)
        merged.update(sub)
    merged.update(cfg)
    return merged


def yaml_syntax_error(path: Path) -> Optional[str]:
    """``"<path>:<line>: YAML syntax error: <problem>"`` when ``path`` does not parse, else None."""
    try:
        with Path(path).open("rb") as fh:
            yaml.load(fh, Loader=_loader(Path(path).parent))  # noqa: S506 (SafeLoader subclass)
    except yaml.YAMLError as err:
        return describe_yaml_error(path, err)
    return None


def describe_yaml_error(path: Path, err: "yaml.YAMLError") -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return f"{where}: YAML syntax error: {problem}" + (f" ({context})" if context else "")


def _resolve(ref: FunctionRef):
    module_name, _, name = ref.spec.rpartition(".")
    if not module_name:
        raise ValueError(f"!function {ref.spec!r} has no module; write module.function")
    local = ref.base_dir / (module_name.replace(".", "/") + ".py")
    if local.is_file():
        spec = importlib.util.spec_from_file_location(f"_qd_validate_{local.stem}", local)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        module = importlib.import_module(module_name)
    if not hasattr(module, name):
        close = difflib.get_close_matches(name, [n for n in dir(module) if not n.startswith("_")], n=1)
        hint = f"; did you mean {module_name}.{close[0]}?" if close else ""
        raise ValueError(f"!function {ref.spec}: module {module_name} has no {name!r}{hint}")
    return getattr(module, name)


def _type_ok(value: Any, allowed: Tuple) -> bool:
    for kind in allowed:
        if kind == "function":
            if isinstance(value, FunctionRef):
                return True
        elif kind is int and isinstance(value, bool):
            continue
        elif isinstance(value, kind):
            return True
    return False


def _names(allowed: Tuple) -> str:
    return " or ".join(
        "!function module.name"
        if k == "function"
        else {str: "string", int: "integer", bool: "true/false", list: "list", dict: "mapping", type(None): "null"}[k]
        for k in allowed
    )


def _check_fields(cfg: Dict[str, Any], table: Dict[str, Tuple], what: str, problems: List[str]) -> None:
    for key, value in cfg.items():
        if key not in table:
            close = difflib.get_close_matches(key, list(table), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "remove it or check the spelling"
            problems.append(f"{key}: unknown {what} field; {hint}")
        elif not _type_ok(value, table[key]):
            problems.append(f"{key}: expected {_names(table[key])}, got {type(value).__name__} {value!r}")


@functools.lru_cache(maxsize=1)
def builtin_task_names() -> frozenset:
    """Task names defined by lm-eval's own YAML files (found by a text scan, no imports)."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    names = set()
    pattern = re.compile(r"^task:\s*['\"]?([A-Za-z0-9_.\-]+)", re.MULTILINE)
    for p in root.rglob("*.yaml"):
        try:
            names.update(pattern.findall(p.read_text(encoding="utf-8", errors="ignore")))
        except OSError:
            continue
    return frozenset(names)


def _check_task(cfg: Dict[str, Any], problems: List[str]) -> None:
    _check_fields(cfg, TASK_FIELDS, "task", problems)
    name = cfg.get("task")
    if isinstance(name, str) and name in builtin_task_names():
        problems.append(
            f"task: '{name}' is also one of lm-eval's built-in tasks and would replace it; "
            f"rename it (our convention: prefix qd_ or your own)"
        )
    output_type = cfg.get("output_type", "generate_until")
    if output_type not in OUTPUT_TYPES:
        close = difflib.get_close_matches(str(output_type), OUTPUT_TYPES, n=1)
        problems.append(
            f"output_type: {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}"
            + (f"; did you mean '{close[0]}'?" if close else "")
        )
    if "custom_dataset" not in cfg and "dataset_path" not in cfg:
        problems.append(
            "custom_dataset: the task has no data; add custom_dataset: !function module.build "
            "(e.g. qdelta.tasks.synthetic.build_kv_recall) or dataset_path"
        )
    if not any(k in cfg for k in ("test_split", "validation_split")):
        problems.append("test_split: no evaluation split; add test_split: test (the qdelta generators make 'test')")
    if "generation_kwargs" in cfg and output_type != "generate_until":
        problems.append(
            f"generation_kwargs: only used with output_type: generate_until, but output_type is "
            f"{output_type}; remove generation_kwargs or change output_type"
        )
    gen = cfg.get("generation_kwargs")
    if isinstance(gen, dict):
        if "until" in gen and not (isinstance(gen["until"], list) and all(isinstance(u, str) for u in gen["until"])):
            problems.append(f"generation_kwargs.until: expected a list of strings, got {gen['until']!r}")
        if "max_gen_toks" in gen and (
            isinstance(gen["max_gen_toks"], bool) or not isinstance(gen["max_gen_toks"], int) or gen["max_gen_toks"] < 1
        ):
            problems.append(f"generation_kwargs.max_gen_toks: expected a positive integer, got {gen['max_gen_toks']!r}")
    if output_type == "multiple_choice" and "doc_to_choice" not in cfg:
        problems.append("doc_to_choice: output_type multiple_choice needs the list of choices; add doc_to_choice")
    metrics = cfg.get("metric_list")
    for i, metric in enumerate(metrics if isinstance(metrics, list) else []):
        if not isinstance(metric, dict) or "metric" not in metric:
            problems.append(
                f"metric_list[{i}]: each entry needs a 'metric' key, e.g. {{metric: acc, aggregation: "
                f"mean, higher_is_better: true}}"
            )
    for key, value in cfg.items():
        if isinstance(value, FunctionRef):
            try:
                _resolve(value)
            except (ImportError, ValueError) as err:
                problems.append(f"{key}: {err}")
    _check_generator(cfg, problems)


def _check_generator(cfg: Dict[str, Any], problems: List[str]) -> None:
    ref = cfg.get("custom_dataset")
    module_name, _, fn_name = ref.spec.rpartition(".") if isinstance(ref, FunctionRef) else ("", "", "")
    if module_name not in GENERATOR_MODULES:
        return
    specs = importlib.import_module(module_name).SPECS
    if fn_name not in specs:
        return  # reported as an import problem above
    spec_cls, extra_fields = specs[fn_name]
    metadata = cfg.get("metadata") or {}
    if not isinstance(metadata, dict):
        return
    problems.extend(spec_problems(spec_cls, metadata))
    doc_fields = set(COMMON_FIELDS) | set(extra_fields) | {"data_hash"}
    for key in ("doc_to_text", "doc_to_target", "gen_prefix"):
        value = cfg.get(key)
        if isinstance(value, str):
            for used in re.findall(r"{{\s*([A-Za-z_]\w*)", value):
                if used not in doc_fields:
                    close = difflib.get_close_matches(used, sorted(doc_fields), n=1)
                    hint = f"did you mean '{close[0]}'?" if close else f"fields: {', '.join(sorted(doc_fields))}"
                    problems.append(f"{key}: uses {{{{{used}}}}} but the generated docs have no field '{used}'; {hint}")
    if cfg.get("output_type") == "loglikelihood" and cfg.get("doc_to_target") == "{{answer}}":
        problems.append(
            "doc_to_target: with loglikelihood use {{target}} (it carries the separator before the "
            "answer); {{answer}} glues the answer to the prompt"
        )


def validate_task_file(path) -> List[str]:
    """Problems found in the task or group YAML at ``path`` (empty list: it is valid)."""
    path = Path(path)
    if not path.is_file():
        return [f"file: {path} does not exist; give the path of a .yaml task file"]
    problems: List[str] = []
    try:
        cfg = load_task_yaml(path, problems=problems)
    except ValueError as err:  # the file itself does not parse: nothing more to check
        return [f"{err}; check indentation and quoting" if "YAML syntax error" in str(err) else str(err)]
    if "group" in cfg:
        _check_fields(cfg, GROUP_FIELDS, "group", problems)
    elif "task" in cfg:
        _check_task(cfg, problems)
    elif path.name.startswith("_"):
        _check_fields(cfg, TASK_FIELDS, "task", problems)  # a shared fragment pulled in by include:
    else:
        problems.append("task: the file names neither a task (task: NAME) nor a group (group: NAME); add one")
    return problems
