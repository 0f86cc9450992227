"""Greedy generation timing for ``qdelta bench model`` (issue 19 item 4).

Each model's own Hugging Face ``generate``: B prompts of T tokens (one random id tensor shared by every
model of the run), N new tokens, greedy (``do_sample=False``), recurrent cache (``use_cache=True``),
an all-ones attention mask, ``min_new_tokens = max_new_tokens = N`` so no sequence stops early
(eos and pad are both id ``GEN_EOS``; equal ids keep transformers from inferring padding from the prompt).

Timed with CUDA events after a synchronize (:func:`median_ms`): ``total_ms`` is the median of
``repeats`` full calls after one warm-up call that also checks the output is (B, T + N); ``first_ms``
the median of the same call with one new token (prefill of the prompt + the first token). Rates:

- decode tokens/s = B * (N - 1) / (total - first): the N - 1 single-token steps after the first token
  (the first comes from the prefill's logits, so ``total - first`` holds N - 1 forward steps);
- end-to-end tokens/s = B * N / total (prefill included);
- peak = max allocated during the timed full calls (weights included; GB = 10^9 bytes).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

GEN_SHAPE = (64, 2048, 128)  # B prompts, T prompt tokens, N new tokens (issue 19 item 4)
GEN_EOS = 2
GB = 1e9


@dataclass
class GenRow:
    model: str
    B: int
    T: int
    new: int
    first_ms: Optional[float] = None  # generate(max_new_tokens=1): prefill + first token
    total_ms: Optional[float] = None  # generate(max_new_tokens=new)
    decode_tokens_s: Optional[float] = None  # B * (new - 1) / (total - first)
    e2e_tokens_s: Optional[float] = None  # B * new / total
    peak_gb: Optional[float] = None
    error: Optional[str] = None


def parse_gen(text: str) -> Optional[Tuple[int, int, int]]:
    """``"64x2048x128"`` -> (64, 2048, 128); ``"off"`` -> None (no generation); ValueError otherwise."""
    if text.strip().lower() == "off":
        return None
    expected = f"BxTxN with positive integers (B prompts, T prompt tokens, N >= 2 new tokens), e.g. 64x2048x128, or off; got {text!r}"
    try:
        B, T, N = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--gen must be {expected}") from None
    if B <= 0 or T <= 0 or N < 2:
        raise ValueError(f"--gen must be {expected}")
    return B, T, N


def rates(B: int, new: int, first_ms: float, total_ms: float) -> Tuple[Optional[float], float]:
    """(decode tokens/s, end-to-end tokens/s) as in the module docstring; decode is None when
    ``total_ms <= first_ms`` (timing noise larger than the decode time: no rate to report)."""
    decode = B * (new - 1) / (total_ms - first_ms) * 1e3 if total_ms > first_ms else None
    return decode, B * new / total_ms * 1e3


def all_logits_note(model, name: str) -> Optional[str]:
    """A report note when ``model``'s forward takes no ``logits_to_keep`` (transformers then computes the
    prefill's logits at every prompt position, B x T x vocab, where a model that takes it gets the last
    position only); None otherwise."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return None
    return (
        f"{name}: forward takes no logits_to_keep, so generate's prefill computes logits at every prompt "
        "position (B x T x vocab), peers taking it only at the last (in the prefill + 1st time and the peak)"
    )


def median_ms(fn: Callable[[], object], steps: int, warmup: int) -> float:
    """Median CUDA-event time of ``steps`` calls of ``fn`` after ``warmup`` calls (a synchronize after each)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure_generation(model, row: GenRow, ids: torch.Tensor, repeats: int, decoder=None) -> None:
    """Fill ``row`` for greedy generation of ``row.new`` tokens after the prompts ``ids`` (B, T) on CUDA:
    ``model.generate``, or ``decoder(ids, n, attention_mask=...)`` when given (a
    :class:`qdelta.generation.GreedyDecoder`; the warm-up call captures its graph)."""
    B, T = ids.shape
    model.eval()
    mask = torch.ones_like(ids)

    def generate(n: int) -> torch.Tensor:
        if decoder is not None:
            return decoder(ids, n, attention_mask=mask)
        return model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            eos_token_id=GEN_EOS,
            pad_token_id=GEN_EOS,
        )

    out = generate(row.new)  # the warm-up call, checked
    if tuple(out.shape) != (B, T + row.new):
        raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(B, T + row.new)}")
    del out
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    row.total_ms = median_ms(lambda: generate(row.new), repeats, warmup=0)
    row.peak_gb = torch.cuda.max_memory_allocated() / GB
    row.first_ms = median_ms(lambda: generate(1), repeats, warmup=1)
    row.decode_tokens_s, row.e2e_tokens_s = rates(B, row.new, row.first_ms, row.total_ms)
