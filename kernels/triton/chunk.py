"""``chunk_qdelta`` on Triton: chunk table, launches, and the autograd Function.

Forward: the three Triton kernels of :mod:`.chunk_fwd`. Backward: the four Triton kernels of
:mod:`.chunk_bwd`, gradients for q, k, v, g, beta, lam and the initial state, with the final-state
gradient flowing in. The forward saves only its inputs; the backward first runs the forward's intra
and state kernels again for what it reads (chunk-start states, G, W, U', Q K^T * Gam, T, the strictly
lower P * Gam, the q/k row norms), as flash-linear-attention's and the authors' kernels recompute
theirs: about 0.3 GB a layer less at 16K tokens of 340M heads, for one more intra and state pass
(DESIGN §3.7). The kernels are deterministic, so the recomputed tensors equal the forward's.

The official variant runs here from chunk boundaries (an ``initial_state`` that is a tensor, or
an :class:`OfficialState` at a boundary); its final in-chunk state (chunk-start state, x-memory,
offset) is rebuilt from the last chunk's start state with the PyTorch chunk step, which keeps it
differentiable. Continuing from the middle of a chunk goes to the reference path (see
:func:`supports`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Iterator, List, Tuple

import torch
import triton

from .._inputs import OFFICIAL_CHUNK, Inputs, l2norm
from ..chunk import PRECISIONS, _chunk
from ..state import OfficialState
from . import chunk_fwd
from .chunk_bwd import chunk_backward
from .launch import launch, settings
from .launch import p2 as _p2

log = logging.getLogger(__name__)

MAX_K, MAX_V, MAX_CHUNK = 256, 512, 64
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def dot_precision(precision: str, dtype: torch.dtype) -> str:
    """The kernels' ``DOT_PRECISION`` for a call: ``precision`` ("tf32" or "ieee") for fp32 inputs; "tf32"
    (Triton's default) for 16-bit inputs, whose kernels stay as they are."""
    assert precision in PRECISIONS, precision  # checked by chunk_qdelta
    return precision if dtype == torch.float32 else "tf32"


def interpret_mode() -> bool:
    """True when ``TRITON_INTERPRET=1``: the Triton kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_ok(x: torch.Tensor) -> bool:
    return x.is_cuda or (x.device.type == "cpu" and interpret_mode())


def _official_state_at_boundary(s: OfficialState) -> bool:
    if any(t.requires_grad for _, t in s.tensors()):
        return False
    return bool((s.offset == 0).all()) and torch.equal(s.chunk_start, s.state) and not bool(s.x_memory.any())


def supports(inp: Inputs, chunk_size: int) -> bool:
    """Whether the Triton chunk path computes this call (else the PyTorch reference does)."""
    K, V = inp.q.shape[-1], inp.v.shape[-1]
    if not device_ok(inp.q) or inp.q.dtype not in TRITON_DTYPES or K > MAX_K or V > MAX_V:
        return False
    if chunk_size > MAX_CHUNK:
        return False
    s = inp.initial_state
    return not (isinstance(s, OfficialState) and not _official_state_at_boundary(s))


class ChunkTable:
    """Every chunk's first token and length over the flattened tokens; built on the host."""

    def __init__(self, bounds: Tuple[Tuple[int, int], ...], chunk_size: int, device):
        bos, lens, seq_chunks = [], [], [0]
        for start, end in bounds:
            for s in range(start, end, chunk_size):
                bos.append(s)
                lens.append(min(chunk_size, end - s))
            seq_chunks.append(len(bos))
        last = [c - 1 for c in seq_chunks[1:]]
        # one host-to-device copy (each copy from pageable memory waits for the GPU), then views; every
        # part starts 16-byte aligned, as separate tensors would (Triton specialises kernels on that)
        parts = [bos, lens, seq_chunks, last]
        sizes = [-(-len(p) // 4) * 4 for p in parts]
        table = torch.tensor([x for p, n in zip(parts, sizes) for x in p + [0] * (n - len(p))], dtype=torch.int32)
        views = table.to(device).split(sizes)
        self.last_bos = tuple(bos[c] for c in last)  # each sequence's last chunk's first token (host side)
        self.bos, self.len, self.seq_chunks, last = (v[: len(p)] for v, p in zip(views, parts))
        self.last = last.long()  # index of each sequence's last chunk
        self.num_chunks, self.num_sequences = len(bos), len(bounds)
        self.bounds = tuple(bounds)


@functools.lru_cache(maxsize=16)
def _cached_table(bounds: Tuple[Tuple[int, int], ...], chunk_size: int, device: str) -> ChunkTable:
    return ChunkTable(bounds, chunk_size, device)


_HOLDERS: List[List[ChunkTable]] = []  # the lists of the open keep_tables() blocks


def chunk_table(bounds: Tuple[Tuple[int, int], ...], chunk_size: int, device: str) -> ChunkTable:
    """The chunk table of these sequence bounds, built once and kept (16 most recent). Building it copies
    host tensors to the GPU, and a copy from pageable host memory waits for the GPU to finish its queued
    work, so a table built on every call would make the host wait once per call (and could not be
    captured in a CUDA graph). The tables are read-only."""
    table = _cached_table(bounds, chunk_size, device)
    for held in _HOLDERS:
        held.append(table)
    return table


@contextlib.contextmanager
def keep_tables() -> Iterator[List[ChunkTable]]:
    """Collect every chunk table used in the block into the yielded list. A CUDA graph captured in the
    block reads those tables' device memory on every replay; the graph's owner keeps the list, so a
    table dropped from the cache above is not freed (and its memory reused) under the graph."""
    held: List[ChunkTable] = []
    _HOLDERS.append(held)
    try:
        yield held
    finally:
        _HOLDERS.remove(held)


def chunk_forward(
    q,
    k,
    v,
    g,
    beta,
    lam,
    h0,
    table: ChunkTable,
    scale: float,
    chunk_size: int,
    official: bool,
    store_inverse: bool = False,
    norm: bool = False,
    precision: str = "tf32",
    output: bool = True,
):
    """Launch the forward kernels. Tokens laid out (T, H, ·), contiguous.

    Returns o (T, H, V), h (NC, H, K, V) chunk-start states, ht (N, H, K, V) final states and, with
    ``store_inverse``, what the backward reads: (G, W, U', Aqk, T, PG, h, R) with T the per-chunk
    ``(I + L)^-1`` (NC, H, BC, BC), PG the strictly lower ``P * Gam`` and R the (2, T, H) fp32 inverse
    row norms of q and k (None without ``norm``); else None. With ``norm`` the kernels l2-normalise the
    rows of q and k as they load them (``use_qk_l2norm``: no normalised copy is made). ``precision``:
    the dots' ``input_precision`` for fp32 operands (:func:`dot_precision`). ``output=False`` skips the
    output kernel (o is None): the backward's recomputation.
    """
    T, H, K = q.shape
    V = v.shape[-1]
    NC, N = table.num_chunks, table.num_sequences
    dev, f32 = q.device, torch.float32
    G = torch.empty(T, H, dtype=f32, device=dev)
    # W in the inputs' 16-bit dtype (launch.py W_LOWP) only where both its readers round it to that dtype
    # anyway (LOWP in the state and reverse passes): then the same numbers, half the bytes
    cfg = settings("intra", K, V)
    state, reverse, out_cfg = settings("state", K, V), settings("reverse", K, V), settings("output", K, V)
    w16 = cfg.pop("W_LOWP") and q.dtype != f32 and state["LOWP"] and reverse["LOWP"]
    W = torch.empty(T, H, K, dtype=q.dtype if w16 else f32, device=dev)
    U = torch.empty(T, H, V, dtype=f32, device=dev)
    BC = _p2(chunk_size)
    Tinv = torch.empty(NC, H, BC, BC, dtype=f32, device=dev) if store_inverse else None
    Aqk = torch.empty(NC, H, BC, BC, dtype=f32, device=dev)
    PG = torch.empty(NC, H, BC, BC, dtype=f32, device=dev) if store_inverse else None  # P * Gam, for the backward
    R = torch.empty(2, T, H, dtype=f32, device=dev) if norm else None
    Rq, Rk = (G, G) if R is None else (R[0], R[1])
    if norm:
        rows, BR = T * H, 32
        chunk_fwd._l2norm_rows_kernel[(triton.cdiv(rows, BR),)](q, k, R, rows, K=K, BK=_p2(K), BR=BR)
    launch(
        chunk_fwd._intra_kernel,
        (NC, H),
        cfg,
        q,
        k,
        v,
        q if g is None else g,
        beta,
        q if lam is None else lam,
        table.bos,
        table.len,
        G,
        W,
        U,
        G if Tinv is None else Tinv,
        Aqk,
        G if PG is None else PG,
        Rq,
        Rk,
        H=H,
        K=K,
        V=V,
        BC=BC,
        HAS_G=g is not None,
        HAS_LAM=lam is not None,
        OFFICIAL=official,
        STORE_T=store_inverse,
        NORM=norm,
        DOT_PRECISION=precision,
        HC=max(16, BC // 2),
    )
    cfg = state
    # H_LOWP: chunk-start states kept in the inputs' 16-bit dtype (half the bytes of the largest tensor,
    # written here and read by the output kernel — which rounds them anyway with its LOWP — and by the
    # backward's K-block kernel); the official variant keeps fp32 (its final state is rebuilt from the
    # last chunk's start state)
    h16 = cfg.pop("H_LOWP") and q.dtype != f32 and not official and out_cfg["LOWP"]
    h = torch.empty(NC, H, K, V, dtype=q.dtype if h16 else f32, device=dev)
    Up = torch.empty(T, H, V, dtype=f32, device=dev)
    ht = torch.empty(N, H, K, V, dtype=f32, device=dev)
    o = torch.empty(T, H, V, dtype=q.dtype, device=dev)
    launch(
        chunk_fwd._state_kernel,
        (triton.cdiv(V, cfg["BV"]), N, H),
        cfg,
        k,
        W,
        U,
        G,
        ht if h0 is None else h0,
        table.bos,
        table.len,
        table.seq_chunks,
        h,
        Up,
        ht,
        Rk,
        H=H,
        K=K,
        V=V,
        BC=BC,
        BK=_p2(K),
        NORM=norm,
        HAS_H0=h0 is not None,
        DOT_PRECISION=precision,
    )
    saved = (G, W, Up, Aqk, Tinv, PG, h, R) if store_inverse else None
    if not output:
        return None, h, ht, saved
    cfg = out_cfg
    launch(
        chunk_fwd._output_kernel,
        (triton.cdiv(V, cfg["BV"]), NC, H),
        cfg,
        q,
        Aqk,
        G,
        h,
        Up,
        o,
        table.bos,
        table.len,
        Rq,
        scale,
        H=H,
        K=K,
        V=V,
        BC=BC,
        NORM=norm,
        DOT_PRECISION=precision,
    )
    return o, h, ht, saved


class _ChunkQDelta(torch.autograd.Function):
    """(q, k, v, g, beta, lam, h0) -> (o, final state, start state of every sequence's last chunk);
    with ``norm`` q and k are l2-normalised inside the kernels (gradients through the norm included);
    ``precision``: the dots' input precision for fp32 operands, forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, lam, h0, table, scale, chunk_size, official, norm, precision):
        o, h, ht, _ = chunk_forward(
            q, k, v, g, beta, lam, h0, table, scale, chunk_size, official, norm=norm, precision=precision
        )
        h_last = h[table.last]  # the official final state is rebuilt from it
        if any(ctx.needs_input_grad[:7]):
            ctx.save_for_backward(q, k, v, g, beta, lam, h0)
        ctx.meta = (table, scale, chunk_size, official, norm, precision)
        return o, ht, h_last

    @staticmethod
    def backward(ctx, do, dht, dh_last):
        q, k, v, g, beta, lam, h0 = ctx.saved_tensors
        table, scale, chunk_size, official, norm, precision = ctx.meta
        _, _, _, forward = chunk_forward(
            q, k, v, g, beta, lam, h0, table, scale, chunk_size, official,
            store_inverse=True, norm=norm, precision=precision, output=False,
        )  # fmt: skip
        N, (H, K, V) = table.num_sequences, forward[6].shape[1:]

        def zero_state(d):
            return torch.zeros(N, H, K, V, dtype=torch.float32, device=q.device) if d is None else d.float()

        saved = {
            "inputs": (q, k, v, g, beta, lam),
            "forward": forward,
            "table": table,
            "scale": scale,
            "official": official,
            "dot_precision": precision,
        }
        dq, dk, dv, dg, dbeta, dlam, dh0 = chunk_backward(saved, do, zero_state(dht), zero_state(dh_last))
        return dq, dk, dv, dg, dbeta, dlam, None if h0 is None else dh0, None, None, None, None, None, None


def _official_final(q, k, v, g, beta, lam, h_last, table: ChunkTable, scale: float, norm: bool) -> OfficialState:
    """Rebuild the official in-chunk state after each sequence's last chunk (PyTorch, differentiable;
    with ``norm`` the last chunk's q and k rows are l2-normalised here). Sequences whose last chunks
    have the same length take one chunk step together, their heads side by side (a dense batch: one
    step, not one per sequence)."""
    by_length: dict = {}
    for n, ((_, end), first) in enumerate(zip(table.bounds, table.last_bos)):
        by_length.setdefault(end - first, []).append(n)
    H, f32, N = q.shape[1], torch.float32, len(table.bounds)
    width = table.bounds[0][1]
    # a dense batch (N rows of one length, back to back): the last chunks are one strided view
    rows_of_one_length = all(b == (n * width, (n + 1) * width) for n, b in enumerate(table.bounds))
    order, parts = [], []
    for length, members in by_length.items():
        starts = [table.last_bos[n] for n in members]

        def rows(t):  # the members' last chunks, (len(members) * H, length, ·) fp32
            if t is None:
                return torch.zeros(len(members) * H, length, dtype=f32, device=q.device)
            if rows_of_one_length:
                first = starts[0] - members[0] * width  # the same offset in every row
                chunks = t.view(N, width, *t.shape[1:])[:, first : first + length]
            else:
                chunks = torch.stack([t[s : s + length] for s in starts])
            return chunks.transpose(1, 2).flatten(0, 1).float()

        qn, kn = (l2norm(rows(t)) if norm else rows(t) for t in (q, k))
        whole = members == list(range(members[0], members[-1] + 1))  # a slice: no index tensor
        S0 = (h_last[members[0] : members[-1] + 1] if whole else h_last[members]).flatten(0, 1)
        _, st = _chunk(
            qn, kn, rows(v), rows(g), rows(beta), rows(lam), scale, OfficialState(S0, S0, torch.zeros_like(S0), 0)
        )
        order += members
        parts.append((st, len(members)))
    tensors = [torch.cat([p[i].unflatten(0, (m, H)) for p, m in parts]) for i in range(3)]
    # made on the device (torch.full), not copied from the host: a copy would wait for the GPU
    tensors.append(torch.cat([torch.full((m,), p.offset, dtype=torch.int64, device=q.device) for p, m in parts]))
    if order != sorted(order):  # back to sequence order (one index copied to the device)
        index = torch.tensor(sorted(range(len(order)), key=order.__getitem__), device=q.device)
        tensors = [t[index] for t in tensors]
    return OfficialState(*tensors)


def chunk_qdelta_triton(inp: Inputs, chunk_size: int, output_final_state: bool, precision: str = "tf32"):
    """Run a prepared call (see :func:`supports`) on Triton; returns (o, final state or None).
    ``precision``: "tf32" or "ieee", the dots' input precision for fp32 inputs (:func:`dot_precision`)."""
    dots = dot_precision(precision, inp.q.dtype)
    B, T, H, K = inp.q.shape
    V = inp.v.shape[-1]
    flat = lambda t: None if t is None else t.reshape((B * T,) + t.shape[2:]).contiguous()  # noqa: E731
    q, k, v, g, beta, lam = map(flat, (inp.q, inp.k, inp.v, inp.g, inp.beta, inp.lam))
    bounds = [(b * T + s, b * T + e) for b, s, e in inp.sequence_bounds()]
    official = inp.variant == "official"
    size = OFFICIAL_CHUNK if official else chunk_size
    table = chunk_table(tuple(bounds), size, str(q.device))
    h0 = inp.initial_state
    if isinstance(h0, OfficialState):
        h0 = h0.state
    if h0 is not None:
        h0 = h0.float().contiguous()
    norm = inp.qk_l2norm
    o, ht, h_last = _ChunkQDelta.apply(q, k, v, g, beta, lam, h0, table, inp.scale, size, official, norm, dots)
    o = o.reshape(B, T, H, V)
    if not output_final_state:
        return o, None
    if official:
        return o, _official_final(q, k, v, g, beta, lam, h_last, table, inp.scale, norm)
    return o, ht
