"""Tile sizes and launch settings of the chunk kernels, in one place.

``settings(kernel, K, V)`` gives the launch table below, updated by ``OVERRIDES[kernel]``, which
the tuning script (``harness/bench/tune.py``) sets in-process during a trial through
:func:`overridden`; nothing else sets it. Every tile size is a power of two >= 16; the state kernels
hold all of K in one tile (``BK`` is K padded). ``LOWP`` (state, output, reverse, kq_bwd): the dots'
operands are rounded to the inputs' dtype (bf16/fp16) instead of running on fp32 operands;
accumulation and the states stay fp32. ``W_LOWP`` (intra): store W in the inputs' 16-bit dtype where
both its readers use LOWP (the same numbers, half the bytes). ``H_LOWP`` (state / reverse): keep the
chunk-start states / end-state gradients that the backward's K-block kernel reads in the inputs' 16-bit
dtype (paper variant; half the bytes of the largest tensors). For fp32 inputs the 16-bit options are
no-ops.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Dict, Iterator

log = logging.getLogger(__name__)

OVERRIDES: Dict[str, Dict[str, Any]] = {}  # per kernel; set only by overridden() (tuning trials, tests)


def p2(n: int, least: int = 16) -> int:
    """The next power of two >= n, at least ``least`` (Triton tiles). Plain ints: ``triton.next_power_of_2``
    is a constexpr function, ~10 us a call on the host."""
    return max(least, 1 << max(n - 1, 0).bit_length())


def _least_bv(kernel: str, K: int, lowp: bool) -> int:
    """The narrowest V tile the state passes may use at head size K. Seen on an H200 with Triton 3.6:
    both state passes at K = 256 with 16-column V tiles (8 warps) and the reverse pass at K = 256 with
    16-bit operands and 32-column V tiles fault (illegal memory access; the latter only in the varlen GPU
    test, it ran in the tuning script), and the reverse pass at K = 128 with 16-bit operands and 32-column
    tiles returns a wrong initial-state gradient (1.6e-2 relative at T = 16384 in the GPU test; the
    interpreter gives the same numbers at every tile width). Narrower tiles are never launched there."""
    if kernel == "reverse" and lowp and p2(K) >= 128:
        return 64
    return 32 if p2(K) >= 256 else 16


def _hopper(kernel: str, K: int, V: int) -> Dict[str, Any]:
    """The launch table for Hopper (sm_90: H100, H200), used on every card until another family has its own:
    chosen with harness/bench/tune.py on an H200, bf16, T = 2048, one change at a time (NOTES.md)."""
    BKF = p2(K)
    wide = BKF >= 256
    if kernel == "intra":  # _intra_kernel (forward, one program per chunk and head)
        return dict(BK=min(64, BKF), BV=min(64, p2(V)), num_warps=2, num_stages=2, W_LOWP=True)
    if kernel == "state":  # _state_kernel (forward, sequential over chunks)
        return dict(BV=min(64, p2(V)), num_warps=8 if wide else 4, num_stages=2, LOWP=True, H_LOWP=True)
    if kernel == "output":  # _output_kernel (forward, parallel over chunks)
        return dict(BK=min(64, BKF), BV=min(128, p2(V)), num_warps=8, num_stages=2, LOWP=True)
    if kernel == "reverse":  # _reverse_state_kernel (backward, sequential over chunks)
        return dict(
            BV=min(64, p2(V)), num_warps=8 if wide else 4, num_stages=1 if BKF >= 128 else 2, LOWP=True, H_LOWP=True
        )
    if kernel == "intra_bwd":  # _intra_bwd_kernel (backward, one program per chunk and head)
        return dict(BV=min(64, p2(V)), num_warps=4, num_stages=2)
    if kernel == "kq_bwd":  # _kq_bwd_kernel (backward, one program per K block, chunk and head)
        return dict(BK=min(64, BKF), BV=min(64, p2(V)), num_warps=4, num_stages=2, LOWP=True)
    if kernel == "recurrent":  # _recurrent_kernel (decoding); num_warps / num_stages are Triton's defaults
        # 64-column tiles at K <= 128; at K = 256 the official variant's three K x 64 fp32 tiles spill
        return dict(BV=min(64 if BKF <= 128 else 32, p2(V)), num_warps=4, num_stages=3)
    raise KeyError(f"no launch settings for kernel {kernel!r}")


def settings(kernel: str, K: int, V: int) -> Dict[str, Any]:
    """Launch settings of one kernel for head sizes K, V (the launch table, then ``OVERRIDES``); a new dict
    each call (callers pop from it)."""
    overrides = OVERRIDES.get(kernel)
    return _checked(kernel, K, V, overrides) if overrides else dict(_table_settings(kernel, K, V))


@functools.lru_cache(maxsize=None)
def _table_settings(kernel: str, K: int, V: int) -> Dict[str, Any]:
    """The launch table's settings, checked once per kernel and head sizes."""
    return _checked(kernel, K, V, None)


def _checked(kernel: str, K: int, V: int, overrides) -> Dict[str, Any]:
    cfg = {**_hopper(kernel, K, V), **(overrides or {})}
    least = min(_least_bv(kernel, K, cfg.get("LOWP", False)), p2(V))  # a V narrower than the tile is fine
    if kernel in ("state", "reverse") and cfg["BV"] < least:
        raise ValueError(
            f"launch settings for {kernel!r}: BV={cfg['BV']} with K={K}"
            f"{' and LOWP' if least == 64 else ''} faults or computes wrong numbers on Hopper "
            f"(Triton 3.6); use BV >= {least}"
        )
    # and the K-block backward with 16-bit operands on 32 x 32 (BK x BV) tiles at K = 128 and 256 (Triton 3.6)
    if kernel == "kq_bwd" and cfg.get("LOWP") and cfg["BK"] <= 32 and cfg["BV"] <= 32 and p2(K) >= 128:
        raise ValueError(
            f"launch settings for 'kq_bwd': BK={cfg['BK']}, BV={cfg['BV']} with LOWP fault on Hopper "
            "(Triton 3.6); use BK or BV >= 64, or LOWP off"
        )
    return cfg


@contextlib.contextmanager
def overridden(changes: Dict[str, Dict[str, Any]]) -> Iterator[None]:
    """``OVERRIDES`` with ``changes`` merged in per kernel (single values replaced, the others kept) for
    the block; restored afterwards (the tuning script, compile_check and the tests try settings so)."""
    before = {kernel: dict(o) for kernel, o in OVERRIDES.items()}
    for kernel, values in changes.items():
        OVERRIDES[kernel] = {**before.get(kernel, {}), **values}
    try:
        yield
    finally:
        OVERRIDES.clear()
        OVERRIDES.update(before)


try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - older/newer Triton layouts
    OutOfResources = RuntimeError

_STAGES_CAP: Dict[tuple, int] = {}


def launch(kernel, grid, cfg: Dict[str, Any], *args, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs, **cfg)``; if the settings ask for more shared memory than
    the card has (e.g. fp32 inputs double the operand tiles of a bf16-tuned setting), retry with
    fewer pipeline stages and remember the cap for this kernel and these compile-time values."""

    def key() -> tuple:  # built only once some launch has needed a cap (off the common path)
        return (
            getattr(kernel, "__name__", str(kernel)),
            tuple(sorted(cfg.items())),
            tuple(sorted((k, v) for k, v in constexprs.items() if isinstance(v, (bool, int)))),
            tuple(str(a.dtype) for a in args if hasattr(a, "dtype")),
        )

    stages = cfg.get("num_stages", 1)
    if _STAGES_CAP:
        stages = min(stages, _STAGES_CAP.get(key(), stages))
    while True:
        try:
            kernel[grid](*args, **constexprs, **{**cfg, "num_stages": stages})
            return
        except OutOfResources:
            if stages <= 1:
                raise
            stages -= 1
            _STAGES_CAP[key()] = stages
            log.info(
                "%s: out of shared memory with these settings; retrying with num_stages=%d",
                getattr(kernel, "__name__", kernel),
                stages,
            )
