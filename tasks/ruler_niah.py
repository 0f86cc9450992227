"""RULER's needle-in-a-haystack family as lm-eval's ``ruler`` tasks build it, from our own code.

One generator, :func:`build_ruler_niah`, makes S-NIAH-1/2/3, MK-NIAH-1/2/3, MV-NIAH and MQ-NIAH
by its parameters (``tasks/recall/qd_niah_*.yaml``). For the same haystack text, tokenizer and
seed it draws what lm-eval 0.4.13's ``lm_eval/tasks/ruler/prepare_niah.py`` draws, in the same
order from one Mersenne-Twister stream (lm-eval's global ``random`` after
``simple_evaluate``'s ``random.seed(seed)``; here ``random.Random(seed)``), so the prompts are
equal character for character (``tests/tasks/test_ruler_parity.py``):

- keys and values: ``words`` = adjective-noun pairs of wonderwords' lists (RULER's), ``numbers``
  = 7-digit integers, ``uuids`` = version-4 UUIDs from 128 random bits;
- the needles "One of the special magic {values} for {key} is: {value}.", shuffled with
  ``random.Random(42)``, at depths drawn from RULER's 40 depths ``round(linspace(0, 100, 40))``
  (essay) or at random sentence slots (noise, needle haystacks);
- haystacks: ``noise`` (RULER's "repeat": five fixed sentences repeated, one copy a line),
  ``needle`` (distractor needles with other keys, one a line), ``essay`` (an essay file's words,
  split into sentences, needles between sentences);
- sizing: the haystack grows in RULER's steps (5 units below 4K, 25 above, 500 essay words)
  until the prompt plus the 128 generation tokens reaches the context length, counted with
  the evaluated model's tokenizer (special tokens included, as lm-eval counts);
- the question template, its singular form, and the answer prefix ``gen_prefix``.

Scoring is RULER's ``string_match_all``: the share of the expected values found in the
generation (case-insensitive, after stripping and replacing control characters).

Essays: ``haystack_file`` names a local JSON file in RULER's format (``{"text": "..."}``, e.g.
RULER's ``PaulGrahamEssays.json``); without one the shipped public-domain text is used, and each
doc's ``haystack_source`` says so. Sentences are split by nltk's punkt (lm-eval's splitter) when
its data is installed, otherwise by a regular expression; each doc records which in
``sentence_splitter``.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from .docs import to_dataset
from .haystack import HAYSTACK_FILE
from .spec import parse_spec, require

log = logging.getLogger(__name__)

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's round(linspace(0, 100, 40)); exact halves never occur
NEEDLE_SHUFFLE_SEED = 42
KINDS = ("words", "numbers", "uuids")
HAYSTACKS = ("noise", "needle", "essay")
VALUE_PATTERNS = {"numbers": r"\d+", "uuids": r"[0-9a-f-]{36}", "words": r"[a-z]+-[a-z]+"}
SUBSTITUTE_NOTE = "substitute for RULER's Paul Graham essays: tasks/data/kjv_genesis_exodus.txt (KJV, public domain)"


@dataclass
class RulerNIAHSpec:
    seed: int = 0  # lm-eval's default --seed: random.seed(0) before the tasks are built
    haystack: str = "noise"  # noise | needle | essay
    haystack_file: str = ""  # essay: a RULER-format JSON file {"text": ...}; empty = the shipped text
    key_kind: str = "words"  # words | numbers | uuids
    value_kind: str = "numbers"
    num_needle_k: int = 1
    num_needle_v: int = 1
    num_needle_q: int = 1
    context_lengths: List[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192])
    num_samples: int = 500  # per context length (lm-eval's 500)
    tokens_to_generate: int = 128

    def check(self) -> None:
        require(self.haystack in HAYSTACKS, "haystack", f"must be noise, needle or essay; got {self.haystack!r}")
        require(
            not self.haystack_file or self.haystack == "essay",
            "haystack_file",
            "is read only with haystack: essay",
        )
        for name in ("key_kind", "value_kind"):
            value = getattr(self, name)
            require(value in KINDS, name, f"must be words, numbers or uuids; got {value!r}")
        for name in ("num_needle_k", "num_needle_v", "num_needle_q", "num_samples"):
            require(getattr(self, name) >= 1, name, f"needs >= 1, got {getattr(self, name)}")
        require(self.tokens_to_generate >= 0, "tokens_to_generate", f"needs >= 0, got {self.tokens_to_generate}")
        require(len(self.context_lengths) > 0, "context_lengths", "is empty; give e.g. [1024, 2048, 4096, 8192]")
        for i, n in enumerate(self.context_lengths):
            require(
                n > self.tokens_to_generate + 64,
                f"context_lengths[{i}]",
                f"{n} leaves no room for the template and {self.tokens_to_generate} generated tokens",
            )


@functools.lru_cache(maxsize=1)
def ruler_words() -> Tuple[str, ...]:
    """RULER's key words: every adjective-noun pair of wonderwords' lists, sorted."""
    try:
        import wonderwords
    except ImportError as err:
        raise ImportError(
            "the RULER needle tasks draw words from wonderwords' lists: pip install 'qdelta[ruler]' "
            "(or pip install wonderwords)"
        ) from err
    categories = wonderwords.RandomWord()._categories
    return tuple(sorted({f"{a}-{n}" for a in categories["adjectives"] for n in categories["nouns"]}))


def _draw(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return rng.choice(ruler_words())
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@functools.lru_cache(maxsize=4)
def essay_words(path: str) -> Tuple[str, ...]:
    """The words of a RULER-format essay file (``{"text": ...}``), or of the shipped text for ``""``."""
    if not path:
        text = HAYSTACK_FILE.read_text(encoding="utf-8")
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ValueError(f"metadata.haystack_file: {path!r} is not a file; give RULER's PaulGrahamEssays.json")
        try:
            text = json.loads(file.read_text(encoding="utf-8"))["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f'metadata.haystack_file: {path!r} is not RULER\'s format, a JSON object {{"text": "..."}} ({err})'
            ) from None
    return tuple(re.sub(r"\s+", " ", text).split(" "))


@functools.lru_cache(maxsize=1)
def sentence_splitter() -> Tuple[str, Callable[[str], List[str]]]:
    """nltk's punkt (what lm-eval uses) when its data is installed, else a regular expression."""
    try:
        import nltk

        nltk.data.find("tokenizers/punkt_tab")
        return "nltk.sent_tokenize", nltk.sent_tokenize
    except (ImportError, LookupError):
        log.warning("nltk's punkt_tab data is not installed: essay sentences are split by a regular expression")
        return "regex", lambda text: re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])", text)


@functools.lru_cache(maxsize=64)
def _split(text: str) -> List[str]:
    return sentence_splitter()[1](text)


def render(spec: RulerNIAHSpec, num_haystack: int, rng: random.Random) -> Tuple[str, List[str], str, List[int]]:
    """One prompt with ``num_haystack`` haystack units: (prompt, answers, query, needle depths in %)."""
    num_k = max(spec.num_needle_k, spec.num_needle_q)
    kind_v = spec.value_kind
    keys, values, needles = [], [], []
    for _ in range(num_k):
        keys.append(_draw(spec.key_kind, rng))
        values.append([])
        for _ in range(spec.num_needle_v):
            values[-1].append(_draw(kind_v, rng))
            needles.append(NEEDLE.format(type_needle_v=kind_v, key=keys[-1], value=values[-1][-1]))
    random.Random(NEEDLE_SHUFFLE_SEED).shuffle(needles)

    if spec.haystack == "essay":
        sents = _split(" ".join(essay_words(spec.haystack_file)[:num_haystack]).strip())
        depths = rng.sample(DEPTHS, len(needles))
        cuts = [0] + sorted(int(len(sents) * (d / 100)) for d in depths) + [len(sents)]
        parts = []
        for i in range(1, len(cuts)):
            parts.append(" ".join(sents[cuts[i - 1] : cuts[i]]))
            if i - 1 < len(needles):
                parts.append(needles[i - 1])
        context = " ".join(parts)
        depths = sorted(depths)
    else:
        if spec.haystack == "noise":
            lines = [NOISE] * num_haystack
        else:
            lines = [
                NEEDLE.format(type_needle_v=kind_v, key=_draw(spec.key_kind, rng), value=_draw(kind_v, rng))
                for _ in range(num_haystack)
            ]
        slots = sorted(rng.sample(range(num_haystack), len(needles)), reverse=True)
        for slot, needle in zip(slots, needles):
            lines.insert(slot, needle)
        context = "\n".join(lines)
        depths = sorted(round(100 * s / max(num_haystack, 1)) for s in slots)

    asked = rng.sample(range(num_k), spec.num_needle_q)
    queries = [keys[i] for i in asked]
    answers = [v for i in asked for v in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, noun = TEMPLATE, kind_v
    if spec.num_needle_q * spec.num_needle_v == 1:
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template = template.replace(old, new)
        noun = kind_v[:-1]
    return template.format(type_needle_v=noun, context=context, query=query), answers, query, depths


class _Counter:
    """Prompt length as lm-eval's RULER counts it: ``len(tokenizer(text).input_ids)`` (special tokens
    included); whitespace words without a tokenizer."""

    def __init__(self, tokenizer: str | None):
        from .haystack import _load_tokenizer

        self._tok = _load_tokenizer(tokenizer) if tokenizer else None
        self.unit = f"tokens:{tokenizer}" if tokenizer else "words"
        if tokenizer is None:
            log.warning("no metadata.tokenizer: RULER lengths are counted in whitespace words, not tokens")

    def __call__(self, text: str) -> int:
        return len(text.split()) if self._tok is None else len(self._tok(text).input_ids)


def _haystack_size(spec: RulerNIAHSpec, count: _Counter, length: int, rng: random.Random) -> Tuple[int, int]:
    """RULER's sizing: (haystack units, growth step) for ``length``."""
    needles = max(spec.num_needle_k, spec.num_needle_q) * spec.num_needle_v
    step = 500 if spec.haystack == "essay" else (5 if length < 4096 else 25)
    units, total = max(step, needles), 0
    while total + spec.tokens_to_generate < length:
        prompt, answers, _, _ = render(spec, units, rng)
        total = count(prompt + " ".join(answers))
        if total + spec.tokens_to_generate > length:
            units -= step
            break
        if spec.haystack == "essay" and units > len(essay_words(spec.haystack_file)):
            units = len(essay_words(spec.haystack_file))
            break
        if units > length:
            raise ValueError(f"haystack grew past {length} units below context length {length}; check the tokenizer")
        units += step
    return max(units, needles), step


def _docs(spec: RulerNIAHSpec, tokenizer: str | None) -> List[Dict[str, Any]]:
    count = _Counter(tokenizer)
    rng = random.Random(spec.seed)
    source = spec.haystack_file or (SUBSTITUTE_NOTE if spec.haystack == "essay" else spec.haystack)
    splitter = sentence_splitter()[0] if spec.haystack == "essay" else "none"
    single = spec.num_needle_q * spec.num_needle_v == 1
    noun = spec.value_kind[:-1] if single else spec.value_kind
    docs: List[Dict[str, Any]] = []
    for length in spec.context_lengths:
        units, step = _haystack_size(spec, count, length, rng)
        skipped = 0
        for index in range(spec.num_samples):
            used, sample = units, None
            while used > 0:
                try:  # fewer slots than needles: RULER tries a smaller haystack too
                    prompt, answers, query, depths = render(spec, used, rng)
                except ValueError:
                    used -= step
                    continue
                n_tokens = count(prompt) + spec.tokens_to_generate
                if n_tokens <= length:
                    sample = (prompt, answers, query, depths, n_tokens)
                    break
                used -= step
            if sample is None:
                skipped += 1
                continue
            prompt, answers, query, depths, n_tokens = sample
            keys = "|".join(re.escape(q) for q in query.replace(", and ", ", ").split(", "))
            docs.append(
                dict(
                    context=prompt,
                    gen_prefix=f"The special magic {noun} for {query} mentioned in the provided text "
                    + ("is" if single else "are"),
                    target=" " + " ".join(answers),
                    answer=answers[0],
                    outputs=answers,
                    answer_pattern=re.escape(f"special magic {spec.value_kind} for ")
                    + f"(?:{keys}) is: ({VALUE_PATTERNS[spec.value_kind]})",
                    match="all",
                    slice=f"len{length}",
                    length_unit=count.unit,
                    context_length=length,
                    length=n_tokens,
                    depths=depths,
                    depth=depths[0] / 100,
                    index=index,
                    haystack_source=source,
                    sentence_splitter=splitter,
                )
            )
        if skipped:
            log.warning("context length %d: %d of %d samples did not fit and were skipped", length, skipped, index + 1)
    return docs


def build_ruler_niah(**metadata: Any):
    """RULER NIAH docs (see the module docstring) as ``DatasetDict({"test": ...})``."""
    spec = parse_spec(RulerNIAHSpec, metadata)
    return to_dataset(_docs(spec, metadata.get("tokenizer") or None), f"ruler_niah_{spec.haystack}")


RULER_FIELDS = (
    "gen_prefix",
    "outputs",
    "context_length",
    "length",
    "depths",
    "depth",
    "index",
    "haystack_source",
    "sentence_splitter",
)
