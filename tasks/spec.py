"""Typed task parameters: YAML ``metadata:`` -> a validated dataclass, errors naming the field.

Every generator declares its tunables as a dataclass whose fields have simple types
(``int``, ``float``, ``str``, ``bool``, ``List[int]``, ``List[float]``, ``List[List[int]]``)
and an optional ``check()`` method for cross-field rules (it raises :class:`SpecError`).
lm-eval passes the whole ``metadata`` dict to the generator, plus keys of its own (``version``,
``config_source``, the model's arguments), so at run time unknown keys are ignored;
``qdelta tasks validate`` parses the file's own ``metadata`` with ``strict=True`` instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Dict, List, Mapping, Type, TypeVar

T = TypeVar("T")

# keys lm-eval or the harness put into metadata; never an error
RESERVED_KEYS = frozenset({"version", "config_source", "description", "tokenizer", "pretrained"})


class SpecError(ValueError):
    """A bad task parameter; ``field`` names it (``metadata.<name>``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _coerce(value: Any, tp, field: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (list, List):
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            # a single item where a list is expected is accepted as a one-item list
            value = [value]
        return [_coerce(v, inner, f"{field}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(field, f"expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(
                field, f"expected an integer, got {type(value).__name__} {value!r}; write a whole number without quotes"
            )
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(field, f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(field, f"expected a string, got {type(value).__name__} {value!r}; quote it")
        return value
    raise TypeError(f"unsupported spec type {tp!r} for {field}")  # internal: spec authors only


def spec_fields(cls) -> Dict[str, Any]:
    """``{name: type}`` of a spec dataclass (forward references resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_spec(
    cls: Type[T], metadata: Mapping[str, Any] | None, *, strict: bool = False, prefix: str = "metadata"
) -> T:
    """Build ``cls`` from ``metadata``; unknown keys raise only when ``strict``.

    Raises :class:`SpecError` (a ``ValueError``) naming ``metadata.<field>`` with the fix.
    """
    metadata = dict(metadata or {})
    types = spec_fields(cls)
    if strict:
        for key in metadata:
            if key not in types and key not in RESERVED_KEYS:
                close = difflib.get_close_matches(key, list(types), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(sorted(types))}"
                raise SpecError(f"{prefix}.{key}", f"unknown field; {hint}")
    kwargs = {name: _coerce(metadata[name], tp, f"{prefix}.{name}") for name, tp in types.items() if name in metadata}
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except SpecError as err:
            if err.field.startswith(prefix + "."):
                raise
            raise SpecError(f"{prefix}.{err.field}", str(err).split(": ", 1)[1]) from None
    return obj


def spec_problems(cls, metadata: Mapping[str, Any] | None, prefix: str = "metadata") -> List[str]:
    """Every problem of ``metadata`` for ``cls``: each unknown and each wrongly typed field, then
    (when those are fine) the first impossible combination its ``check`` finds."""
    metadata = dict(metadata or {})
    types = spec_fields(cls)
    problems = []
    for key in metadata:
        if key not in types and key not in RESERVED_KEYS:
            close = difflib.get_close_matches(key, list(types), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(sorted(types))}"
            problems.append(f"{prefix}.{key}: unknown field; {hint}")
    for name, tp in types.items():
        if name in metadata:
            try:
                _coerce(metadata[name], tp, f"{prefix}.{name}")
            except SpecError as err:
                problems.append(str(err))
    if not problems:
        try:
            parse_spec(cls, metadata, strict=True, prefix=prefix)
        except SpecError as err:
            problems.append(str(err))
    return problems


def require(cond: bool, field: str, message: str) -> None:
    """Raise :class:`SpecError` for ``field`` unless ``cond``."""
    if not cond:
        raise SpecError(field, message)
