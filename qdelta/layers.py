"""The recurrent token mixers: Q-Delta, Gated DeltaNet, DeltaNet and gated linear attention.

One class, :class:`RecurrentMixer`, builds all four from the same parts (DESIGN §3)::

    q, k = silu(conv(Linear(h)))          (H heads of K)      l2-normalised in the op
    v    = silu(conv(Linear(h)))          (HV heads of V = expand_v * K)
    beta = sigmoid(b_proj(h))             qdelta, gated_deltanet, delta_net (use_beta)
    lam  = sigmoid(lamb_proj(h) - lamb_bias)                  qdelta only
    g    = -exp(A_log) * softplus(a_proj(h) + dt_bias)        all but delta_net (and linear_attn use_decay)
    o    = o_proj( RMSNorm_head(o) * silu(g_proj(h)) )        (plain RMSNorm without use_gate;
                                                               sigmoid for output_gate_activation: sigmoid)

``allow_neg_eigval`` doubles beta (and lam for Q-Delta). Grouped values (``num_v_heads > num_heads``,
Gated DeltaNet) repeat each q/k head for its ``num_v_heads / num_heads`` value heads.
Prefill and training run ``chunk_qdelta``; a decoding step (one token per sequence) runs
``fused_recurrent_qdelta``. Inputs arrive packed, ``(1, total, d)`` with :class:`~qdelta.packing.Packing`.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .kernels import OfficialState, chunk_qdelta, fused_recurrent_qdelta, l2norm
from .kernels.linear_attention import chunk_linear_attention
from .norms import GatedRMSNorm, acc
from .packing import Packing
from .short_conv import ShortConvolution

DELTA_KINDS = ("qdelta", "gated_deltanet", "delta_net")
KINDS = DELTA_KINDS + ("linear_attn",)


def _updatable_in_place(initial, variant: str) -> bool:
    """Whether a decoding step may write its new state over the cache's (what the op's ``inplace``
    takes: an fp32 contiguous state, an :class:`OfficialState` for the official variant); only without
    autograd, which may still need the old state."""
    if torch.is_grad_enabled():
        return False
    if variant == "official":
        return isinstance(initial, OfficialState)
    return isinstance(initial, torch.Tensor) and initial.dtype == torch.float32 and initial.is_contiguous()


def init_decay_parameters(
    A_log: torch.Tensor, dt_bias: torch.Tensor, generator=None, dt_min: float = 1e-3, dt_max: float = 1e-1
) -> None:
    """flash-linear-attention's Gated DeltaNet (and the Q-Delta authors'): ``A ~ U(0, 16)`` stored as
    ``log A``, ``dt ~ logU(dt_min, dt_max)`` clamped below at 1e-4 (or dt_min if smaller), stored as
    softplus^-1(dt)."""
    with torch.no_grad():
        A = torch.empty(A_log.shape, dtype=torch.float32).uniform_(0, 16, generator=generator)
        dt = torch.exp(
            torch.rand(dt_bias.shape, generator=generator) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=min(1e-4, dt_min))
        A_log.copy_(A.log())
        dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def gate_values(a, b, lam, A_log, dt_bias, lamb_bias: float = 0.0, scale: float = 1.0):
    """The gates from their logits (each None where the gate is unused), in the accumulation dtype (fp32; fp64
    for fp64): ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = scale * sigmoid(b)``,
    ``lam = scale * sigmoid(lam - lamb_bias)``. The reference of ``qdelta.kernels.triton.gates``."""
    g = None if a is None else -acc(A_log).exp() * F.softplus(acc(a) + acc(dt_bias))
    beta = None if b is None else scale * torch.sigmoid(acc(b))
    lam = None if lam is None else scale * torch.sigmoid(acc(lam) - lamb_bias)
    return g, beta, lam


class RecurrentMixer(nn.Module):
    def __init__(self, config, layer_idx: int, kind: str):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.layer_idx = kind, layer_idx
        d, H, HV = config.hidden_size, config.num_heads, config.value_heads
        K, V = config.head_k_dim, config.head_v_dim
        self.num_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim = H, HV, K, V
        self.allow_neg_eigval = bool(config.allow_neg_eigval)
        self.variant = getattr(config, "variant", "paper") if kind == "qdelta" else "paper"
        self.lamb_bias = float(getattr(config, "lamb_bias", 0.0))
        self.use_decay = kind in ("qdelta", "gated_deltanet") or (kind == "linear_attn" and config.use_decay)
        self.use_beta = kind in ("qdelta", "gated_deltanet") or (kind == "delta_net" and config.use_beta)
        self.use_gate, self.use_short_conv = bool(config.use_gate), bool(config.use_short_conv)
        self.q_proj = nn.Linear(d, H * K, bias=False)
        self.k_proj = nn.Linear(d, H * K, bias=False)
        self.v_proj = nn.Linear(d, HV * V, bias=False)
        if self.use_decay:
            self.a_proj = nn.Linear(d, HV, bias=False)
            self.A_log = nn.Parameter(torch.empty(HV))
            self.dt_bias = nn.Parameter(torch.empty(HV))
            init_decay_parameters(self.A_log, self.dt_bias, dt_min=config.dt_min, dt_max=config.dt_max)
        if self.use_beta:
            self.b_proj = nn.Linear(d, HV, bias=False)
        if kind == "qdelta":
            self.lamb_proj = nn.Linear(d, HV, bias=False)
        if self.use_short_conv:
            self.q_conv1d = ShortConvolution(H * K, config.conv_size)
            self.k_conv1d = ShortConvolution(H * K, config.conv_size)
            self.v_conv1d = ShortConvolution(HV * V, config.conv_size)
        if self.use_gate:
            self.g_proj = nn.Linear(d, HV * V, bias=False)
        self.o_norm = GatedRMSNorm(
            V, eps=config.norm_eps, activation=getattr(config, "output_gate_activation", "swish")
        )
        self.o_proj = nn.Linear(HV * V, d, bias=False)
        self.capture: Optional[list] = None  # set to a list to record per-call internals (qdelta.stability)

    def _qkv(self, h, packing, state, use_cache):
        names = ("q", "k", "v")
        weights = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)
        if fused.enabled(h):  # one projection; fla's convolutions read the column slices as they are
            projected = F.linear(h, torch.cat(weights)).split([w.shape[0] for w in weights], dim=-1)
        else:
            projected = (self.q_proj(h), self.k_proj(h), self.v_proj(h))
        if not self.use_short_conv:
            return [F.silu(x) for x in projected], {}
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        out, conv_states = [], {}
        for name, conv, x in zip(names, convs, projected):
            y, s = conv(x, packing, None if state is None else state[f"conv_{name}"], output_state=use_cache)
            out.append(y)
            conv_states[f"conv_{name}"] = s
        return out, conv_states

    def gates(self, h: torch.Tensor):
        """(g, beta, lam) for hidden states h (1, total, d): each (1, total, HV) fp32 (fp64 for fp64 h),
        or None where unused. On the fused GPU path: one projection of h for all three and one Triton
        kernel (qdelta.kernels.triton.gates); else :func:`gate_values` of the three projections."""
        scale = 2.0 if self.allow_neg_eigval else 1.0
        has_lam = self.kind == "qdelta"
        names = [n for n, on in (("a_proj", self.use_decay), ("b_proj", self.use_beta), ("lamb_proj", has_lam)) if on]
        projections = [getattr(self, n) for n in names]
        if not projections:
            return None, None, None
        A_log, dt_bias = (self.A_log, self.dt_bias) if self.use_decay else (None, None)
        if fused.enabled(h, needs_fla=False) and h.dtype != torch.float64:
            weight = torch.cat([p.weight for p in projections]) if len(projections) > 1 else projections[0].weight
            x = F.linear(h, weight)
            gates = fused.gates(x.view(-1, x.shape[-1]), A_log, dt_bias, self.use_beta, has_lam, self.lamb_bias, scale)
            return tuple(None if t is None else t.view(*h.shape[:-1], -1) for t in gates)
        logits = iter([p(h) for p in projections])
        a = next(logits) if self.use_decay else None
        b = next(logits) if self.use_beta else None
        lam = next(logits) if has_lam else None
        return gate_values(a, b, lam, A_log, dt_bias, self.lamb_bias, scale)

    def forward(
        self, h: torch.Tensor, packing: Packing, state: Optional[dict] = None, use_cache: bool = False
    ) -> Tuple[torch.Tensor, Optional[dict]]:
        """h: (1, total, d) packed -> (out (1, total, d), the layer's new cache state or None)."""
        (q, k, v), conv_states = self._qkv(h, packing, state, use_cache)
        total = h.shape[1]
        # Dense input (no padding) runs as (B, T) rows without cu_seqlens: same function, and the ops skip
        # the varlen bookkeeping; padded input stays packed (1, total), its bounds given from the host copy
        # (a device cu_seqlens is read back by every op: a sync per layer).
        B, T = (packing.batch, packing.width) if packing.dense else (1, total)
        cu_seqlens = None if packing.dense else packing.cu_seqlens_host
        q = q.view(B, T, self.num_heads, self.head_k_dim)
        k = k.view(B, T, self.num_heads, self.head_k_dim)
        v = v.view(B, T, self.num_v_heads, self.head_v_dim)
        if self.num_v_heads != self.num_heads:
            group = self.num_v_heads // self.num_heads
            q, k = q.repeat_interleave(group, 2), k.repeat_interleave(group, 2)
        g, beta, lam = (None if t is None else t.view(B, T, -1) for t in self.gates(h))
        initial = None if state is None else state["recurrent"]
        if initial is None:  # explicit zeros: one state per packed sequence
            acc = torch.float64 if q.dtype == torch.float64 else torch.float32
            initial = q.new_zeros(packing.batch, self.num_v_heads, self.head_k_dim, self.head_v_dim, dtype=acc)
        if self.kind == "linear_attn":
            q, k = l2norm(q), l2norm(k)
            o, final = chunk_linear_attention(
                q, k, v, g, initial_state=initial, output_final_state=use_cache, cu_seqlens=cu_seqlens
            )
        else:
            # a decoding step updates the cache's state in place: the same addresses every step (a CUDA
            # graph can replay it) and no new state per layer and token
            decode = packing.single_token
            op = fused_recurrent_qdelta if decode else chunk_qdelta
            o, final = op(
                q,
                k,
                v,
                g,
                beta,
                lam,
                initial_state=initial,
                output_final_state=use_cache,
                use_qk_l2norm=True,
                cu_seqlens=cu_seqlens,
                variant=self.variant,
                **({"inplace": True} if decode and use_cache and _updatable_in_place(initial, self.variant) else {}),
            )
        if self.capture is not None:
            packed = {"q": q, "k": k, "beta": beta, "lam": lam, "g": g}  # recorded packed: (1, total, ...)
            self.capture.append(
                {n: None if t is None else t.detach().reshape(1, total, *t.shape[2:]) for n, t in packed.items()}
            )
        gate = self.g_proj(h).view(B, T, self.num_v_heads, self.head_v_dim) if self.use_gate else None
        o = self.o_norm(o, gate).reshape(1, total, self.num_v_heads * self.head_v_dim)
        new_state = {**conv_states, "recurrent": final} if use_cache else None
        return self.o_proj(o), new_state
