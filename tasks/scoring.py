"""``process_results`` of every recall task: the headline ``acc`` plus one metric per slice.

Returns ``{"acc": x, "acc_<slice>": x}`` for each doc, where ``x`` is in [0, 1] and ``<slice>`` is
the doc's ``slice`` field (``L64_K4``, ``len1024_depth25``...). lm-eval averages each key over the
docs that report it, so ``acc_L64_K4`` is the accuracy on that slice alone. (lm-eval 0.4.13 logs a
warning for metrics not listed in the YAML's ``metric_list`` and for metrics scored on fewer docs
than the task has; both are expected here.)

Scoring by request type:
- log-likelihood: 1 when the target is the model's greedy continuation (``is_greedy``);
- generation, ``match: exact``: 1 when the first generated word, stripped of surrounding
  punctuation, equals the answer;
- generation, ``match: contains``: 1 when the answer appears in the generation, case-insensitive;
- generation, ``match: all`` (the RULER tasks): RULER's ``string_match_all``, the share of the
  doc's ``outputs`` found in the generation (stripped, control characters made newlines),
  case-insensitive.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List

PUNCTUATION = ".,;:!?\"'()[]"


def first_word(text: str) -> str:
    """The first whitespace-separated word of ``text`` without surrounding punctuation."""
    words = text.split()
    return words[0].strip(PUNCTUATION) if words else ""


def score(doc: Dict[str, Any], result: Any) -> float:
    """The score in [0, 1] of one request's result (``(loglikelihood, is_greedy)`` or generated text)."""
    if isinstance(result, (tuple, list)):
        return float(bool(result[1]))
    if not isinstance(result, str):
        raise TypeError(
            f"expected a (loglikelihood, is_greedy) pair or a generated string, got {type(result).__name__}"
        )
    if doc["match"] == "all":
        pred = re.sub(r"[\x00-\x1f]", "\n", result.strip()).strip().lower()
        return sum(ref.lower() in pred for ref in doc["outputs"]) / len(doc["outputs"])
    if doc["match"] == "contains":
        return float(doc["answer"].lower() in result.lower())
    return float(first_word(result) == doc["answer"])


def process_results(doc: Dict[str, Any], results: List[Any]) -> Dict[str, float]:
    """lm-eval hook: ``{"acc": x, "acc_<slice>": x}``."""
    value = score(doc, results[0])
    return {"acc": value, f"acc_{doc['slice']}": value}
