"""The recurrent state carried by ``variant="official"`` between calls.

The authors' chunk kernel resets its intra-chunk pairing every 64 tokens (DESIGN §2), so
continuing a sequence in the middle of a chunk needs more than the state ``S``. Writing
``S0`` for the state at the chunk start and ``G_i`` for the in-chunk cumulative gate, the
token-level statement

    u_i = beta_i ( v_i - gam_i x_i^T S0 - sum_{j<i} Gam_ij <k_i, x_j> u_j )

is carried by two extra matrices, both decayed like ``S`` at every token:

    chunk_start = gam_i S0                            (the decayed chunk-start state)
    x_memory    = sum_{j<=i, same chunk} Gam_ij x_j u_j^T

so that ``u_i = beta_i (v_i - x_i^T chunk_start - k_i^T x_memory)`` with both already decayed
by ``exp(g_i)``; ``offset`` counts the tokens already in the current chunk (0..63). At a chunk
boundary ``chunk_start = state``, ``x_memory = 0``, ``offset = 0``: a plain state tensor
means exactly that, which is why ``initial_state`` may also be a tensor for this variant.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def offset_range_error(offset: torch.Tensor, chunk: int) -> str:
    return f"initial_state.offset must lie in [0, {chunk}), got {offset.tolist()}"


class OfficialState(NamedTuple):
    state: torch.Tensor  # (N, H, K, V) fp32: S, what the read-out uses
    chunk_start: torch.Tensor  # (N, H, K, V) fp32: gam_i * S0
    x_memory: torch.Tensor  # (N, H, K, V) fp32: sum_j Gam_ij x_j u_j^T within the chunk
    offset: torch.Tensor  # (N,) int64: tokens already in the current 64-token chunk

    @classmethod
    def at_boundary(cls, state: torch.Tensor) -> "OfficialState":
        """The official state at a chunk boundary, from a plain state tensor."""
        offset = torch.zeros(state.shape[0], dtype=torch.int64, device=state.device)
        return cls(state, state, torch.zeros_like(state), offset)

    def tensors(self):
        return (("state", self.state), ("chunk_start", self.chunk_start), ("x_memory", self.x_memory))

    def check_offsets(self, num_sequences: int, chunk: int, values: bool = True) -> None:
        """The offset's dtype and shape; with ``values`` also its range, which reads it to the host (on a
        GPU a sync, so the dense decode path skips it: the reference paths check each offset they read)."""
        off = self.offset
        if not isinstance(off, torch.Tensor) or off.dtype != torch.int64 or tuple(off.shape) != (num_sequences,):
            got = f"{off.dtype} {tuple(off.shape)}" if isinstance(off, torch.Tensor) else type(off).__name__
            raise ValueError(f"initial_state.offset must be an int64 tensor of shape ({num_sequences},), got {got}")
        if values and bool(((off < 0) | (off >= chunk)).any()):
            raise ValueError(offset_range_error(off, chunk))

    def select(self, n: int) -> "OfficialState":
        """The state of sequence ``n`` alone (leading dimension kept)."""
        return OfficialState(*(t[n : n + 1] for t in self))

    @staticmethod
    def stack(parts) -> "OfficialState":
        return OfficialState(*(torch.cat(ts, 0) for ts in zip(*parts)))
