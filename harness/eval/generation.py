"""What ``--model qdelta`` reads from a task's generation arguments and a checkpoint's end tokens.

Both follow lm-eval's HFLM (lm-eval 0.4.13, transformers 5.x), so scores can be set beside
``--model hf`` ones:

- ``greedy_settings``: HFLM normalises a task's ``generation_kwargs`` with lm-eval's
  ``normalize_gen_kwargs`` (``max_new_tokens`` / ``max_tokens`` / ``max_completion_tokens`` fold
  into ``max_gen_toks``; ``temperature`` > 0 without ``do_sample`` means sampling; ``do_sample:
  false`` means greedy whatever the temperature) and passes the rest to transformers' ``generate``.
  Greedy decoding is all we implement: a request for sampling or beam search is refused with the
  option that asks for it and the fix, ``top_p`` / ``top_k`` are accepted and, as in ``generate``
  with ``do_sample=False``, have no effect, and any other key is refused by name.
- ``eos_token_ids``: HFLM adds the tokenizer's end-of-text string to the stop strings and
  ``generate`` stops at the generation config's ``eos_token_id`` (an id or a list): the folder's
  ``generation_config.json`` when there is one, else the one transformers derives from
  ``config.json``. We stop at the union of the tokenizer's, ``config.json``'s and
  ``generation_config.json``'s ids (the same set unless the two files disagree).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional, Tuple

from lm_eval.models.utils import normalize_gen_kwargs

log = logging.getLogger(__name__)

TOKEN_BUDGET_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
GREEDY_KEYS = ("until", "do_sample", "temperature", "top_p", "top_k", "num_beams")
ACCEPTED_GEN_KWARGS = TOKEN_BUDGET_KEYS + GREEDY_KEYS


def _number(where: str, name: str, value, kind=float) -> float:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}generation_kwargs {name}={value!r} is not a number; e.g. {name}=0") from None


def greedy_settings(gen_kwargs: Optional[dict], default_max_gen_toks: int, task: Optional[str] = None):
    """A task's ``generation_kwargs`` -> ``(until, max_gen_toks)`` for greedy decoding, or ValueError.

    Args:
        gen_kwargs: the request's generation arguments (a task's ``generation_kwargs`` updated by
            ``--gen_kwargs``), as lm-eval passes them; None means ``{}``.
        default_max_gen_toks: the budget when none of :data:`TOKEN_BUDGET_KEYS` is given.
        task: named in the errors when given.
    Returns:
        ``until`` (list of stop strings, without the end-of-text string) and ``max_gen_toks`` (int).

    >>> greedy_settings({"until": ["\\n"], "do_sample": False, "temperature": 0.7}, 256)
    (['\\n'], 256)
    """
    where = f"task {task}: " if task else ""
    gen_kwargs = dict(gen_kwargs or {})
    unknown = sorted(set(gen_kwargs) - set(ACCEPTED_GEN_KWARGS))
    if unknown:
        raise ValueError(
            f"{where}generation_kwargs {', '.join(unknown)}: not implemented by --model qdelta (it reads "
            f"{', '.join(ACCEPTED_GEN_KWARGS)}); drop it from the task's generation_kwargs, or use --model hf"
        )
    for name in ("temperature", "top_p", "top_k", "num_beams") + TOKEN_BUDGET_KEYS:
        if gen_kwargs.get(name) is not None:
            _number(where, name, gen_kwargs[name])
    kwargs = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks)
    if kwargs["do_sample"]:
        asked = ", ".join(f"{k}={gen_kwargs[k]!r}" for k in ("do_sample", "temperature") if k in gen_kwargs)
        raise ValueError(
            f"{where}sampling asked for (generation_kwargs {asked}); --model qdelta decodes greedily only: pass "
            "--gen_kwargs do_sample=false (greedy, what temperature=0 means), or sample with --model hf"
        )
    beams = int(float(kwargs.get("num_beams") or 1))
    if beams != 1:
        raise ValueError(
            f"{where}generation_kwargs num_beams={beams}: beam search is not implemented by --model qdelta; "
            "pass --gen_kwargs num_beams=1 (greedy), or use --model hf"
        )
    ignored = [k for k in ("top_p", "top_k") if kwargs.get(k) is not None]
    if ignored:
        log.info("%sgreedy decoding: %s have no effect (as in transformers' generate)", where, ", ".join(ignored))
    budget = int(kwargs["max_gen_toks"])
    if budget < 0:
        raise ValueError(f"{where}generation_kwargs max_gen_toks={budget} must be >= 0; e.g. max_gen_toks=32")
    return list(kwargs["until"]), budget


def _ids(value) -> List[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def eos_token_ids(tokenizer, config, folder=None, generation_config=None) -> Tuple[int, ...]:
    """The token ids generation stops at (sorted): tokenizer, ``config.eos_token_id`` and the
    generation config's, from ``folder/generation_config.json`` when it exists, else from the
    ``generation_config`` object given (a transformers model's own)."""
    ids = set(_ids(getattr(tokenizer, "eos_token_id", None))) | set(_ids(getattr(config, "eos_token_id", None)))
    file = Path(str(folder)) / "generation_config.json" if isinstance(folder, (str, Path)) else None
    if file is not None and file.is_file():
        try:
            raw = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: not valid JSON ({err.msg}, line {err.lineno}); fix or remove the file") from None
        ids |= set(_ids(raw.get("eos_token_id")))
    elif generation_config is not None:
        ids |= set(_ids(getattr(generation_config, "eos_token_id", None)))
    return tuple(sorted(ids))
