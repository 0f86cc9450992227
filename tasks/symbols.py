"""Keys, values and filler for the text recall tasks, drawn from a ``random.Random`` (seeded).

Kinds (``kind`` in the task YAML):

- ``number``: decimal numbers of ``digits`` digits (no leading zero), e.g. ``4821907``.
- ``uuid``: random version-4 UUID strings, e.g. ``1b4e28ba-2fa1-4d3b-a3f5-ef19a2c1e8d0``.
- ``word``: adjective-noun compounds from a built-in list, e.g. ``quiet-harbor`` (2,304 of them).
- ``letter``: a single lower-case letter (26 of them; small on purpose, for short H3-style tasks).
- ``syllable``: two consonant-vowel syllables, e.g. ``bako`` (the synthetic vocabulary of text MQAR;
  ``syllable_name(i)`` is a bijection from ``i`` in ``[0, 10000)``).
"""

from __future__ import annotations

import random
import uuid
from typing import List

KINDS = ("number", "uuid", "word", "letter", "syllable")

ADJECTIVES = (
    "amber brave bright calm clever cold crisp curious dark eager early fancy gentle golden green "
    "hidden humble icy jolly kind lively lucky mellow merry misty noble odd pale patient proud quick "
    "quiet rapid rare red rough round rustic shy silent silver smooth soft steady sunny swift tall tidy"
).split()
NOUNS = (
    "anchor apple arrow badger banner barrel beacon bell birch bridge candle canyon castle cedar "
    "comet compass crane delta falcon feather forest garden glacier harbor hazel heron island "
    "kettle lantern lemon meadow mirror needle orchard otter pebble pepper quarry raven river "
    "saddle spruce thistle timber tulip valley walnut willow"
).split()
CONSONANTS = "bdfghjklmnprstvwxyzc"  # 20
VOWELS = "aeiou"  # 5
SYLLABLES = [c + v for c in CONSONANTS for v in VOWELS]  # 100


def capacity(kind: str, digits: int = 7) -> int:
    """How many distinct items ``kind`` can produce."""
    if kind == "number":
        return 9 * 10 ** (digits - 1)
    if kind == "uuid":
        return 2**122
    if kind == "word":
        return len(ADJECTIVES) * len(NOUNS)
    if kind == "letter":
        return 26
    if kind == "syllable":
        return len(SYLLABLES) ** 2
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def syllable_name(index: int) -> str:
    """The ``index``-th two-syllable word (bijective on ``[0, 10000)``)."""
    hi, lo = divmod(index, len(SYLLABLES))
    return SYLLABLES[hi] + SYLLABLES[lo]


def _one(kind: str, rng: random.Random, digits: int) -> str:
    if kind == "number":
        return str(rng.randrange(10 ** (digits - 1), 10**digits))
    if kind == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "word":
        return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
    if kind == "letter":
        return chr(ord("a") + rng.randrange(26))
    if kind == "syllable":
        return syllable_name(rng.randrange(len(SYLLABLES) ** 2))
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def sample_distinct(
    kind: str, n: int, rng: random.Random, digits: int = 7, exclude: frozenset = frozenset()
) -> List[str]:
    """``n`` distinct items of ``kind`` (none in ``exclude``), in draw order."""
    room = capacity(kind, digits) - len(exclude)
    if n > room:
        raise ValueError(
            f"asked for {n} distinct '{kind}' items but only {room} exist; "
            f"use fewer pairs or a larger kind (e.g. 'word' or 'number')"
        )
    if kind in ("letter", "word", "syllable") and n > room // 4:
        pool = [x for x in _all(kind) if x not in exclude]
        return rng.sample(pool, n)
    out: List[str] = []
    seen = set(exclude)
    while len(out) < n:
        item = _one(kind, rng, digits)
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _all(kind: str) -> List[str]:
    if kind == "letter":
        return [chr(ord("a") + i) for i in range(26)]
    if kind == "word":
        return [f"{a}-{b}" for a in ADJECTIVES for b in NOUNS]
    return [syllable_name(i) for i in range(len(SYLLABLES) ** 2)]
