"""Fused glue for the GPU path: flash-linear-attention's Triton modules around the Q-Delta op (DESIGN §3.7).

On CUDA tensors, when ``fla`` (fla-core 0.6, ``pip install 'qdelta[gpu]'``) is importable, the modules
of :mod:`qdelta.short_conv`, :mod:`qdelta.norms`, :mod:`qdelta.blocks` and the loss of
:mod:`qdelta.modeling` call the functions below instead of their eager PyTorch code:

| eager module (the reference) | fused function | fla-core 0.6 kernel |
|---|---|---|
| ``ShortConvolution`` (causal depthwise conv + SiLU, packed, with state) | :func:`short_conv` | ``causal_conv1d`` (fwd/bwd), ``causal_conv1d_update`` (decode step) |
| ``RMSNorm`` (optionally after the residual add) | :func:`rms_norm` | ``rms_norm`` (residual, prenorm) |
| ``GatedRMSNorm`` | :func:`gated_rms_norm` | ``rms_norm_gated`` |
| ``SwiGLU`` (``down(silu(gate) * up)``) | :func:`swiglu_down` | ``swiglu_linear`` (recomputes the product in backward) |
| ``RecurrentMixer.gates`` (g, beta, lam from three projections) | :func:`gates` (one projection) | ours: ``qdelta.kernels.triton.gates`` (no fla needed) |
| next-token cross-entropy | :func:`cross_entropy` | ``FusedCrossEntropyLoss`` (fp32 inside the kernel, no fp32 logits; the gradient overwrites the logits) |

Each computes the eager module's function (tested in fp32 to 1e-5 relative, and gradients, in
``tests/models/test_model_fused.py`` on a GPU). The choice is per call and logged once:
:func:`enabled` is true for CUDA tensors with ``fla`` importable unless ``QDELTA_FUSED=0`` is set
or the code runs inside :func:`eager`. CPU tensors always take the eager path, so CI needs no GPU
package. State layouts: ours keeps the last ``W-1`` conv inputs ``(N, D, W-1)``, fla's the last ``W``
``(N, D, W)`` with the oldest column unread; :func:`to_fla_state` / :func:`from_fla_state` convert.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from .packing import Packing

logger = logging.getLogger(__name__)

INSTALL = "pip install 'qdelta[gpu]'  (fla-core==0.6.0 and einops)"
_disabled_depth = 0


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether fla-core's modules import (cached; logs the version once)."""
    try:
        import fla
        import fla.modules  # noqa: F401
    except ImportError as err:
        logger.info("qdelta: fused glue unavailable (%s); the GPU path uses eager PyTorch. Install: %s", err, INSTALL)
        return False
    # With flash-linear-attention installed, ``import fla`` also imports ``fla.models``, which registers its
    # gated_deltanet / delta_net / transformer configs with transformers' Auto classes over ours: take ours back.
    from .modeling import _register

    _register()
    logger.info("qdelta: fused glue from fla-core %s on CUDA tensors", getattr(fla, "__version__", "?"))
    return True


def enabled(x: torch.Tensor, needs_fla: bool = True) -> bool:
    """True when calls on ``x`` take the fused path: CUDA, not disabled, and fla importable (unless the
    caller's kernel is ours: ``needs_fla=False``)."""
    on = x.is_cuda and _disabled_depth == 0 and os.environ.get("QDELTA_FUSED", "1") != "0"
    return on and (not needs_fla or available())


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run the eager PyTorch path inside the block, also on CUDA (reference checks, benchmarks)."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


def to_fla_state(state: torch.Tensor) -> torch.Tensor:
    """Our conv state (N, D, W-1) -> fla's (N, D, W): a zero column in front (fla never reads it)."""
    return F.pad(state, (1, 0))


def from_fla_state(state: torch.Tensor) -> torch.Tensor:
    """fla's conv state (N, D, W) -> ours (N, D, W-1): the last ``W-1`` inputs."""
    return state[..., 1:].contiguous()


def short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    packing: Packing,
    state: Optional[torch.Tensor] = None,
    output_state: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``silu(causal depthwise conv(x))`` on packed tokens, as :class:`qdelta.short_conv.ShortConvolution`.

    Args:
        x: (1, total, D) packed tokens.
        weight: (D, 1, W) the convolution weight.
        packing: where the rows' tokens sit; dense input runs as (N, T, D) without ``cu_seqlens``.
        state: (N, D, W-1) the last ``W-1`` inputs of each row's previous call, or None (zeros).
        output_state: also return the new (N, D, W-1) state.

    Returns:
        (y (1, total, D) in x's dtype, new state or None).
    """
    from fla.modules.causal_conv1d.ops import causal_conv1d, causal_conv1d_update

    N, D = packing.batch, x.shape[-1]
    w = weight[:, 0, :]  # (D, W)
    initial = None if state is None else to_fla_state(state.to(x.dtype))
    if packing.single_token and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        cache = initial if initial is not None else x.new_zeros(N, D, w.shape[1])
        y, cache = causal_conv1d_update(x=x, cache=cache, weight=w, activation="silu")  # updates cache in place
        return y, (from_fla_state(cache) if output_state else None)
    if packing.dense:
        xs, bounds = x.view(N, packing.width, D), {}
    else:  # the host copy spares fla's chunk indexing a read back from the device (a wait per layer)
        xs, bounds = x, {"cu_seqlens": packing.cu_seqlens, "cu_seqlens_cpu": packing.cu_seqlens_host}
    y, final = causal_conv1d(
        x=xs, weight=w, initial_state=initial, output_final_state=output_state, activation="silu", **bounds
    )
    return y.view(x.shape), (from_fla_state(final) if output_state else None)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None
) -> torch.Tensor | Tuple[torch.Tensor, torch.Tensor]:
    """``x / rms(x) * weight`` (last dim); with ``residual``: ``s = x + residual`` normalised, returns (y, s)."""
    from fla.modules.norm.layernorm import rms_norm as fla_rms_norm

    if residual is None:
        return fla_rms_norm(x, weight, None, eps=eps)
    return fla_rms_norm(x, weight, None, residual=residual, eps=eps, prenorm=True)


def gated_rms_norm(
    x: torch.Tensor, gate: Optional[torch.Tensor], weight: torch.Tensor, eps: float, activation: str
) -> torch.Tensor:
    """``x / rms(x) * weight * act(gate)`` over the last dim (``gate=None``: plain RMSNorm)."""
    if gate is None:
        return rms_norm(x, weight, eps)
    from fla.modules.norm.fused_norm_gate import rms_norm_gated

    return rms_norm_gated(x, gate, weight, None, activation=activation, eps=eps)


def swiglu_down(gate: torch.Tensor, up: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(silu(gate) * up, down_weight)``; the product is recomputed in backward, not saved."""
    from fla.modules.activations import swiglu_linear

    return swiglu_linear(gate, up, down_weight, None)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``logits`` (B, T, V) against ``labels`` (B, T) (-100 ignored).

    Position t is scored against ``labels[:, t+1]``; the last position has no target. The logits are read
    in their dtype (fp32 math inside the kernel); no shifted or fp32 copy of them is made. As in fla's and
    the authors' models, the backward writes the logits' gradient over ``logits`` (one logits-sized
    tensor less at the peak): read the logits before ``loss.backward()``.
    """
    from fla.modules import FusedCrossEntropyLoss

    shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], 1)
    loss = FusedCrossEntropyLoss(ignore_index=-100, reduction="mean", inplace_backward=True)
    return loss(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1).to(logits.device))


def gates(x, A_log, dt_bias, has_beta: bool, has_lam: bool, lamb_bias: float, scale: float):
    """(g, beta, lam) (N, HV) fp32 from the logits x (N, C) of one projection (our Triton kernel; the
    reference is ``qdelta.layers.gate_values``)."""
    from .kernels.triton.gates import fused_gates

    return fused_gates(x, A_log, dt_bias, has_beta=has_beta, has_lam=has_lam, lamb_bias=lamb_bias, scale=scale)
