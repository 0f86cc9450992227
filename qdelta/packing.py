"""Padded batches -> packed token streams (``cu_seqlens``), so pads never reach a mixer.

Every model forward turns ``input_ids (B, T)`` plus an optional ``attention_mask (B, T)``
(1 = token, 0 = pad; left or right padding, or any pattern) into one packed stream of the
valid tokens, row by row, with ``cu_seqlens`` marking the rows. Mixers see only that stream;
per-token modules (norms, MLP, head) do not care. Row ``n`` of the batch is sequence ``n``
of the cache, so a cache keeps one state per batch row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Packing:
    """Where the valid tokens of a (B, T) batch sit, and how many each row has seen before."""

    batch: int  # B
    width: int  # T
    indices: torch.Tensor  # (total,) int64 positions of valid tokens in the flattened (B*T) batch
    cu_seqlens: torch.Tensor  # (B + 1,) int64, on the model device
    lengths: torch.Tensor  # (B,) int64 valid tokens per row in this call
    past: torch.Tensor  # (B,) int64 tokens each row had seen before this call (cache)
    dense: bool  # no padding: indices == arange(B*T)
    cu_seqlens_host: torch.Tensor  # cu_seqlens on the CPU: the ops take their sequence bounds from it
    longest: int  # the most tokens a row has in this call

    @classmethod
    def from_mask(
        cls, attention_mask: Optional[torch.Tensor], batch: int, width: int, device, past: Optional[torch.Tensor] = None
    ) -> "Packing":
        """``attention_mask``: (B, T) of 0/1 (or bool) for the current tokens, or None (all valid).

        A one-token call (T = 1, a decoding step) does not read the mask: a row without its token would have
        nothing to run, so every valid mask is all ones there, and reading it would make each step wait for
        the device (and break a CUDA-graph capture). Otherwise the rows' lengths are the one value read
        back (every layer's op then takes its sequence bounds from the host copy)."""
        if past is None:
            past = torch.zeros(batch, dtype=torch.int64, device=device)
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, width):
            raise ValueError(
                f"attention_mask must have shape (B, T) = ({batch}, {width}) for the current "
                f"tokens (a 2-D 0/1 padding mask), got {tuple(attention_mask.shape)}"
            )
        counts = None
        if attention_mask is not None and width > 1:
            mask = attention_mask.to(device=device).bool()
            lengths = mask.sum(1)
            counts = lengths.tolist()  # the one read back
            if 0 in counts:
                raise ValueError(
                    f"attention_mask rows {[n for n, c in enumerate(counts) if c == 0]} have no tokens (all "
                    "padding); drop those rows or give each at least one token"
                )
        if counts is None or all(c == width for c in counts):
            counts = [width] * batch
            lengths = torch.full((batch,), width, dtype=torch.int64, device=device)
            indices = torch.arange(batch * width, device=device)
            dense = True
        else:
            indices = torch.nonzero_static(mask.flatten(), size=sum(counts)).flatten()  # size known: no sync
            dense = False
        cu = torch.zeros(batch + 1, dtype=torch.int64, device=device)
        cu[1:] = lengths.cumsum(0)
        cu_host = torch.tensor([0] + counts, dtype=torch.int64).cumsum(0)
        past = past.to(device=device, dtype=torch.int64)
        return cls(batch, width, indices, cu, lengths, past, dense, cu_host, max(counts, default=0))

    @property
    def total(self) -> int:
        return int(self.indices.numel())

    @property
    def single_token(self) -> bool:
        """Every row brings exactly one token (a decoding step)."""
        return self.width == 1 and self.dense

    def rows(self) -> torch.Tensor:
        """(total,) row (sequence) index of every packed token (a dense packing repeats by its width, a host
        number: repeating by the lengths tensor would copy it to the host first)."""
        rows = torch.arange(self.batch, device=self.lengths.device)
        if self.dense:
            return rows.repeat_interleave(self.width)
        return rows.repeat_interleave(self.lengths, output_size=self.total)  # size known: no sync

    def positions(self) -> torch.Tensor:
        """(total,) position of every packed token within its row's new tokens (0-based)."""
        rows = self.rows()
        return torch.arange(self.total, device=rows.device) - self.cu_seqlens[rows]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (1, total, ...)."""
        flat = x.reshape(self.batch * self.width, *x.shape[2:])
        return (flat if self.dense else flat.index_select(0, self.indices))[None]

    def unpack(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(1, total, ...) -> (B, T, ...), ``fill`` at pads."""
        x = x[0]
        if self.dense:
            return x.reshape(self.batch, self.width, *x.shape[1:])
        out = x.new_full((self.batch * self.width, *x.shape[1:]), fill)
        out = out.index_copy(0, self.indices, x)
        return out.reshape(self.batch, self.width, *x.shape[1:])
