"""Backward of the chunkwise Q-Delta op: recompute-based, mostly PyTorch (fp32), from saved chunk states.

This is NOT a full Triton backward. The Triton forward saves the state at the start of every
chunk (``h``, fp32) and each chunk's ``(I + L)^-1``; the backward then

1. gathers every chunk into a padded batch ``(NC, H, C, ·)`` (tokens past a chunk's length are
   zero, which makes them contribute nothing: beta = 0, k = q = 0, g = 0),
2. recomputes the chunk quantities (W, U', O, ...) with torch autograd recording, reusing the
   forward's ``(I + L)^-1`` (its gradient ``dL = -T^T dT T^T``; no triangular solve again),
3. runs the reverse state recurrence for ``dS`` (the gradient at every chunk boundary), linear in
   ``dS``:  ``dS0_c = r_c + gam_C dS_end_c - W_c^T diag(gam_C / gam) K_c dS_end_c`` with
   ``r_c = scale (diag(gam) Q)^T dO_c - W_c^T scale ((Q K^T) * Gam)^T dO_c`` -- the one Triton
   kernel of the backward, ``_reverse_state_kernel`` (``tf32x3`` dots: its error is carried
   through every earlier chunk),
4. differentiates ``<dO, O> + <dS_end, S_end>`` per chunk with the chunk-start states held fixed
   (``S_end`` itself is never built: ``<dS_end, gam_C S0> + sum((K dS_end) * diag(to_end) U')``).

Step 4 is exact by the chain rule: ``dS_end_c`` is the total derivative of the loss with respect
to chunk c's end state. On CUDA the torch matmuls use tf32 tensor cores (``_tf32_matmuls``), as
the forward kernels' dots do.
"""
from __future__ import annotations

import contextlib

import torch
import triton

from .chunk_fwd import _reverse_state_kernel


def gather_chunks(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Tokens ``(T, H, ...)`` -> padded chunks ``(NC, H, C, ...)``; ``index`` (NC, C) with T for padding."""
    pad = torch.cat([x, x.new_zeros((1,) + x.shape[1:])], 0)
    out = pad[index]  # (NC, C, H, ...)
    return out.transpose(1, 2).contiguous()


def scatter_chunks(xc: torch.Tensor, index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Inverse of :func:`gather_chunks` for a gradient: ``(NC, H, C, ...)`` -> ``(T, H, ...)``."""
    flat = xc.transpose(1, 2).reshape((-1,) + xc.shape[1:2] + xc.shape[3:])
    out = flat.new_zeros((num_tokens + 1,) + flat.shape[1:])
    out.index_copy_(0, index.reshape(-1), flat)  # every real token appears once; padding -> row T
    return out[:num_tokens]


class _UnitLowerInverse(torch.autograd.Function):
    """``(I + L)^-1`` given as computed by the forward kernel; backward ``dL = -T^T dT T^T``."""

    @staticmethod
    def forward(ctx, L, inverse):
        ctx.save_for_backward(inverse)
        return inverse.clone()

    @staticmethod
    def backward(ctx, d_inverse):
        (T,) = ctx.saved_tensors
        Tt = T.transpose(-1, -2)
        return -(Tt @ d_inverse @ Tt), None


def chunk_function(q, k, v, g, beta, lam, S0, scale, official, inverse):
    """All chunks at once. q, k (NC, H, C, K); v (NC, H, C, V); g, beta, lam (NC, H, C); S0 (NC, H, K, V);
    inverse (NC, H, C, C) = (I + L)^-1 from the forward kernel (exact triangular solve, fp32).

    Returns o (NC, H, C, V), U' (NC, H, C, V), and W, A, gam, to_end for the state recurrence; the
    end state ``S_C = gam_C S0 + K^T diag(to_end) U'`` is left to :func:`chunk_backward`.
    """
    C = q.shape[2]
    x = k + lam[..., None] * q
    G = g.cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    Gam = torch.where(causal, G[..., :, None] - G[..., None, :], float("-inf")).exp()
    gam = G.exp()[..., None]
    pairing = k @ x.transpose(-1, -2) if official else x @ k.transpose(-1, -2)
    L = (beta[..., None] * pairing * Gam).tril(-1)
    rhs = torch.cat([beta[..., None] * v, (beta[..., None] * gam) * x], -1)
    sol = _UnitLowerInverse.apply(L, inverse) @ rhs
    U, W = sol[..., : v.shape[-1]], sol[..., v.shape[-1]:]
    Up = U - W @ S0
    A = (q @ k.transpose(-1, -2)) * Gam
    o = scale * (gam * (q @ S0) + A @ Up)
    to_end = (G[..., -1:] - G).exp()[..., None]
    return o, Up, W, A, gam, to_end


def reverse_state_pass(chunks, W, A, gam, to_end, dO, dfinal, dh_last, seq_chunks, scale):
    """dS_end for every chunk and d(initial state), by the Triton reverse state kernel."""
    with torch.no_grad():
        q, k = chunks[0], chunks[1]
        r = scale * (gam * q).transpose(-1, -2) @ dO - W.transpose(-1, -2) @ (scale * A.transpose(-1, -2) @ dO)
        NC, H, C, K = q.shape
        V = dO.shape[-1]
        N = dfinal.shape[0]
        dS_end = torch.empty(NC, H, K, V, dtype=torch.float32, device=q.device)
        dh0 = torch.empty_like(dfinal)
        BK = max(16, triton.next_power_of_2(K))
        BV = min(32 if BK >= 256 else 64, max(16, triton.next_power_of_2(V)))
        _reverse_state_kernel[(triton.cdiv(V, BV), N, H)](
            k.contiguous(), W.contiguous(), r.contiguous(), gam[..., -1, 0].contiguous(),
            to_end[..., 0].contiguous(), dfinal.contiguous(), dh_last.contiguous(), seq_chunks, dS_end, dh0,
            H=H, K=K, V=V, C=C, BC=max(16, triton.next_power_of_2(C)), BK=BK, BV=BV,
            num_warps=8 if BK >= 256 else 4, num_stages=1 if BK >= 256 else 3,
        )
    return dS_end, dh0


@contextlib.contextmanager
def _tf32_matmuls():
    """The backward's fp32 matmuls on tf32 tensor cores (as the forward kernels' dots); restored after."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def chunk_backward(saved, do, dfinal, dh_last):
    """Gradients (dq, dk, dv, dg, dbeta, dlam, dh0) for tokens laid out (T, H, ·); see the module doc."""
    q, k, v, g, beta, lam, h, inverse = saved["tensors"]
    index, seq_chunks, scale, official = saved["index"], saved["seq_chunks"], saved["scale"], saved["official"]
    T = q.shape[0]
    C = index.shape[1]
    chunks = [gather_chunks(t.to(torch.float32), index) for t in (q, k, v, g, beta, lam)]
    dO = gather_chunks(do.to(torch.float32), index)
    with torch.enable_grad(), _tf32_matmuls():
        leaves = [t.requires_grad_(True) for t in chunks]
        o, Up, W, A, gam, to_end = chunk_function(*leaves, h, scale, official, inverse[..., :C, :C])
        parts = [t.detach() for t in (W, A, gam, to_end)]
        dS_end, dh0 = reverse_state_pass(chunks, *parts, dO, dfinal, dh_last, seq_chunks, scale)
        # <dS_end, S_end> without building S_end (NC, H, K, V) in the graph:
        #   <dS_end, gam_C S0> + sum((K dS_end) * diag(to_end) U'), with dS_end and S0 held fixed
        with torch.no_grad():
            c0 = torch.einsum("nhkv,nhkv->nh", dS_end, h)
        k_leaf = leaves[1]
        surrogate = ((o * dO).sum() + (gam[..., -1, 0] * c0).sum()
                     + ((k_leaf @ dS_end) * (to_end * Up)).sum())
        grads = torch.autograd.grad(surrogate, leaves)
    return [scatter_chunks(gr, index, T) for gr in grads] + [dh0]
