"""The cache shared by every model type: one state per layer and batch row.

Recurrent layers keep ``conv_q``, ``conv_k``, ``conv_v`` (N, D, W-1) in the model dtype (the last
``W-1`` inputs of each short convolution) and ``recurrent``: an fp32 (N, H, K, V) state, or an
:class:`~qdelta.kernels.OfficialState` for ``variant="official"``. The Transformer keeps ``key``
and ``value`` (N, H_kv, L, Dh), row n valid up to ``token_counts[n]``.

``seq_length`` counts input positions consumed (pads included: the width of every ``input_ids``
passed so far), which is what ``generate()`` needs to slice new tokens; ``token_counts`` counts
each row's real tokens. The cache is updated in place by a forward and also returned.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from .kernels import OfficialState


def _map_state(state, fn: Callable[[torch.Tensor], torch.Tensor]):
    if state is None:
        return None
    if isinstance(state, OfficialState):
        return OfficialState(*(fn(t) for t in state))
    if isinstance(state, dict):
        return {name: _map_state(value, fn) for name, value in state.items()}
    return fn(state)


class QDeltaCache:
    """Per-layer states for a batch of N rows (see the module docstring)."""

    is_compileable = False
    is_croppable = False

    def __init__(self, num_layers: int, linear_layers: Optional[List[bool]] = None):
        self.layers: List[Optional[dict]] = [None] * num_layers
        self.token_counts: Optional[torch.Tensor] = None  # (N,) int64
        self.seq_length = 0
        self.is_linear = list(linear_layers) if linear_layers is not None else [True] * num_layers

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return f"QDeltaCache(layers={len(self.layers)}, batch={self.batch_size}, seq_length={self.seq_length})"

    @property
    def batch_size(self) -> Optional[int]:
        return None if self.token_counts is None else int(self.token_counts.numel())

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """``transformers`` name for :attr:`seq_length`."""
        return self.seq_length

    def past_tokens(self, batch: int, device) -> torch.Tensor:
        """(N,) tokens each row has seen; checks that the batch matches the cache."""
        if self.token_counts is None:
            return torch.zeros(batch, dtype=torch.int64, device=device)
        if self.batch_size != batch:
            raise ValueError(
                f"the cache holds {self.batch_size} rows but the input has batch size {batch}; "
                "use cache.select(...) or cache.repeat_interleave(...) to match it"
            )
        return self.token_counts.to(device)

    def update(self, layer_states: List[dict], new_tokens: torch.Tensor, width: int) -> None:
        """Store a forward's per-layer states; ``new_tokens`` (N,) real tokens per row, ``width`` = T."""
        self.layers = list(layer_states)
        counts = new_tokens if self.token_counts is None else self.token_counts.to(new_tokens.device) + new_tokens
        self.token_counts = counts
        self.seq_length += int(width)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "QDeltaCache":
        out = QDeltaCache(len(self.layers), self.is_linear)
        out.layers = [_map_state(layer, fn) for layer in self.layers]
        out.token_counts = None if self.token_counts is None else fn(self.token_counts)
        out.seq_length = self.seq_length
        return out

    def clone(self) -> "QDeltaCache":
        """An independent deep copy."""
        return self._apply(lambda t: t.clone())

    def repeat_interleave(self, n: int) -> "QDeltaCache":
        """Each batch row repeated ``n`` times in place order (row r -> rows r*n .. r*n+n-1)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        return self._apply(lambda t: t.repeat_interleave(n, dim=0))

    def select(self, index: torch.Tensor) -> "QDeltaCache":
        """The rows ``index`` (LongTensor (M,), repeats allowed) as a new cache of M rows."""
        index = torch.as_tensor(index, dtype=torch.int64)
        if index.dim() != 1:
            raise ValueError(f"index must be a 1-D LongTensor of row numbers, got shape {tuple(index.shape)}")
        if (
            self.batch_size is not None
            and index.numel()
            and (int(index.min()) < 0 or int(index.max()) >= self.batch_size)
        ):
            raise ValueError(f"index must lie in [0, {self.batch_size}), got {index.tolist()}")
        return self._apply(lambda t: t.index_select(0, index.to(t.device)))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """In-place row selection (beam search)."""
        chosen = self.select(beam_idx)
        self.layers, self.token_counts = chosen.layers, chosen.token_counts

    def batch_repeat_interleave(self, repeats: int) -> None:
        """In-place :meth:`repeat_interleave` (``transformers`` name)."""
        grown = self.repeat_interleave(repeats)
        self.layers, self.token_counts = grown.layers, grown.token_counts

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """In-place :meth:`select` (``transformers`` name)."""
        self.reorder_cache(indices)
