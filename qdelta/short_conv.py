"""Causal depthwise short convolution (size ``W``, no bias) followed by SiLU, on packed tokens.

``y[t] = silu( sum_{j=0}^{W-1} weight[:, 0, W-1-j] * x[t-j] )`` within each sequence; positions
before a sequence start read the sequence's conv state (the last ``W-1`` inputs of the previous
call, zeros for a fresh sequence), never a neighbouring sequence or a pad. The parameter is
``weight: [D, 1, W]`` as in ``nn.Conv1d`` / flash-linear-attention's ``ShortConvolution``.
On CUDA with fla-core importable the forward runs :func:`qdelta.fused.short_conv` (DESIGN §3.7).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .norms import acc
from .packing import Packing


class ShortConvolution(nn.Module):
    def __init__(self, dim: int, kernel_size: int = 4):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def _source_index(self, packing: Packing, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Row in ``cat([history (N*(W-1)), tokens (total)])`` holding position ``pos`` of sequence ``seq``.

        ``pos`` counts this call's tokens from 0; negative positions reach into the history.
        """
        hist = self.kernel_size - 1
        in_call = packing.batch * hist + packing.cu_seqlens[seq] + pos
        in_history = seq * hist + hist + pos
        return torch.where(pos >= 0, in_call, in_history)

    def forward(
        self, x: torch.Tensor, packing: Packing, state: Optional[torch.Tensor] = None, output_state: bool = False
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x: (1, total, D) packed; state: (N, D, W-1) or None -> (y (1, total, D), new state or None)."""
        if fused.enabled(x):  # fla's causal_conv1d on CUDA (qdelta/fused.py); below: the eager reference
            return fused.short_conv(x, self.weight, packing, state, output_state)
        W, hist, N = self.kernel_size, self.kernel_size - 1, packing.batch
        tokens = x[0]
        fresh = state is None
        if fresh:
            state = tokens.new_zeros(N, self.dim, hist)
        history = state.to(tokens.dtype).transpose(1, 2).reshape(N * hist, self.dim)
        stream = None  # (N*(W-1) + total, D), built only where it is read
        if not (packing.dense and fresh and hist > 0) or output_state:
            stream = torch.cat([history, tokens], 0)
        if packing.dense and fresh and hist > 0:
            dense = tokens.reshape(N, packing.width, self.dim).transpose(1, 2)  # (N, D, T)
            y = F.conv1d(F.pad(dense, (hist, 0)), self.weight.to(tokens.dtype), groups=self.dim)
            y = y.transpose(1, 2).reshape(1, -1, self.dim)
        else:
            seq, pos = packing.rows(), packing.positions()
            lags = torch.arange(W, device=x.device)
            index = self._source_index(packing, seq[:, None], pos[:, None] - lags)  # (total, W)
            taps = acc(self.weight[:, 0, :].flip(-1).t())  # (W, D): taps[j] multiplies x[t - j]
            y = (acc(stream[index]) * taps).sum(1).to(tokens.dtype)[None]
        new_state = None
        if output_state:
            seqs = torch.arange(N, device=x.device)[:, None]
            last = packing.lengths[:, None] - hist + torch.arange(hist, device=x.device)  # (N, W-1)
            new_state = stream[self._source_index(packing, seqs, last)].transpose(1, 2).contiguous()
        return F.silu(y), new_state
