"""The recurrent mixers' gates as one Triton kernel each way (DESIGN §3.7).

From the logits ``x`` (N, C) of one projection of the hidden states, its columns ``[a | b | l]`` (each HV
wide, those present in that order), in fp32:

    g    = -exp(A_log) * softplus(a + dt_bias)     (has_g)
    beta = scale * sigmoid(b)                     (has_beta)
    lam  = scale * sigmoid(l - lamb_bias)         (has_lam)

``softplus`` as torch's (``z > 20`` passes through, else ``log1p(exp(z))``). The backward writes the
logits' gradient in their dtype and sums the gradients of ``A_log`` and ``dt_bias`` over the tokens.
:func:`fused_gates` replaces, on CUDA tensors, the eager formula of ``qdelta.layers.gate_values`` (the
reference): one launch forward and one backward instead of about 25 and 45 aten ops per layer.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

BN = 64  # tokens per program


@triton.jit
def _log1p(e):
    """log(1 + e) for e >= 0, accurate for small e (Goldberg: log(u) * e / (u - 1), u = 1 + e)."""
    u = 1.0 + e
    exact = u == 1.0
    return tl.where(exact, e, tl.log(u) * e / tl.where(exact, 1.0, u - 1.0))


@triton.jit
def _rows(N, C: tl.constexpr, HV: tl.constexpr, BH: tl.constexpr, BN: tl.constexpr):
    """Offsets of this program's BN tokens: into x (N, C), into an output (N, HV); the head offsets and masks."""
    o_n = tl.program_id(0) * BN + tl.arange(0, BN)
    o_h = tl.arange(0, BH)
    m_h = o_h < HV
    m = (o_n < N)[:, None] & m_h[None, :]
    return o_n.to(tl.int64)[:, None] * C + o_h[None, :], o_n.to(tl.int64)[:, None] * HV + o_h[None, :], o_h, m_h, m


@triton.jit
def _decay_logits(x, p_x, A_log, dt_bias, o_h, m_h, m):
    """exp(A_log), z = a + dt_bias and softplus(z) (fp32) of this program's rows."""
    A = tl.exp(tl.load(A_log + o_h, mask=m_h, other=0.0).to(tl.float32))
    z = tl.load(x + p_x, mask=m, other=0.0).to(tl.float32)
    z += tl.load(dt_bias + o_h, mask=m_h, other=0.0).to(tl.float32)[None, :]
    return A, z, tl.where(z > 20.0, z, _log1p(tl.exp(tl.minimum(z, 20.0))))


@triton.jit
def _gates_fwd_kernel(
    x,  # (N, C) logits, any float dtype
    A_log,
    dt_bias,  # (HV,)
    g_out,
    beta_out,
    lam_out,  # (N, HV) fp32
    N,
    lamb_bias,
    scale,
    C: tl.constexpr,
    HV: tl.constexpr,
    BH: tl.constexpr,
    BN: tl.constexpr,
    COL_BETA: tl.constexpr,
    COL_LAM: tl.constexpr,  # first columns of b and l in x (a starts at 0)
    HAS_G: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_LAM: tl.constexpr,
):
    p_x, p_o, o_h, m_h, m = _rows(N, C, HV, BH, BN)
    if HAS_G:
        A, z, softplus = _decay_logits(x, p_x, A_log, dt_bias, o_h, m_h, m)
        tl.store(g_out + p_o, -A[None, :] * softplus, mask=m)
    if HAS_BETA:
        b = tl.load(x + p_x + COL_BETA, mask=m, other=0.0).to(tl.float32)
        tl.store(beta_out + p_o, scale * tl.sigmoid(b), mask=m)
    if HAS_LAM:
        z = tl.load(x + p_x + COL_LAM, mask=m, other=0.0).to(tl.float32) - lamb_bias
        tl.store(lam_out + p_o, scale * tl.sigmoid(z), mask=m)


@triton.jit
def _gates_bwd_kernel(
    x,  # (N, C) logits
    A_log,
    dt_bias,  # (HV,)
    dg,
    dbeta,
    dlam,  # (N, HV) fp32 gradients of the outputs
    dx,  # (N, C) out, x's dtype
    partial,  # (programs, 2, BH) fp32 out: per program, the sums over its tokens for A_log and dt_bias
    N,
    lamb_bias,
    scale,
    C: tl.constexpr,
    HV: tl.constexpr,
    BH: tl.constexpr,
    BN: tl.constexpr,
    COL_BETA: tl.constexpr,
    COL_LAM: tl.constexpr,  # first columns of b and l in x (a starts at 0)
    HAS_G: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_LAM: tl.constexpr,
):
    p_x, p_o, o_h, m_h, m = _rows(N, C, HV, BH, BN)
    if HAS_G:
        A, z, softplus = _decay_logits(x, p_x, A_log, dt_bias, o_h, m_h, m)
        d = tl.load(dg + p_o, mask=m, other=0.0)
        dz = tl.where(z > 20.0, 1.0, tl.sigmoid(tl.minimum(z, 20.0))) * (-A[None, :] * d)
        tl.store(dx + p_x, dz.to(dx.dtype.element_ty), mask=m)
        p_partial = partial + tl.program_id(0) * 2 * BH + o_h
        tl.store(p_partial, tl.sum(tl.where(m, -A[None, :] * softplus * d, 0.0), 0))  # dg/dA_log = g
        tl.store(p_partial + BH, tl.sum(tl.where(m, dz, 0.0), 0))
    if HAS_BETA:
        s = tl.sigmoid(tl.load(x + p_x + COL_BETA, mask=m, other=0.0).to(tl.float32))
        d = tl.load(dbeta + p_o, mask=m, other=0.0)
        tl.store(dx + p_x + COL_BETA, (scale * d * s * (1.0 - s)).to(dx.dtype.element_ty), mask=m)
    if HAS_LAM:
        s = tl.sigmoid(tl.load(x + p_x + COL_LAM, mask=m, other=0.0).to(tl.float32) - lamb_bias)
        d = tl.load(dlam + p_o, mask=m, other=0.0)
        tl.store(dx + p_x + COL_LAM, (scale * d * s * (1.0 - s)).to(dx.dtype.element_ty), mask=m)


def _launch(kernel, x: torch.Tensor, HV: int, has, given, tensors, lamb_bias: float, scale: float) -> None:
    """``kernel`` over x's rows: ``has`` = the gates in x's columns, ``given`` = the gates to compute."""
    N, C = x.shape
    BH = _block_h(HV)
    cols = dict(COL_BETA=HV * has[0], COL_LAM=HV * (has[0] + has[1]))
    flags = dict(HAS_G=given[0], HAS_BETA=given[1], HAS_LAM=given[2])
    kernel[(triton.cdiv(N, BN),)](*tensors, N, lamb_bias, scale, C=C, HV=HV, BH=BH, BN=BN, **cols, **flags)


def _block_h(HV: int) -> int:
    """The head tile: HV padded to a power of two, at least 16."""
    return max(16, 1 << max(HV - 1, 0).bit_length())


class _Gates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, A_log, dt_bias, lamb_bias: float, scale: float, has: Tuple[bool, bool, bool]):
        N, C = x.shape
        HV = C // sum(has)
        outs = [torch.empty(N, HV, dtype=torch.float32, device=x.device) if h else None for h in has]
        unused = next(o for o in outs if o is not None)  # stands in for absent pointers (never read)
        A_log, dt_bias = (x if t is None else t for t in (A_log, dt_bias))
        tensors = (x, A_log, dt_bias) + tuple(unused if o is None else o for o in outs)
        _launch(_gates_fwd_kernel, x, HV, has, has, tensors, lamb_bias, scale)
        ctx.save_for_backward(x, A_log, dt_bias)
        ctx.meta = (lamb_bias, scale, has, HV)
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    def backward(ctx, dg, dbeta, dlam):
        x, A_log, dt_bias = ctx.saved_tensors
        lamb_bias, scale, has, HV = ctx.meta
        grads = [None if d is None else d.contiguous() for d in (dg, dbeta, dlam)]
        given = tuple(h and d is not None for h, d in zip(has, grads))
        if not any(given):
            return (None,) * 6
        unused = next(d for d in grads if d is not None)
        dx = torch.empty_like(x) if given == has else torch.zeros_like(x)  # a gate without gradient: zeros
        partial = torch.empty(triton.cdiv(x.shape[0], BN), 2, _block_h(HV), dtype=torch.float32, device=x.device)
        tensors = (x, A_log, dt_bias) + tuple(unused if d is None else d for d in grads) + (dx, partial)
        _launch(_gates_bwd_kernel, x, HV, has, given, tensors, lamb_bias, scale)
        dA = ddt = None
        if given[0]:
            sums = partial.sum(0)[:, :HV]
            dA, ddt = sums[0].to(A_log.dtype), sums[1].to(dt_bias.dtype)
        return dx, dA, ddt, None, None, None


def fused_gates(
    x: torch.Tensor,
    A_log: Optional[torch.Tensor],
    dt_bias: Optional[torch.Tensor],
    *,
    has_beta: bool,
    has_lam: bool,
    lamb_bias: float = 0.0,
    scale: float = 1.0,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(g, beta, lam), each (N, HV) fp32 or None where absent, from logits ``x`` (N, C) (module docstring);
    ``A_log`` and ``dt_bias`` (HV,) given for the decay gate, None without it."""
    has = (A_log is not None, has_beta, has_lam)
    if (dt_bias is None) != (A_log is None):
        raise ValueError("A_log and dt_bias come together (the decay gate) or not at all")
    if not any(has):
        return None, None, None
    if x.dim() != 2 or x.shape[1] % sum(has) or (has[0] and x.shape[1] != A_log.shape[0] * sum(has)):
        raise ValueError(f"logits of shape {tuple(x.shape)} do not hold {sum(has)} gates of the heads given")
    return _Gates.apply(x.contiguous(), A_log, dt_bias, float(lamb_bias), float(scale), has)
