"""Triton recurrent Q-Delta for decoding: one program per (sequence, head, V block), state in registers.

Per token (DESIGN §2)::

    x = k + lam q ;  S <- exp(g) S ;  u = beta (v - S^T x) ;  S <- S + k u^T ;  o = scale S^T q

``variant="official"`` predicts with ``D^T x + P^T k`` instead of ``S^T x`` (D = decayed chunk-start
state, P = in-chunk x-memory, both decayed with S), adds ``x u^T`` to P, and at every 64th
token of a sequence resets ``D = S, P = 0`` (see :mod:`qdelta.kernels.state`).

Every V column of the state evolves on its own, so V is split across programs and the whole K
dimension lives in one block (K <= 256, V <= 512, padded to powers of two with masks), so
``use_qk_l2norm`` normalises the q and k rows in registers. The state
is read once and written once per call; ``inplace=True`` writes it over the initial state.
Forward only (decoding): calls that need gradients go to the PyTorch reference. Checked with
Triton 3.9 (TRITON_INTERPRET=1) and Triton 3.6 on an H200 (NOTES.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._inputs import OFFICIAL_CHUNK, Inputs
from ..state import OfficialState
from .chunk import MAX_K, MAX_V, TRITON_DTYPES, device_ok
from .launch import launch as _launch
from .launch import p2 as _p2
from .launch import settings


@triton.jit
def _recurrent_kernel(
    q,
    k,
    v,
    g,
    beta,
    lam,
    o,  # (T, H, K), (T, H, K), (T, H, V), (T, H) x3, (T, H, V)
    s0,
    d0,
    p0,
    st,
    dt,
    pt,  # (N, H, K, V) fp32: initial S, D, P and final S, D, P (may alias)
    seq_bos,
    offsets,  # (N + 1,) int32 first tokens (VARLEN), (N,) int64 tokens already in the official chunk
    T,
    scale,  # tokens per sequence without VARLEN
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CHUNK: tl.constexpr,
    HAS_G: tl.constexpr,
    HAS_LAM: tl.constexpr,
    HAS_S0: tl.constexpr,
    OFFICIAL: tl.constexpr,
    NORM: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """Tokens of one sequence, head and V block; with NORM q and k are l2-normalised in registers."""
    i_n, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = (i_n.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
    if HAS_S0:
        b_S = tl.load(s0 + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    else:
        b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if OFFICIAL:
        if HAS_S0:
            b_D = tl.load(d0 + p_kv, mask=m_kv, other=0.0).to(tl.float32)
            b_P = tl.load(p0 + p_kv, mask=m_kv, other=0.0).to(tl.float32)
        else:
            b_D = tl.zeros([BK, BV], dtype=tl.float32)
            b_P = tl.zeros([BK, BV], dtype=tl.float32)
        offset = tl.load(offsets + i_n)
    if VARLEN:
        bos = tl.load(seq_bos + i_n).to(tl.int64)
        eos = tl.load(seq_bos + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    for t in range(bos, eos):
        o_t = t * H + i_h
        b_q = tl.load(q + o_t * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + o_t * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        if NORM:
            b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q, 0) + 1e-6)
            b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k, 0) + 1e-6)
        b_v = tl.load(v + o_t * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + o_t).to(tl.float32)
        b_x = b_k
        if HAS_LAM:
            b_x = b_k + tl.load(lam + o_t).to(tl.float32) * b_q
        if HAS_G:
            decay = tl.exp(tl.load(g + o_t).to(tl.float32))
            b_S = b_S * decay
            if OFFICIAL:
                b_D = b_D * decay
                b_P = b_P * decay
        if OFFICIAL:
            pred = tl.sum(b_x[:, None] * b_D, 0) + tl.sum(b_k[:, None] * b_P, 0)
        else:
            pred = tl.sum(b_x[:, None] * b_S, 0)
        b_u = b_beta * (b_v - pred)
        b_S = b_S + b_k[:, None] * b_u[None, :]
        b_o = scale * tl.sum(b_q[:, None] * b_S, 0)
        tl.store(o + o_t * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
        if OFFICIAL:
            b_P = b_P + b_x[:, None] * b_u[None, :]
            offset += 1
            reset = offset == CHUNK
            b_D = tl.where(reset, b_S, b_D)
            b_P = tl.where(reset, 0.0, b_P)
            offset = tl.where(reset, 0, offset)
    tl.store(st + p_kv, b_S, mask=m_kv)
    if OFFICIAL:
        tl.store(dt + p_kv, b_D, mask=m_kv)
        tl.store(pt + p_kv, b_P, mask=m_kv)


def supports(inp: Inputs) -> bool:
    """Whether the Triton recurrent path computes this call (else the PyTorch reference does)."""
    K, V = inp.q.shape[-1], inp.v.shape[-1]
    if not (device_ok(inp.q) and inp.q.dtype in TRITON_DTYPES and K <= MAX_K and V <= MAX_V):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in _differentiable(inp)))


def _differentiable(inp: Inputs):
    yield from (t for t in (inp.q, inp.k, inp.v, inp.beta, inp.g, inp.lam) if t is not None)
    s = inp.initial_state
    if isinstance(s, OfficialState):
        yield from (t for _, t in s.tensors())
    elif s is not None:
        yield s


def fused_recurrent_qdelta_triton(inp: Inputs, output_final_state: bool, inplace: bool = False):
    """Run a prepared call on Triton; returns (o, final state or None). ``inplace`` overwrites the state."""
    launch, finish = build_launch(inp, output_final_state, inplace)
    launch()
    return finish()


def build_launch(inp: Inputs, output_final_state: bool, inplace: bool):
    """Buffers and arguments for one call: ``launch()`` runs the kernel, ``finish()`` returns (o, state).

    Split so the benchmark can time the kernel alone (``launch`` repeated on the same buffers). Dense
    input with ``inplace=True`` allocates only ``o`` and issues no other device op before the launch.
    """
    B, T, H, K = inp.q.shape
    V = inp.v.shape[-1]
    dev = inp.q.device
    q, k, v, beta = (t.contiguous() for t in (inp.q, inp.k, inp.v, inp.beta))  # the kernel indexes (B * T, H, D)
    g = None if inp.g is None else inp.g.contiguous()
    lam = None if inp.lam is None else inp.lam.contiguous()
    varlen = inp.cu_seqlens is not None
    N = inp.cu_seqlens.numel() - 1 if varlen else B
    seq_bos = inp.cu_seqlens.to(device=dev, dtype=torch.int32) if varlen else q  # q: never read without VARLEN
    official = inp.variant == "official"
    s = inp.initial_state
    if inplace and official and not isinstance(s, OfficialState):
        raise ValueError(
            "inplace=True with variant='official' needs initial_state to be an OfficialState "
            f"(its three tensors are written), got {type(s).__name__}; "
            "pass OfficialState.at_boundary(state) with separate tensors"
        )
    if official and s is not None and not isinstance(s, OfficialState):
        s = OfficialState.at_boundary(s)
    init = [s.state, s.chunk_start, s.x_memory] if official and s is not None else ([s] if s is not None else [])
    if inplace and init and not all(t.dtype == torch.float32 and t.is_contiguous() for t in init):
        raise ValueError(
            "inplace=True needs a contiguous float32 initial_state; got "
            f"{[(t.dtype, t.is_contiguous()) for t in init]}; pass .float().contiguous() first"
        )
    if not init:
        finals = [torch.empty(N, H, K, V, dtype=torch.float32, device=dev) for _ in range(3 if official else 1)]
    elif inplace:
        finals = init
    else:
        init = [t.float().contiguous() for t in init]
        finals = [torch.empty_like(t) for t in init]
    init += [finals[0]] * (3 - len(init))  # placeholders: never read without HAS_S0 / OFFICIAL
    finals += [finals[0]] * (3 - len(finals))
    if official:
        offsets = s.offset if s is not None else torch.zeros(N, dtype=torch.int64, device=dev)
    else:
        offsets = q  # never read without OFFICIAL
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=dev)
    cfg = settings("recurrent", K, V)
    grid = (N, H, -(-V // cfg["BV"]))
    args = (q, k, v, q if g is None else g, beta, q if lam is None else lam, o, *init, *finals, seq_bos, offsets, T)
    constexprs = dict(
        H=H,
        K=K,
        V=V,
        BK=_p2(K),
        CHUNK=OFFICIAL_CHUNK,
        HAS_G=g is not None,
        HAS_LAM=lam is not None,
        HAS_S0=s is not None,
        OFFICIAL=official,
        NORM=inp.qk_l2norm,
        VARLEN=varlen,
    )

    def launch():
        _launch(_recurrent_kernel, grid, cfg, *args, inp.scale, **constexprs)

    def finish():
        if not output_final_state and not inplace:
            return o, None
        if not official:
            return o, inp.initial_state if inplace else finals[0]
        if varlen:
            advance = seq_bos[1:].to(torch.int64) - seq_bos[:-1].to(torch.int64)
        else:
            advance = T
        if inplace:  # after the kernel on the stream, so it read the old offsets
            inp.initial_state.offset.add_(advance).remainder_(OFFICIAL_CHUNK)
            return o, inp.initial_state
        return o, OfficialState(finals[0], finals[1], finals[2], (offsets + advance) % OFFICIAL_CHUNK)

    return launch, finish
