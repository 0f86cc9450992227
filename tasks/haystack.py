"""Haystacks for needle tasks and the length unit they are measured in.

Lengths are counted in the evaluated model's tokens when ``metadata["tokenizer"]`` names a
tokenizer (a local folder or a cached hub name, loaded by ``transformers.AutoTokenizer``
offline), otherwise in whitespace-separated words; each doc records which in ``length_unit``.

Two haystacks, both lists of sentences that are consumed in order (wrapping around):

- ``noise``: a fixed cycle of short plain sentences (RULER S-NIAH-1's kind of filler).
- ``text``: real English prose: Genesis and Exodus of the King James Version (public domain; see
  ``tasks/data/SOURCES.md``), split into sentences, starting at a seeded position.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Callable, List, Optional, Sequence

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
HAYSTACK_FILE = DATA_DIR / "kjv_genesis_exodus.txt"

NOISE_SENTENCES = (
    "The river runs past the old mill.",
    "Clouds drift slowly over the hills.",
    "A bell rings in the distant town.",
    "The path turns left at the stone wall.",
    "Evening light falls across the fields.",
)


class LengthCounter:
    """Counts a text's length in tokens (``tokenizer`` given) or whitespace words."""

    def __init__(self, tokenizer: Optional[str] = None):
        self.tokenizer_name = tokenizer
        self._tok = _load_tokenizer(tokenizer) if tokenizer else None
        self.unit = f"tokens:{tokenizer}" if tokenizer else "words"
        if tokenizer is None:
            log.info("no metadata.tokenizer: context lengths are counted in whitespace words")

    def __call__(self, text: str) -> int:
        if self._tok is None:
            return len(text.split())
        return len(self._encode(text))

    def many(self, texts: Sequence[str]) -> List[int]:
        if self._tok is None:
            return [len(t.split()) for t in texts]
        return [len(ids) for ids in self._encode(list(texts))]

    def _encode(self, text):
        try:
            return self._tok(text, add_special_tokens=False)["input_ids"]
        except Exception as err:  # the tokenizers library raises a bare Exception for unknown words
            raise ValueError(
                f"metadata.tokenizer: {self.tokenizer_name!r} cannot encode the task's English text "
                f"({err}); this model's vocabulary cannot read text tasks (e.g. a token-level MQAR "
                f"checkpoint: evaluate it with qdelta.tasks.mqar.evaluate_mqar instead)"
            ) from err


@functools.lru_cache(maxsize=4)
def _load_tokenizer(name: str):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # transformers raises OSError, ValueError, ... for a bad name or folder
        raise ValueError(
            f"metadata.tokenizer: cannot load tokenizer {name!r} offline ({err}); pass a "
            f"folder that holds tokenizer files (the checkpoint folder), or drop the key "
            f"to count whitespace words"
        ) from err


@functools.lru_cache(maxsize=1)
def text_sentences() -> List[str]:
    """The shipped English text split into sentences (ends of ``.``, ``;``, ``:``, ``?``, ``!``)."""
    text = HAYSTACK_FILE.read_text(encoding="utf-8")
    parts = re.split(r"(?<=[.;:?!])\s+", " ".join(text.split()))
    return [p for p in parts if p]


def sentences(kind: str, start: int = 0) -> Callable[[int], str]:
    """``f(i)`` = the i-th sentence of haystack ``kind`` ('noise' or 'text') from offset ``start``."""
    if kind == "noise":
        pool: Sequence[str] = NOISE_SENTENCES
    elif kind == "text":
        pool = text_sentences()
    else:
        raise ValueError(f"haystack must be 'noise' or 'text', got {kind!r}")
    return lambda i: pool[(start + i) % len(pool)]


def pool_size(kind: str) -> int:
    return len(NOISE_SENTENCES) if kind == "noise" else len(text_sentences())


def fill_to_length(
    count: LengthCounter, render: Callable[[List[str]], str], next_sentence: Callable[[int], str], budget: int
) -> List[str]:
    """The longest run of haystack sentences ``s`` (from ``next_sentence(0)`` on) with ``count(render(s)) <= budget``.

    ``render`` builds the whole prompt from the sentences (template, needle and question included),
    so the budget holds for the exact text the model reads. A guess from per-sentence counts is
    refined by exact counts of whole prompts: a galloping search then bisection, about 2 log2(error)
    tokenizations per prompt.
    """
    base = count(render([]))
    if base > budget:
        raise ValueError(
            f"the prompt without any haystack is already {base} {count.unit} long, more than the "
            f"context length {budget}; raise metadata.context_lengths"
        )
    guess, used = 0, base
    while True:
        batch = [next_sentence(guess + j) for j in range(64)]
        sizes = count.many(batch)
        fitted = 0
        for n in sizes:
            if used + n > budget:
                break
            used += n
            fitted += 1
        guess += fitted
        if fitted < len(batch):
            break

    def size(m: int) -> int:
        return count(render([next_sentence(i) for i in range(m)]))

    actual = size(guess)
    if guess and actual > budget:  # sentences alone tokenize differently from running text: rescale once
        guess = int(guess * (budget - base) / (actual - base))
    m = _largest_fitting(lambda k: size(k) <= budget, guess)
    return [next_sentence(i) for i in range(m)]


def _largest_fitting(fits: Callable[[int], bool], guess: int) -> int:
    """Largest ``m`` with ``fits(m)`` for a monotone ``fits`` with ``fits(0)`` true, searched from ``guess``."""
    if fits(guess):
        lo, step = guess, 1
        while fits(lo + step):
            lo += step
            step *= 2
        hi = lo + step
    else:
        hi, step = guess, 1
        while hi - step > 0 and not fits(hi - step):
            hi -= step
            step *= 2
        lo = max(hi - step, 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
