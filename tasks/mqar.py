"""Token-level multi-query associative recall (MQAR): zoology's own draws, and a seeded variant.

:func:`zoology_multiquery_ar` returns exactly what zoology's ``multiquery_ar`` returns (its
``inputs`` and ``labels``) for the same arguments after ``np.random.seed(seed);
torch.manual_seed(seed)``, drawing from a private ``np.random.RandomState`` and ``torch.Generator``
(the global generators are left alone); tests/tasks/test_mqar_zoology.py checks it against arrays
made with zoology's code. It is the generator of the qd_mqar tasks and of ``qdelta train``'s MQAR
data. :func:`make_mqar` is the earlier generator (same construction and distribution, other draws,
one torch.Generator); it stays for settings zoology refuses (``vocab_size <= seq_len``, e.g. the
vocab-32 CPU configs).

One example of length ``seq_len`` (tokens are integer ids in ``[0, vocab_size)``)::

    k1 v1 k2 v2 ... kK vK | x x kq x x x kq' x ...        (one pass of K pairs, then query slots)

- keys: K distinct ids from ``[1, V/2)``; values: K distinct ids from ``[V/2, V)``.
- The query region after the ``2 K num_passes`` context tokens has ``space = (L - 2K num_passes) // 2``
  slots; slot ``g`` sits at offset ``2 g``. K slots are drawn without replacement with
  ``p(g) ~ (g + 1) ** (power_a - 1)`` (a power law: recent-looking gaps are most likely);
  slot number i holds key i.
- ``labels[t] = value`` where ``inputs[t]`` is a query key (the model must predict the value as
  the next token); every other label is -100.
- Every other query-region token is uniform noise from ``[0, V)`` (zoology's
  ``random_non_queries``). Zoology draws it from the global torch RNG, so inside zoology's trainer
  it depends on what consumed that RNG before (the model's init); here it comes from a generator
  seeded with ``seed``, so the data are a pure function of the arguments.

Accuracy (zoology's metric) is the fraction of labelled positions whose arg-max prediction equals
the label, reported per ``(seq_len, num_kv_pairs)`` slice.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "GENERATORS",
    "zoology_multiquery_ar",
    "zoology_segment_seeds",
    "make_mqar",
    "query_gap_probabilities",
    "evaluate_mqar",
    "mqar_hits",
    "mqar_hash",
]

GENERATORS = ("zoology", "qdelta")  # zoology_multiquery_ar, make_mqar


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}; pass a whole number"
        )
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}; raise it to at least {minimum}")
    return value


def query_gap_probabilities(space: int, power_a: float = 0.01) -> torch.Tensor:
    """Probability of each query slot ``g`` in ``[0, space)``: ``p(g) ~ (g + 1) ** (power_a - 1)``.

    Returns a float64 tensor of shape ``(space,)`` summing to 1.
    """
    _check_int("space", space, 1)
    if not isinstance(power_a, (int, float)) or isinstance(power_a, bool) or power_a <= 0:
        raise ValueError(f"power_a must be a float > 0 (1.0 = uniform slots), got {power_a!r}")
    p = torch.arange(1, space + 1, dtype=torch.float64) ** (float(power_a) - 1.0)
    return p / p.sum()


def check_zoology_setting(vocab_size: int, seq_len: int, num_kv_pairs: int) -> None:
    """Raise ValueError where zoology's ``multiquery_ar`` refuses (its three asserts), naming the fix."""
    if seq_len % 2:
        raise ValueError(f"seq_len={seq_len} is odd; zoology's MQAR needs an even seq_len")
    if vocab_size <= seq_len:
        raise ValueError(
            f"vocab_size={vocab_size} <= seq_len={seq_len}; zoology's MQAR needs vocab_size > seq_len "
            f"(use generator 'qdelta' for smaller vocabularies)"
        )
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(
            f"num_kv_pairs={num_kv_pairs} does not fit in seq_len={seq_len} (zoology needs 4 K <= L); "
            f"use seq_len >= {4 * num_kv_pairs} or fewer pairs"
        )


def zoology_multiquery_ar(
    vocab_size: int,
    num_examples: int,
    input_seq_len: int,
    seed: int,
    power_a: float = 0.01,
    num_kv_pairs: int = 8,
    random_non_queries: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zoology's MQAR examples, draw for draw, without touching the global RNGs.

    Equal element for element to ``multiquery_ar(vocab_size, num_examples, input_seq_len, seed,
    power_a, num_kv_pairs, random_non_queries=...)`` of zoology (``zoology/data/multiquery_ar.py``,
    ``num_passes=1``) called after ``np.random.seed(seed); torch.manual_seed(seed)``: keys, values
    and query slots come from ``np.random.RandomState(seed)`` in zoology's order of calls (one
    ``choice`` per example for keys, then values, then slots), the noise fill from
    ``torch.randint`` on a CPU ``torch.Generator`` seeded with ``seed``.

    Args:
        vocab_size: V > input_seq_len; keys from ``[1, V/2)``, values from ``[V/2, V)``.
        num_examples: N >= 1.
        input_seq_len: L, even, >= 4 K.
        seed: in ``[0, 2**32)`` (numpy's seed range).
        power_a: query-slot law ``p(g) ~ (g + 1) ** (power_a - 1)``.
        num_kv_pairs: K.
        random_non_queries: replace every 0 of the inputs by uniform noise from ``[0, V)``.

    Returns:
        ``inputs`` (N, L) int64 and ``labels`` (N, L) int64 (-100 where not scored).

    Example:
        >>> x, y = zoology_multiquery_ar(64, 2, 32, seed=0, num_kv_pairs=4)
        >>> x.shape, int((y != -100).sum())
        (torch.Size([2, 32]), 8)
    """
    for name, value, minimum in (
        ("vocab_size", vocab_size, 4),
        ("num_examples", num_examples, 1),
        ("input_seq_len", input_seq_len, 2),
        ("num_kv_pairs", num_kv_pairs, 1),
    ):
        _check_int(name, value, minimum)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32) (numpy's seed range), got {seed!r}")
    if not isinstance(power_a, (int, float)) or isinstance(power_a, bool) or power_a <= 0:
        raise ValueError(f"power_a must be a float > 0 (1.0 = uniform slots), got {power_a!r}")
    check_zoology_setting(vocab_size, input_seq_len, num_kv_pairs)
    rs = np.random.RandomState(seed)
    n, k = num_examples, num_kv_pairs
    context = 2 * k
    half = vocab_size // 2
    key_choices, value_choices = np.arange(1, half), np.arange(half, vocab_size)
    keys = np.stack([rs.choice(key_choices, replace=False, size=k) for _ in range(n)])  # (N, K)
    values = np.stack([rs.choice(value_choices, replace=False, size=k) for _ in range(n)])
    space = (input_seq_len - context) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)  # zoology's expression, bit for bit
    p = p / p.sum()
    slots = np.arange(space, dtype=int)
    gaps = np.stack([rs.choice(slots, replace=False, p=p, size=k) for _ in range(n)])  # (N, K)

    inputs = np.zeros((n, input_seq_len), dtype=np.int64)
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    np.put_along_axis(inputs, context + 2 * gaps, keys, axis=1)
    labels = np.full((n, input_seq_len), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, context + 2 * gaps, values, axis=1)
    inputs, labels = torch.from_numpy(inputs), torch.from_numpy(labels)
    if random_non_queries:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randint(vocab_size, size=inputs.shape, generator=gen)
        zero = inputs == 0
        inputs[zero] = noise[zero]
    return inputs, labels


def zoology_segment_seeds(seed: int, num_train: int, num_test: int) -> Tuple[List[int], List[int]]:
    """The seeds zoology's ``prepare_data`` gives its train and test segments for ``DataConfig.seed``:
    ``np.random.seed(seed)``, then ``randint(0, 2**31, num_train)`` and ``randint(2**31, 2**32, num_test)``
    (from a private ``RandomState`` here)."""
    rs = np.random.RandomState(seed)
    train = rs.randint(0, 2**31, size=num_train)
    test = rs.randint(2**31, 2**32, size=num_test)
    return [int(s) for s in train], [int(s) for s in test]


def mqar_examples(
    generator: str,
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    num_examples: int,
    seed: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """MQAR examples from ``generator`` ("zoology": :func:`zoology_multiquery_ar`, "qdelta": :func:`make_mqar`)."""
    if generator == "zoology":
        return zoology_multiquery_ar(
            vocab_size, num_examples, seq_len, seed, power_a, num_kv_pairs, random_non_queries=random_non_queries
        )
    if generator == "qdelta":
        return make_mqar(
            vocab_size, seq_len, num_kv_pairs, num_examples, seed, power_a, random_non_queries=random_non_queries
        )
    raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")


def make_mqar(
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    num_examples: int,
    seed: int,
    power_a: float = 0.01,
    num_passes: int = 1,
    random_non_queries: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generate MQAR examples.

    Args:
        vocab_size: V; keys come from ``[1, V/2)``, values from ``[V/2, V)``.
        seq_len: L, tokens per example.
        num_kv_pairs: K, distinct key-value pairs per example.
        num_examples: N.
        seed: the only source of randomness.
        power_a: exponent of the query-slot law (0.01 as in zoology; 1.0 = uniform).
        num_passes: how many times the K pairs are repeated before the queries (JRT); 1 = zoology's MQAR.
        random_non_queries: fill non-query slots with uniform noise (True, zoology's default) or 0.

    Returns:
        ``inputs`` (N, L) int64 and ``labels`` (N, L) int64 (-100 where not scored; K scored
        positions per example).

    Example:
        >>> x, y = make_mqar(vocab_size=64, seq_len=32, num_kv_pairs=4, num_examples=2, seed=0)
        >>> x.shape, int((y != -100).sum())
        (torch.Size([2, 32]), 8)
    """
    _check_int("vocab_size", vocab_size, 4)
    _check_int("seq_len", seq_len, 2)
    _check_int("num_kv_pairs", num_kv_pairs, 1)
    _check_int("num_examples", num_examples, 1)
    _check_int("num_passes", num_passes, 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    half = vocab_size // 2
    if half - 1 < num_kv_pairs:
        raise ValueError(
            f"vocab_size={vocab_size} gives only {half - 1} distinct keys in [1, {half}) but "
            f"num_kv_pairs={num_kv_pairs}; use vocab_size >= {2 * (num_kv_pairs + 1)}"
        )
    context = 2 * num_kv_pairs * num_passes
    space = (seq_len - context) // 2
    if space < num_kv_pairs:
        raise ValueError(
            f"seq_len={seq_len} leaves {max(space, 0)} query slots after {context} context tokens, "
            f"fewer than num_kv_pairs={num_kv_pairs}; use seq_len >= {context + 2 * num_kv_pairs} "
            f"or fewer pairs"
        )
    gen = torch.Generator().manual_seed(seed)
    n = num_examples
    # distinct keys and values per example: first K of a random permutation of each range
    keys = torch.rand(n, half - 1, generator=gen).argsort(dim=1)[:, :num_kv_pairs] + 1  # (N, K)
    values = torch.rand(n, vocab_size - half, generator=gen).argsort(dim=1)[:, :num_kv_pairs] + half
    p = query_gap_probabilities(space, power_a)
    gaps = torch.multinomial(p.expand(n, space), num_kv_pairs, replacement=False, generator=gen)  # (N, K)

    kv = torch.stack([keys, values], dim=2).reshape(n, 2 * num_kv_pairs).repeat(1, num_passes)  # (N, 2K*passes)
    tail = torch.zeros(n, seq_len - context, dtype=torch.long)
    tail.scatter_(1, 2 * gaps, keys)
    inputs = torch.cat([kv, tail], dim=1)
    labels = torch.full((n, seq_len), IGNORE_INDEX, dtype=torch.long)
    labels.scatter_(1, context + 2 * gaps, values)
    noise = torch.randint(0, vocab_size, (n, seq_len), generator=gen)
    if random_non_queries:
        filler = torch.ones_like(inputs, dtype=torch.bool)
        filler[:, :context] = False
        filler.scatter_(1, context + 2 * gaps, False)
        inputs = torch.where(filler, noise, inputs)
    return inputs, labels


def mqar_hash(inputs: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the int64 bytes of ``inputs`` then ``labels`` (goes into run records)."""
    h = hashlib.sha256()
    for t in (inputs, labels):
        h.update(t.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def _logits_of(model: Callable, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    logits = getattr(out, "logits", out)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if not torch.is_tensor(logits) or logits.dim() != 3:
        raise TypeError(
            f"model(input_ids) must return logits (B, T, vocab) or an object with .logits; got {type(out).__name__}"
        )
    return logits


@torch.no_grad()
def mqar_hits(model: Callable, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, device) -> Tuple[int, int]:
    """``(hits, scored positions)``: arg-max predictions of ``model`` equal to ``labels`` where scored."""
    hits, count = 0, 0
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        preds = _logits_of(model, x).argmax(dim=-1)
        mask = y != IGNORE_INDEX
        hits += int((preds[mask] == y[mask]).sum())
        count += int(mask.sum())
    return hits, count


@torch.no_grad()
def evaluate_mqar(
    model: Callable,
    vocab_size: int,
    settings: Iterable[Tuple[int, int]] = ((64, 4), (128, 8), (256, 16), (512, 64)),
    num_examples: int = 256,
    seed: int = 1234,
    power_a: float = 0.01,
    batch_size: int = 64,
    device: Optional[str] = None,
    generator: str = "zoology",
) -> Dict[str, float]:
    """Zoology accuracy of ``model`` on fresh MQAR data, per ``(seq_len, num_kv_pairs)`` slice.

    Args:
        model: callable ``model(input_ids (B, L)) -> logits (B, L, V')`` or an object with
            ``.logits`` (a Hugging Face causal LM); ``V' >= vocab_size``. Put it in eval mode first.
        vocab_size: the synthetic vocabulary V the model was trained on.
        settings: (seq_len, num_kv_pairs) pairs; each slice uses seed ``seed + index``.
        num_examples, seed, power_a: passed to the generator.
        batch_size: examples per forward call.
        device: where inputs go (default: the model's first parameter's device, else cpu).
        generator: "zoology" (:func:`zoology_multiquery_ar`) or "qdelta" (:func:`make_mqar`).

    Returns:
        ``{"L{L}_K{K}": accuracy, ..., "mean": mean over slices, "all": pooled over positions}``.
    """
    settings = [tuple(s) for s in settings]
    if not settings:
        raise ValueError("settings is empty; pass e.g. [(64, 4), (128, 8)]")
    _check_int("batch_size", batch_size, 1)
    if device is None:
        params = getattr(model, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        device = first.device if first is not None else "cpu"
    scores: Dict[str, float] = {}
    hits_all, count_all = 0, 0
    for i, (seq_len, num_kv_pairs) in enumerate(settings):
        inputs, labels = mqar_examples(generator, vocab_size, seq_len, num_kv_pairs, num_examples, seed + i, power_a)
        hits, count = mqar_hits(model, inputs, labels, batch_size, device)
        scores[f"L{seq_len}_K{num_kv_pairs}"] = hits / count
        log.info("MQAR L=%d K=%d accuracy %.4f (%d positions)", seq_len, num_kv_pairs, hits / count, count)
        hits_all += hits
        count_all += count
    slice_scores: List[float] = list(scores.values())
    scores["mean"] = sum(slice_scores) / len(slice_scores)
    scores["all"] = hits_all / count_all
    return scores
