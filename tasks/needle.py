"""Needle-in-a-haystack generators: RULER S-NIAH-1/2/3 structure and the passkey task.

S-NIAH (``build_niah``): one needle "One of the special magic {numbers} for {key} is: {value}."
is placed at a depth of a haystack so that the whole prompt is ``context_length`` long (in the
evaluated model's tokens when ``metadata.tokenizer`` is set, else whitespace words), then the
question asks for the value of the key. Depths are spread evenly over [0, 1] (0 = right after the
instruction, 1 = right before the question). The three RULER variants differ only in
``haystack`` (noise / text) and ``value_kind`` (number / uuid). Scored by RULER's rule: the answer
appears in the generation (case-insensitive).

Passkey (``build_passkey``): a number stated once inside filler; the question ends with
"The pass key is" and the number is scored by greedy log-likelihood.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List

from .docs import to_dataset
from .haystack import LengthCounter, fill_to_length, pool_size, sentences
from .ruler_niah import RULER_FIELDS, RulerNIAHSpec, build_ruler_niah
from .spec import parse_spec, require
from .symbols import KINDS, capacity, sample_distinct

NIAH_INSTRUCTION = (
    "Somewhere in the following text a special magic {noun} is hidden. Read the text carefully "
    "and remember it; you will be asked about it at the end.\n"
)
NIAH_NEEDLE = "One of the special magic {nouns} for {key} is: {value}."
NIAH_QUESTION = (
    "\nWhat is the special magic {noun} for {key} mentioned in the text above? "
    "The special magic {noun} for {key} mentioned in the text above is"
)
NOUNS = {"number": ("number", "numbers"), "uuid": ("uuid", "uuids"), "word": ("word", "words")}
VALUE_PATTERNS = {"number": r"\d+", "uuid": r"[0-9a-f-]{36}", "word": r"[a-z]+-[a-z]+"}

PASSKEY_INSTRUCTION = "A pass key is hidden in the long text below. Find it and keep it in mind.\n"
PASSKEY_NEEDLE = "The pass key is {value}. Keep it in mind: the pass key is {value}."
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"


def spread_depths(num_depths: int) -> List[float]:
    """``num_depths`` depths evenly spread over [0, 1] (one depth: 0.5)."""
    if num_depths == 1:
        return [0.5]
    return [i / (num_depths - 1) for i in range(num_depths)]


@dataclass
class NIAHSpec:
    seed: int = 0
    haystack: str = "noise"  # noise (S-NIAH-1) | text (S-NIAH-2/3)
    key_kind: str = "word"
    value_kind: str = "number"  # number (S-NIAH-1/2) | uuid (S-NIAH-3) | word
    value_digits: int = 7
    context_lengths: List[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384])
    num_depths: int = 5
    num_examples: int = 1  # per (context_length, depth)
    match: str = "contains"

    def check(self) -> None:
        _check_common(self)
        require(
            self.key_kind in KINDS and self.key_kind != "letter",
            "key_kind",
            f"must be one of word, number, uuid, syllable; got {self.key_kind!r}",
        )
        require(self.value_kind in NOUNS, "value_kind", f"must be number, uuid or word; got {self.value_kind!r}")
        require(self.match in ("exact", "contains"), "match", f"must be exact or contains; got {self.match!r}")


@dataclass
class PasskeySpec:
    seed: int = 0
    haystack: str = "noise"
    digits: int = 5
    context_lengths: List[int] = field(default_factory=lambda: [1024, 2048, 4096])
    num_depths: int = 5
    num_examples: int = 1  # per (context_length, depth)

    def check(self) -> None:
        _check_common(self)
        require(1 <= self.digits <= 18, "digits", f"must be in 1..18, got {self.digits}")


def _check_common(spec) -> None:
    require(spec.haystack in ("noise", "text"), "haystack", f"must be noise or text; got {spec.haystack!r}")
    require(len(spec.context_lengths) > 0, "context_lengths", "is empty; give e.g. [1024, 2048]")
    for i, n in enumerate(spec.context_lengths):
        require(
            n >= 64, f"context_lengths[{i}]", f"{n} is too short for the instruction, needle and question; use >= 64"
        )
    require(spec.num_depths >= 1, "num_depths", f"needs >= 1, got {spec.num_depths}")
    require(spec.num_examples >= 1, "num_examples", f"needs >= 1, got {spec.num_examples}")
    cells = len(spec.context_lengths) * spec.num_depths * spec.num_examples
    digits = getattr(spec, "value_digits", getattr(spec, "digits", 7))
    kind = getattr(spec, "value_kind", "number")
    require(
        cells <= capacity(kind, digits) if kind in ("number", "word") else True,
        "num_examples",
        f"{cells} docs need distinct values but {kind} with {digits} digits has {capacity(kind, digits)}; "
        f"use more digits or fewer examples",
    )


def _place(instruction: str, needle: str, question: str, depth: float) -> Callable[[List[str]], str]:
    def render(hay: List[str]) -> str:
        pos = round(depth * len(hay))
        return instruction + " ".join(hay[:pos] + [needle] + hay[pos:]) + question

    return render


def _needle_docs(spec, metadata: Dict[str, Any], make: Callable[[random.Random], Dict[str, str]]) -> List[Dict]:
    count = LengthCounter(metadata.get("tokenizer") or None)
    rng = random.Random(spec.seed)
    docs: List[Dict[str, Any]] = []
    for length in spec.context_lengths:
        for depth in spread_depths(spec.num_depths):
            for n in range(spec.num_examples):
                parts = make(rng)
                start = rng.randrange(pool_size(spec.haystack))
                render = _place(parts["instruction"], parts["needle"], parts["question"], depth)
                hay = fill_to_length(count, render, sentences(spec.haystack, start), length)
                context = render(hay)
                docs.append(
                    dict(
                        context=context,
                        target=" " + parts["answer"],
                        answer=parts["answer"],
                        answer_pattern=parts["pattern"],
                        match=parts["match"],
                        slice=f"len{length}_depth{round(depth * 100)}",
                        length_unit=count.unit,
                        context_length=length,
                        depth=depth,
                        length=count(context),
                        example=n,
                    )
                )
    return docs


def build_niah(**metadata: Any):
    """RULER-style single-needle task (S-NIAH-1/2/3 by ``haystack`` and ``value_kind``)."""
    spec = parse_spec(NIAHSpec, metadata)
    noun, nouns = NOUNS[spec.value_kind]
    used: set = set()

    def make(rng: random.Random) -> Dict[str, str]:
        key = sample_distinct(spec.key_kind, 1, rng)[0]
        value = sample_distinct(spec.value_kind, 1, rng, digits=spec.value_digits, exclude=frozenset(used))[0]
        used.add(value)
        return dict(
            instruction=NIAH_INSTRUCTION.format(noun=noun),
            needle=NIAH_NEEDLE.format(nouns=nouns, key=key, value=value),
            question=NIAH_QUESTION.format(noun=noun, key=key),
            answer=value,
            match=spec.match,
            pattern=re.escape(f"special magic {nouns} for {key} is: ") + f"({VALUE_PATTERNS[spec.value_kind]})",
        )

    return to_dataset(_needle_docs(spec, metadata, make), f"niah_{spec.haystack}_{spec.value_kind}")


def build_passkey(**metadata: Any):
    """Passkey retrieval: a ``digits``-digit number hidden in filler, asked for at the end."""
    spec = parse_spec(PasskeySpec, metadata)

    def make(rng: random.Random) -> Dict[str, str]:
        value = sample_distinct("number", 1, rng, digits=spec.digits)[0]
        return dict(
            instruction=PASSKEY_INSTRUCTION,
            needle=PASSKEY_NEEDLE.format(value=value),
            question=PASSKEY_QUESTION,
            answer=value,
            match="exact",
            pattern=r"The pass key is (\d+)\.",
        )

    return to_dataset(_needle_docs(spec, metadata, make), "passkey")


# generator -> (its parameter spec, the doc fields it adds to docs.COMMON_FIELDS); read by validate.py
SPECS = {
    "build_niah": (NIAHSpec, ("context_length", "depth", "length", "example")),
    "build_passkey": (PasskeySpec, ("context_length", "depth", "length", "example")),
    "build_ruler_niah": (RulerNIAHSpec, RULER_FIELDS),
}

__all__ = ["build_niah", "build_passkey", "build_ruler_niah", "SPECS"]
