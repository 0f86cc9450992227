"""Gated linear attention, the plain recurrence behind the ``linear_attn`` baseline.

Per token, with ``q, k: [B,T,H,K]``, ``v: [B,T,H,V]``, log-decay ``g: [B,T,H]`` (None = 0) and
state ``S: [N,H,K,V]`` kept in fp32::

    S_t = exp(g_t) S_{t-1} + k_t v_t^T ;   o_t = scale * S_t^T q_t

computed chunk by chunk (``G`` the in-chunk cumulative gate, ``Gam_ij = exp(G_i - G_j)``)::

    O   = scale * ( diag(exp(G)) Q S0 + ((Q K^T) * Gam * lower_incl) V )
    S_C = exp(G_C) S0 + K^T diag(exp(G_C - G)) V

The result does not depend on the chunk size, so decoding calls the same function with T = 1.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def _sequence(q, k, v, g, scale, state, chunk_size):
    """One sequence: q, k (H, T, K); v (H, T, V); g (H, T); state (H, K, V) -> (o (H, T, V), state)."""
    outputs = []
    for start in range(0, q.shape[1], chunk_size):
        qc, kc, vc, gc = (t[:, start : start + chunk_size] for t in (q, k, v, g))
        C = qc.shape[1]
        G = gc.cumsum(-1)  # (H, C)
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        Gam = torch.where(causal, G[:, :, None] - G[:, None, :], float("-inf")).exp()  # (H, C, C)
        o = G.exp()[..., None] * (qc @ state) + ((qc @ kc.transpose(1, 2)) * Gam) @ vc
        outputs.append(scale * o)
        to_end = (G[:, -1:] - G).exp()[..., None]  # (H, C, 1)
        state = G[:, -1:, None].exp() * state + kc.transpose(1, 2) @ (to_end * vc)
    return torch.cat(outputs, 1), state


def chunk_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated linear attention over a batch (``cu_seqlens=None``) or a packed stream (B = 1).

    Args:
        q, k: (B, T, H, K); v: (B, T, H, V); g: (B, T, H) log decay (<= 0) or None.
        scale: read-out scale, default ``K ** -0.5``.
        initial_state: (N, H, K, V) or None (zeros); N = B, or the number of packed sequences.
        output_final_state: also return the (N, H, K, V) fp32 final state.
        cu_seqlens: (N + 1,) int64 sequence bounds in the packed stream, or None.
    Returns:
        o (B, T, H, V) in q's dtype, and the final state or None.

    Example::

        >>> q, k, v = (torch.randn(1, 10, 2, 8) for _ in range(3))
        >>> o, s = chunk_linear_attention(q, k, v, output_final_state=True)
        >>> o.shape, s.shape
        (torch.Size([1, 10, 2, 8]), torch.Size([1, 2, 8, 8]))
    """
    B, T, H, K = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K**-0.5 if scale is None else scale
    if g is None:
        g = q.new_zeros(B, T, H)
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        cu = cu_seqlens.tolist()
        bounds = [(0, cu[n], cu[n + 1]) for n in range(len(cu) - 1)]
    lengths = {end - start for _, start, end in bounds}
    if len(lengths) == 1 and len(bounds) > 1:  # equal lengths: all sequences at once, as N * H heads
        return _equal_lengths(q, k, v, g, bounds, scale, initial_state, output_final_state, chunk_size, acc)
    outputs, finals = [], []
    for n, (b, start, end) in enumerate(bounds):
        heads_first = lambda t: t[b, start:end].transpose(0, 1).to(acc)  # noqa: E731
        state = q.new_zeros(H, K, v.shape[-1], dtype=acc) if initial_state is None else initial_state[n].to(acc)
        o, state = _sequence(heads_first(q), heads_first(k), heads_first(v), heads_first(g), scale, state, chunk_size)
        outputs.append(o.transpose(0, 1))
        finals.append(state)
    o = torch.stack(outputs) if cu_seqlens is None else torch.cat(outputs)[None]
    return o.to(q.dtype), (torch.stack(finals) if output_final_state else None)


def _equal_lengths(q, k, v, g, bounds, scale, initial_state, output_final_state, chunk_size, acc):
    """The same computation as the per-sequence loop, for N sequences of one length T_n at once."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    N, T_n = len(bounds), bounds[0][2] - bounds[0][1]

    def heads_first(t):  # (B, T, H, ...) -> (N * H, T_n, ...)
        seqs = torch.stack([t[b, start:end] for b, start, end in bounds])  # (N, T_n, H, ...)
        return seqs.transpose(1, 2).reshape((N * H, T_n) + t.shape[3:]).to(acc)

    state = q.new_zeros(N * H, K, V, dtype=acc) if initial_state is None else initial_state.reshape(N * H, K, V).to(acc)
    o, state = _sequence(heads_first(q), heads_first(k), heads_first(v), heads_first(g), scale, state, chunk_size)
    o = o.reshape(N, H, T_n, V).transpose(1, 2)  # (N, T_n, H, V)
    o = o if B == N else o.reshape(1, N * T_n, H, V)
    return o.to(q.dtype), (state.reshape(N, H, K, V) if output_final_state else None)
