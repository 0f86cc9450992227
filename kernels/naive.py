"""Token-by-token Q-Delta: the specification every other path is tested against.

Paper semantics, per token (DESIGN §2)::

    x_t = k_t + lam_t q_t ;  S' = exp(g_t) S_{t-1} ;  u_t = beta_t (v_t - S'^T x_t)
    S_t = S' + k_t u_t^T ;   o_t = scale * S_t^T q_t

``variant="official"`` replaces the prediction ``S'^T x_t`` by the authors' 64-token chunk
hybrid, ``chunk_start^T x_t + x_memory^T k_t`` (see :mod:`qdelta.kernels.state`).
Runs in float64 when given float64 inputs; otherwise in fp32. Differentiable by autograd.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from ._inputs import OFFICIAL_CHUNK, prepare
from ._sequences import run_per_sequence
from .state import OfficialState


def recurrent_sequence(q, k, v, g, beta, lam, scale, state):
    """One sequence: q, k (T, H, K); v (T, H, V); g, beta, lam (T, H); state (H, K, V) or OfficialState."""
    official = isinstance(state, OfficialState)
    if official:
        S, D, P, offset = state
    else:
        S = state
    outputs = []
    for t in range(q.shape[0]):
        decay = g[t].exp()[:, None, None]  # (H, 1, 1)
        x = k[t] + lam[t, :, None] * q[t]  # (H, K)
        S = decay * S
        if official:
            D, P = decay * D, decay * P
            prediction = torch.einsum("hk,hkv->hv", x, D) + torch.einsum("hk,hkv->hv", k[t], P)
        else:
            prediction = torch.einsum("hk,hkv->hv", x, S)
        u = beta[t, :, None] * (v[t] - prediction)  # (H, V)
        S = S + k[t, :, :, None] * u[:, None, :]
        outputs.append(scale * torch.einsum("hk,hkv->hv", q[t], S))
        if official:
            P = P + x[:, :, None] * u[:, None, :]
            offset += 1
            if offset == OFFICIAL_CHUNK:
                D, P, offset = S, torch.zeros_like(P), 0
    final = OfficialState(S, D, P, offset) if official else S
    return torch.stack(outputs), final


def naive_recurrent_qdelta(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    lam: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
    initial_state: Optional[Union[torch.Tensor, OfficialState]] = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    variant: str = "paper",
) -> Tuple[torch.Tensor, Optional[Union[torch.Tensor, OfficialState]]]:
    """Q-Delta as a token loop in PyTorch (the reference; slow, exact, differentiable).

    Args:
        q, k: ``(B, T, H, K)`` queries and keys.
        v: ``(B, T, H, V)`` values.
        g: ``(B, T, H)`` log-space decay (alpha = exp(g)); ``None`` means no decay.
        beta: ``(B, T, H)`` write strength; ``None`` means 1.
        lam: ``(B, T, H)`` query-feedback coefficient lambda; ``None`` means 0 (Gated DeltaNet).
        scale: read-out scale; default ``K ** -0.5``.
        initial_state: ``(N, H, K, V)`` fp32 (fp64 for fp64 inputs) state per sequence, or,
            for ``variant="official"``, the :class:`OfficialState` a previous call returned.
        output_final_state: also return the state after the last token.
        use_qk_l2norm: l2-normalise q and k first (``x / sqrt(sum(x^2) + 1e-6)``).
        cu_seqlens: ``(N + 1,)`` offsets of N sequences packed in a batch of one, on any device (the
            ops read it on the host: a CPU tensor spares a GPU call that read-back).
        variant: ``"paper"`` (the exact recurrence) or ``"official"`` (the authors' 64-token
            chunk hybrid, DESIGN §2).

    Returns:
        ``o`` of shape ``(B, T, H, V)`` in q's dtype, and the final state (``(N, H, K, V)``; an
        :class:`OfficialState` for the official variant) or ``None``.

    Example::

        >>> B, T, H, K, V = 2, 10, 3, 8, 12
        >>> q, k = (torch.randn(B, T, H, K) for _ in range(2))
        >>> v = torch.randn(B, T, H, V)
        >>> beta, lam = torch.rand(B, T, H), torch.rand(B, T, H)
        >>> o, S = naive_recurrent_qdelta(q, k, v, beta=beta, lam=lam, use_qk_l2norm=True,
        ...                               output_final_state=True)
        >>> o.shape, S.shape
        (torch.Size([2, 10, 3, 12]), torch.Size([2, 3, 8, 12]))
    """
    inp = prepare(
        q,
        k,
        v,
        g,
        beta,
        lam,
        scale=scale,
        initial_state=initial_state,
        use_qk_l2norm=use_qk_l2norm,
        cu_seqlens=cu_seqlens,
        variant=variant,
    )
    return run_per_sequence(inp, recurrent_sequence, output_final_state)
