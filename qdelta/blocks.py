"""The pre-norm residual block shared by every model type, and its SwiGLU MLP (DESIGN §3).

    h = h + attn(attn_norm(h))
    h = h + mlp(mlp_norm(h)),   mlp(x) = down_proj( silu(gate_proj(x)) * up_proj(x) )

On CUDA with fla-core importable the residual add before ``mlp_norm`` is fused into that norm and the
MLP runs fla's ``swiglu_linear`` (:mod:`qdelta.fused`, DESIGN §3.7).

Names (``attn_norm``, ``attn``, ``mlp_norm``, ``mlp.{gate,up,down}_proj``) are the authors' and
flash-linear-attention's, so their checkpoints load.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .attention import Attention
from .configuration import mlp_intermediate_size
from .layers import RecurrentMixer
from .norms import RMSNorm
from .packing import Packing


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.enabled(x):
            return fused.swiglu_down(self.gate_proj(x), self.up_proj(x), self.down_proj.weight)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def build_mixer(config, layer_idx: int) -> nn.Module:
    if config.model_type == "transformer":
        return Attention(config, layer_idx)
    return RecurrentMixer(config, layer_idx, config.model_type)


class Block(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = build_mixer(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        width = mlp_intermediate_size(config.hidden_size, config.hidden_ratio, config.intermediate_size)
        self.mlp = SwiGLU(config.hidden_size, width)

    def forward(
        self, h: torch.Tensor, packing: Packing, state: Optional[dict] = None, use_cache: bool = False
    ) -> Tuple[torch.Tensor, Optional[dict]]:
        """h: (1, total, d) packed -> (h, the mixer's new cache state or None)."""
        mixed, new_state = self.attn(self.attn_norm(h), packing, state, use_cache)
        x, h = self.mlp_norm(mixed, residual=h)  # h = h + mixed; x = mlp_norm(h)
        h = h + self.mlp(x)
        return h, new_state
