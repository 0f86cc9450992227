"""Two reference lm-eval models that bound every recall task, for tests and sanity checks.

- ``qd_oracle`` (exact recall): reads the prompt the way a perfect retriever would. Each recall
  doc carries ``answer_pattern``, a regular expression built from the queried key and the task's
  pair format (``"special magic numbers for quiet-harbor is: (\\d+)"``); the oracle searches the
  *prompt it was given* for it and answers with what it finds. It scores 100 % exactly when the
  answer is present in the prompt and findable by its key, so it catches truncated haystacks,
  lost needles and wrong targets.
- ``qd_random`` (chance): answers with a uniformly random word of the prompt (punctuation
  stripped), seeded by the prompt and ``seed``. Its expected accuracy on a doc is the share of the
  prompt's words that equal the answer; on log-likelihood requests it says ``is_greedy`` when the
  continuation is that word. Rolling log-likelihood: uniform over bytes (perplexity 256 per byte).

Importing this module registers both names (``lm_eval.models`` is imported first so that the
built-in models stay registered). Use with ``lm_eval.simple_evaluate(model="qd_oracle", ...)``.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any, Dict, List, Optional, Tuple

import lm_eval.models  # noqa: F401  (import before registering, or built-in models vanish)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .scoring import PUNCTUATION


def _doc_of(request) -> Dict[str, Any]:
    doc = getattr(request, "doc", None)
    if not isinstance(doc, dict) or "answer_pattern" not in doc:
        raise ValueError(
            "qd_oracle reads recall docs with an 'answer_pattern' field (the qd_ recall tasks and "
            "tasks built on qdelta.tasks generators); this request's doc has none"
        )
    return doc


@register_model("qd_oracle")
class OracleLM(LM):
    """Exact recall: finds the answer in the prompt by the doc's ``answer_pattern``."""

    def __init__(self, **kwargs: Any) -> None:  # device, batch_size... from the CLI are ignored
        super().__init__()

    @staticmethod
    def recall(context: str, doc: Dict[str, Any]) -> Optional[str]:
        if doc.get("match") == "all":  # RULER tasks: every value of every queried key
            return " ".join(re.findall(doc["answer_pattern"], context)) or None
        match = re.search(doc["answer_pattern"], context)
        return match.group(1) if match else None

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args[0], request.args[1]
            answer = self.recall(context, _doc_of(request))
            greedy = answer is not None and continuation.strip() == answer
            out.append((0.0 if greedy else -50.0, greedy))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        return [" " + (self.recall(r.args[0], _doc_of(r)) or "") for r in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        raise NotImplementedError("qd_oracle answers recall tasks only; it has no perplexity")


@register_model("qd_random")
class RandomLM(LM):
    """Chance: a uniformly random word of the prompt, seeded by the prompt and ``seed``."""

    def __init__(self, seed: int = 1234, **kwargs: Any) -> None:
        super().__init__()
        self.seed = int(seed)

    def guess(self, context: str) -> str:
        words = context.split()
        if not words:
            return ""
        return random.Random(f"{self.seed}:{context}").choice(words).strip(PUNCTUATION)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args[0], request.args[1]
            n = max(len(context.split()), 1)
            greedy = continuation.strip() == self.guess(context)
            out.append((-math.log(n) if greedy else -math.log(n) - 10.0, greedy))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        return [" " + self.guess(r.args[0]) for r in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        return [-len(r.args[0].encode("utf-8")) * math.log(256.0) for r in requests]


def chance_of(doc: Dict[str, Any], context: str) -> float:
    """Expected accuracy of ``qd_random`` on one doc: share of prompt words equal to the answer."""
    words = [w.strip(PUNCTUATION) for w in context.split()]
    return sum(w == doc["answer"] for w in words) / max(len(words), 1)
