"""Generators of the synthetic recall tasks as text: MQAR, H3-style AR and the key-value template.

Each ``build_*`` is referenced by a YAML ``custom_dataset: !function`` and receives the task's
``metadata`` (plus keys lm-eval adds, ignored here); it returns a ``datasets.DatasetDict`` with a
``test`` split of docs in the format of :mod:`qdelta.tasks.docs`. Output is a pure function of the
parameters: every random draw comes from ``random.Random(seed)`` or, for MQAR, from
:func:`qdelta.tasks.mqar.zoology_multiquery_ar` (zoology's own draws, private generators).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List

from .docs import to_dataset
from .haystack import pool_size, sentences
from .mqar import IGNORE_INDEX, zoology_multiquery_ar
from .spec import parse_spec, require
from .symbols import KINDS, capacity, sample_distinct, syllable_name

MATCHES = ("exact", "contains")
VALUE_PATTERNS = {
    "number": r"\d+",
    "uuid": r"[0-9a-f-]{36}",
    "word": r"[a-z]+-[a-z]+",
    "letter": r"[a-z]",
    "syllable": r"[a-z]+",
}


# ----------------------------------------------------------------------------------------- MQAR


@dataclass
class MQARTextSpec:
    seed: int = 0
    vocab_size: int = 8192  # V: keys [1, V/2) shown as syllables, values [V/2, V) as numbers
    settings: List[List[int]] = field(default_factory=lambda: [[64, 4], [128, 8], [256, 16]])  # (L, K)
    num_examples: int = 8  # sequences per setting; each gives K requests
    power_a: float = 0.01  # query-slot law p(g) ~ (g+1)^(a-1)
    random_non_queries: bool = True  # noise symbols between queries (zoology's default)
    match: str = "exact"

    def check(self) -> None:
        require(self.vocab_size >= 4, "vocab_size", f"needs >= 4, got {self.vocab_size}")
        require(self.seed >= 0, "seed", f"needs >= 0 (numpy's seed range), got {self.seed}")
        require(
            self.vocab_size // 2 <= 10000,
            "vocab_size",
            f"{self.vocab_size} > 20000: keys are shown as 10,000 syllable words; use <= 20000",
        )
        for i, s in _check_common(self, "seq_len, num_kv_pairs"):
            seq_len, k = s
            require(k >= 1, f"settings[{i}]", f"num_kv_pairs must be >= 1, got {k}")
            require(
                k <= self.vocab_size // 2 - 1,
                f"settings[{i}]",
                f"{k} pairs need {k} distinct keys but vocab_size={self.vocab_size} has "
                f"{self.vocab_size // 2 - 1}; raise vocab_size to >= {2 * (k + 1)}",
            )
            require(
                4 * k <= seq_len,
                f"settings[{i}]",
                f"{k} pairs do not fit in seq_len={seq_len} (2K context + K query slots of 2 need "
                f"4K <= seq_len); use seq_len >= {4 * k} or fewer pairs",
            )
            require(seq_len % 2 == 0, f"settings[{i}]", f"seq_len={seq_len} is odd; zoology's MQAR needs it even")
            require(
                self.vocab_size > seq_len,
                f"settings[{i}]",
                f"zoology's MQAR needs vocab_size > seq_len, got vocab_size={self.vocab_size}, "
                f"seq_len={seq_len}; raise vocab_size",
            )


def mqar_symbol(token: int, half: int) -> str:
    """qd_mqar's word for MQAR token ``token`` (``half`` = vocab_size // 2): keys as syllables, values as numbers."""
    return syllable_name(token) if token < half else str(token - half)


def build_mqar(**metadata: Any):
    """zoology's MQAR as text: one doc per query; the context ends with the query key.

    Setting ``i`` is ``zoology_multiquery_ar(vocab_size, num_examples, seq_len, (seed * 1000 + i) % 2**32,
    power_a, num_kv_pairs, random_non_queries)``: zoology's own sequences for that seed (training
    pools pass large derived seeds, hence the modulus into numpy's seed range).
    """
    spec = parse_spec(MQARTextSpec, metadata)
    half = spec.vocab_size // 2
    docs: List[Dict[str, Any]] = []
    for i, (seq_len, k) in enumerate(spec.settings):
        inputs, labels = zoology_multiquery_ar(
            spec.vocab_size,
            spec.num_examples,
            seq_len,
            (spec.seed * 1000 + i) % 2**32,
            power_a=spec.power_a,
            num_kv_pairs=k,
            random_non_queries=spec.random_non_queries,
        )
        for n in range(spec.num_examples):
            words = [mqar_symbol(t, half) for t in inputs[n].tolist()]
            for t in (labels[n] != IGNORE_INDEX).nonzero()[:, 0].tolist():
                answer = mqar_symbol(int(labels[n, t]), half)
                docs.append(
                    dict(
                        context=" ".join(words[: t + 1]),
                        target=" " + answer,
                        answer=answer,
                        answer_pattern=r"(?:^| )" + re.escape(words[t]) + r" (\S+)",
                        match=spec.match,
                        slice=f"L{seq_len}_K{k}",
                        length_unit="symbols",
                        seq_len=seq_len,
                        num_kv_pairs=k,
                        example=n,
                        query_offset=t - 2 * k,
                    )
                )
    return to_dataset(docs, "qd_mqar")


# ------------------------------------------------------------------------------------------- AR


@dataclass
class ARSpec:
    seed: int = 0
    settings: List[List[int]] = field(default_factory=lambda: [[16, 4], [32, 8], [64, 16]])  # (pairs, keys)
    num_examples: int = 16  # per setting
    key_kind: str = "letter"
    value_kind: str = "number"
    value_digits: int = 2
    match: str = "exact"

    def check(self) -> None:
        _check_kind(self, "key_kind", self.key_kind)
        _check_kind(self, "value_kind", self.value_kind)
        for i, s in _check_common(self, "num_pairs, num_keys"):
            pairs, keys = s
            require(
                1 <= keys <= pairs,
                f"settings[{i}]",
                f"needs 1 <= num_keys <= num_pairs, got num_pairs={pairs}, num_keys={keys}",
            )
            _check_room(f"settings[{i}]", keys, self.key_kind, 7, "key_kind")
            _check_room(f"settings[{i}]", keys, self.value_kind, self.value_digits, "value_kind")


def build_ar(**metadata: Any):
    """H3-style associative recall: a fixed key->value map, pairs drawn with repetition, then a key."""
    spec = parse_spec(ARSpec, metadata)
    rng = random.Random(spec.seed)
    docs: List[Dict[str, Any]] = []
    for pairs, num_keys in spec.settings:
        for n in range(spec.num_examples):
            keys = sample_distinct(spec.key_kind, num_keys, rng)
            values = sample_distinct(spec.value_kind, num_keys, rng, digits=spec.value_digits)
            table = dict(zip(keys, values))
            order = [rng.choice(keys) for _ in range(pairs)]
            query = rng.choice(sorted(set(order)))
            words = [w for key in order for w in (key, table[key])] + [query]
            docs.append(
                dict(
                    context=" ".join(words),
                    target=" " + table[query],
                    answer=table[query],
                    answer_pattern=r"(?:^| )" + re.escape(query) + r" (\S+)",
                    match=spec.match,
                    slice=f"P{pairs}_K{num_keys}",
                    length_unit="symbols",
                    num_pairs=pairs,
                    num_keys=num_keys,
                    example=n,
                )
            )
    return to_dataset(docs, "qd_ar")


# ------------------------------------------------------------------------- key-value template


@dataclass
class KVRecallSpec:
    seed: int = 0
    num_examples: int = 16  # per entry of num_pairs
    num_pairs: List[int] = field(default_factory=lambda: [4, 16])  # one slice each
    key_kind: str = "word"
    value_kind: str = "number"
    key_digits: int = 4  # when key_kind is number
    value_digits: int = 4  # when value_kind is number
    pair_template: str = "{key}: {value}"  # {key} before {value}; the query is the text before {value}
    pair_separator: str = "\n"
    instruction: str = ""  # text before the first pair
    question: str = "\n"  # text between the last pair and the query; may use {key}
    query_position: str = "random"  # which pair is asked: random | first | middle | last
    filler: str = "none"  # none | noise | text: sentences after each pair
    filler_sentences: int = 0  # how many filler sentences after each pair
    match: str = "exact"

    def check(self) -> None:
        _check_kind(self, "key_kind", self.key_kind)
        _check_kind(self, "value_kind", self.value_kind)
        require(self.num_examples >= 1, "num_examples", f"needs >= 1, got {self.num_examples}")
        require(len(self.num_pairs) > 0, "num_pairs", "is empty; give e.g. [4, 16]")
        for i, n in enumerate(self.num_pairs):
            require(n >= 1, f"num_pairs[{i}]", f"needs >= 1, got {n}")
            _check_room(f"num_pairs[{i}]", n, self.key_kind, self.key_digits, "key_kind")
        t = self.pair_template
        require(
            t.count("{key}") == 1 and t.count("{value}") == 1,
            "pair_template",
            f"must contain {{key}} and {{value}} once each, got {t!r}",
        )
        require(
            t.index("{key}") < t.index("{value}"),
            "pair_template",
            f"{{key}} must come before {{value}} (the query is the text before {{value}}), got {t!r}",
        )
        require(t[: t.index("{value}")].format(key="k").strip() != "", "pair_template", "has nothing before {value}")
        for name, text, allowed in (
            ("pair_template", t, {"key", "value"}),
            ("question", self.question, {"key"}),
            ("instruction", self.instruction, set()),
        ):
            try:
                text.format(**{a: "x" for a in allowed})
            except (KeyError, IndexError, ValueError) as err:
                raise_field = (
                    f"uses an unknown or broken placeholder ({err!r}); allowed: "
                    f"{', '.join('{' + a + '}' for a in sorted(allowed)) or 'none'} (write {{{{ for a brace)"
                )
                require(False, name, raise_field)
        require(
            self.query_position in ("random", "first", "middle", "last"),
            "query_position",
            f"must be random, first, middle or last; got {self.query_position!r}",
        )
        require(self.filler in ("none", "noise", "text"), "filler", f"must be none, noise or text; got {self.filler!r}")
        require(self.filler_sentences >= 0, "filler_sentences", f"needs >= 0, got {self.filler_sentences}")
        require(
            not (self.filler == "none" and self.filler_sentences > 0),
            "filler_sentences",
            f"is {self.filler_sentences} but filler is 'none'; set filler: noise or filler: text",
        )
        require(self.match in MATCHES, "match", f"must be one of {MATCHES}, got {self.match!r}")


def build_kv_recall(**metadata: Any):
    """The generic key-value recall task described by the YAML's ``metadata`` (see tasks/README.md)."""
    spec = parse_spec(KVRecallSpec, metadata)
    rng = random.Random(spec.seed)
    head_tpl = spec.pair_template[: spec.pair_template.index("{value}")]
    query_tpl = head_tpl.rstrip()
    gap = head_tpl[len(query_tpl) :]
    docs: List[Dict[str, Any]] = []
    for num_pairs in spec.num_pairs:
        for n in range(spec.num_examples):
            keys = sample_distinct(spec.key_kind, num_pairs, rng, digits=spec.key_digits)
            values = sample_distinct(spec.value_kind, num_pairs, rng, digits=spec.value_digits)
            asked = {"first": 0, "middle": num_pairs // 2, "last": num_pairs - 1}.get(spec.query_position, None)
            asked = rng.randrange(num_pairs) if asked is None else asked
            filler = sentences(spec.filler, rng.randrange(pool_size(spec.filler))) if spec.filler != "none" else None
            chunks = []
            for i, (key, value) in enumerate(zip(keys, values)):
                chunk = spec.pair_template.format(key=key, value=value)
                if filler is not None and spec.filler_sentences:
                    chunk += " " + " ".join(filler(i * spec.filler_sentences + j) for j in range(spec.filler_sentences))
                chunks.append(chunk)
            key, value = keys[asked], values[asked]
            context = (
                spec.instruction.format()
                + spec.pair_separator.join(chunks)
                + spec.question.format(key=key)
                + query_tpl.format(key=key)
            )
            docs.append(
                dict(
                    context=context,
                    target=gap + value,
                    answer=value,
                    answer_pattern=re.escape(head_tpl.format(key=key)) + "(" + VALUE_PATTERNS[spec.value_kind] + ")",
                    match=spec.match,
                    slice=f"pairs{num_pairs}",
                    length_unit="words",
                    num_pairs=num_pairs,
                    query_index=asked,
                    example=n,
                )
            )
    return to_dataset(docs, "kv_recall")


# --------------------------------------------------------------------------------------- helpers


def _check_common(spec, pair_names: str):
    """The checks every paired-settings spec shares; yields (i, setting) for the spec's own checks."""
    require(spec.num_examples >= 1, "num_examples", f"needs >= 1, got {spec.num_examples}")
    require(spec.match in MATCHES, "match", f"must be one of {MATCHES}, got {spec.match!r}")
    require(len(spec.settings) > 0, "settings", f"is empty; give [[{pair_names}], ...]")
    for i, s in enumerate(spec.settings):
        require(len(s) == 2, f"settings[{i}]", f"must be [{pair_names}], got {s}")
        yield i, s


def _check_kind(spec, name: str, kind: str) -> None:
    require(kind in KINDS, name, f"must be one of {', '.join(KINDS)}; got {kind!r}")


def _check_room(where: str, n: int, kind: str, digits: int, kind_field: str) -> None:
    if kind == "number":
        require(1 <= digits <= 18, where, f"number digits must be in 1..18, got {digits}")
    room = capacity(kind, digits)
    require(
        n <= room,
        where,
        f"needs {n} distinct {kind_field} items but '{kind}' has only {room}; "
        f"use fewer pairs or a larger kind (word: 2304, number with more digits)",
    )


# generator -> (its parameter spec, the doc fields it adds to docs.COMMON_FIELDS); read by validate.py
SPECS = {
    "build_mqar": (MQARTextSpec, ("seq_len", "num_kv_pairs", "example", "query_offset")),
    "build_ar": (ARSpec, ("num_pairs", "num_keys", "example")),
    "build_kv_recall": (KVRecallSpec, ("num_pairs", "query_index", "example")),
}
