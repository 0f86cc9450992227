"""Run a per-sequence reference function over a batch or a packed (``cu_seqlens``) input.

The PyTorch reference paths (token loop and chunkwise) work on one sequence at a time with
heads vectorised: tensors ``(T, H, ...)`` in the state dtype, a state ``(H, K, V)`` or, for
``variant="official"``, an :class:`OfficialState` of ``(H, K, V)`` tensors and an int offset.
"""

from __future__ import annotations

import torch

from ._inputs import OFFICIAL_CHUNK, Inputs, state_dtype
from .state import OfficialState, offset_range_error


def _initial(inp: Inputs, n: int, H: int, K: int, V: int, acc, device):
    s = inp.initial_state
    if s is None:
        s = torch.zeros(inp.num_sequences, H, K, V, dtype=acc, device=device)
    if inp.variant == "paper":
        return s[n].to(acc)
    official = s.select(n) if isinstance(s, OfficialState) else OfficialState.at_boundary(s[n : n + 1])
    offset = int(official.offset[0])
    if not 0 <= offset < OFFICIAL_CHUNK:
        raise ValueError(offset_range_error(s.offset, OFFICIAL_CHUNK))
    return OfficialState(
        official.state[0].to(acc),
        official.chunk_start[0].to(acc),
        official.x_memory[0].to(acc),
        offset,
    )


def _final(inp: Inputs, finals, device):
    if inp.variant == "paper":
        return torch.stack(finals)
    offsets = torch.tensor([f.offset for f in finals], dtype=torch.int64, device=device)
    return OfficialState(*(torch.stack([f[i] for f in finals]) for i in range(3)), offsets)


def run_per_sequence(inp: Inputs, sequence_fn, output_final_state: bool):
    """Apply ``sequence_fn(q, k, v, g, beta, lam, scale, state) -> (o, state)`` to every sequence
    (q and k l2-normalised first where the call asks for it)."""
    inp = inp.normalised()
    acc = state_dtype(inp.q.dtype)
    B, T, H, K = inp.q.shape
    V = inp.v.shape[-1]
    zeros = torch.zeros(B, T, H, dtype=acc, device=inp.q.device)
    g = zeros if inp.g is None else inp.g.to(acc)
    lam = zeros if inp.lam is None else inp.lam.to(acc)
    q, k, v, beta = (t.to(acc) for t in (inp.q, inp.k, inp.v, inp.beta))
    outputs, finals = [], []
    for n, (b, start, end) in enumerate(inp.sequence_bounds()):
        piece = lambda t: t[b, start:end]  # noqa: E731  (T_n, H, ...)
        state = _initial(inp, n, H, K, V, acc, q.device)
        o, state = sequence_fn(piece(q), piece(k), piece(v), piece(g), piece(beta), piece(lam), inp.scale, state)
        outputs.append(o)
        finals.append(state)
    if inp.cu_seqlens is None:
        o = torch.stack(outputs)
    else:
        o = torch.cat(outputs)[None]
    final = _final(inp, finals, q.device) if output_final_state else None
    return o.to(inp.q.dtype), final
