"""Causal softmax attention with rotary embeddings: the Transformer baseline's mixer.

Weight names follow flash-linear-attention's ``Attention``: ``q_proj``, ``k_proj``, ``v_proj``,
``o_proj`` (optional ``q_norm`` / ``k_norm`` per head), rotary in the rotate-half convention with
base ``rope_theta``. Tokens arrive packed; each sequence attends to its own cached keys and its
new tokens only. Rotary positions count each sequence's real tokens (pads take no position), so
a padded batch, a packed batch and one sequence at a time agree.

Cache state per layer: ``key``, ``value`` of shape (N, H_kv, L, Dh), row n valid for its first
``past[n]`` positions (the cache's per-row token counts).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .norms import RMSNorm, acc
from .packing import Packing


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half rotary embedding. x: (..., T, H, Dh); positions: (T,) int -> same shape as x."""
    half = x.shape[-1] // 2
    dtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(half, device=x.device, dtype=dtype) / half))
    angles = positions.to(dtype)[:, None] * inv_freq  # (T, half)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]  # (T, 1, half)
    x1, x2 = acc(x)[..., :half], acc(x)[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        d = config.hidden_size
        self.num_heads, self.kv_heads, self.head_dim = config.num_heads, config.kv_heads, config.head_dim
        self.rope_theta = float(config.rope_theta)
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)
        self.qk_norm = bool(config.qk_norm)
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.norm_eps)

    def forward(
        self, h: torch.Tensor, packing: Packing, state: Optional[dict] = None, use_cache: bool = False
    ) -> Tuple[torch.Tensor, Optional[dict]]:
        """h: (1, total, d) packed -> (out (1, total, d), new cache state or None)."""
        total, N, Dh = h.shape[1], packing.batch, self.head_dim
        q = self.q_proj(h).view(total, self.num_heads, Dh)
        k = self.k_proj(h).view(total, self.kv_heads, Dh)
        v = self.v_proj(h).view(total, self.kv_heads, Dh)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        rows, pos = packing.rows(), packing.positions()
        absolute = packing.past[rows] + pos  # (total,) position in the row's sequence
        q, k = rotary(q, absolute, self.rope_theta), rotary(k, absolute, self.rope_theta)
        group = self.num_heads // self.kv_heads
        if state is None and packing.dense:
            shape = (N, packing.width)
            qd, kd, vd = (t.view(*shape, -1, Dh).transpose(1, 2) for t in (q, k, v))  # (N, H, T, Dh)
            o = F.scaled_dot_product_attention(
                qd, kd.repeat_interleave(group, 1), vd.repeat_interleave(group, 1), is_causal=True
            )
            out = o.transpose(1, 2).reshape(1, total, -1)
            new_state = {"key": kd, "value": vd} if use_cache else None
            return self.o_proj(out), new_state
        # The cache grows by this call's width: a row has at most that many new tokens, and no row's past
        # is beyond the cache's width (host numbers: no sync). A row's positions past its own length are
        # masked below (left padding; a cache narrowed by select()).
        Tq = packing.longest
        width = Tq if state is None else state["key"].shape[2] + packing.width
        keys = k.new_zeros(N, self.kv_heads, width, Dh)  # k's dtype: under autocast it is not h's
        values = v.new_zeros(N, self.kv_heads, width, Dh)
        if state is not None:
            old = state["key"].shape[2]
            keys[:, :, :old], values[:, :, :old] = state["key"].to(k.dtype), state["value"].to(v.dtype)
        keys[rows, :, absolute] = k
        values[rows, :, absolute] = v
        queries = q.new_zeros(N, Tq, self.num_heads, Dh)
        queries[rows, pos] = q
        query_pos = packing.past[:, None] + torch.arange(Tq, device=h.device)  # (N, Tq)
        allowed = torch.arange(width, device=h.device)[None, None, :] <= query_pos[:, :, None]  # (N, Tq, L)
        o = F.scaled_dot_product_attention(
            queries.transpose(1, 2),
            keys.repeat_interleave(group, 1),
            values.repeat_interleave(group, 1),
            attn_mask=allowed[:, None],
        )
        out = o.transpose(1, 2)[rows, pos].reshape(1, total, -1)  # (1, total, H * Dh)
        new_state = {"key": keys, "value": values} if use_cache else None
        return self.o_proj(out), new_state
