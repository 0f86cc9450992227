"""RMSNorm and the gated RMSNorm of the recurrent layers' output (DESIGN §3).

Both compute in fp32 (fp64 for fp64 inputs) and return the input dtype. Parameter names (``weight``) match
flash-linear-attention's ``RMSNorm`` and ``FusedRMSNormGated`` so checkpoints load. On CUDA with fla-core
importable they run its fused kernels (:mod:`qdelta.fused`, DESIGN §3.7); the code here is the reference.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import fused


def acc(x: torch.Tensor) -> torch.Tensor:
    """``x`` in its accumulation dtype: fp32 for fp32/bf16/fp16, fp64 for fp64 (reference checks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dimension, in fp32 (fp64 for fp64 inputs)."""
    x = acc(x)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """``y = x / rms(x) * weight`` over the last dimension (size ``dim``).

    ``forward(x, residual)`` first forms ``s = x + residual`` (in x's dtype) and returns ``(y(s), s)``,
    the pre-norm block's residual add fused into the norm on the GPU path.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        if fused.enabled(x):
            return fused.rms_norm(x, self.weight, self.eps, residual)
        if residual is None:
            return self._normalize(x)
        s = residual + x
        return self._normalize(s), s

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (rms_normalize(x, self.eps) * acc(self.weight)).to(x.dtype)


GATE_FUNCTIONS = {"swish": F.silu, "silu": F.silu, "sigmoid": torch.sigmoid}


class GatedRMSNorm(nn.Module):
    """``y = x / rms(x) * weight * act(gate)`` per head: x, gate (..., dim); ``gate=None`` is plain RMSNorm.

    ``activation``: ``"swish"`` / ``"silu"`` (``gate * sigmoid(gate)``, the default) or ``"sigmoid"``,
    as flash-linear-attention's ``FusedRMSNormGated`` offers them.
    """

    def __init__(self, dim: int, eps: float = 1e-6, activation: str = "swish"):
        super().__init__()
        if activation not in GATE_FUNCTIONS:
            raise ValueError(f"activation must be one of {sorted(GATE_FUNCTIONS)}, got {activation!r}")
        self.eps, self.activation = eps, activation
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: Optional[torch.Tensor] = None) -> torch.Tensor:
        if fused.enabled(x):
            return fused.gated_rms_norm(x, gate, self.weight, self.eps, self.activation)
        y = rms_normalize(x, self.eps) * acc(self.weight)
        if gate is not None:
            y = y * GATE_FUNCTIONS[self.activation](acc(gate))
        return y.to(x.dtype)
