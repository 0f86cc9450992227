"""Argument checking and normalisation shared by the three Q-Delta entry points.

Every public op calls :func:`prepare` first. It checks shapes, dtypes, devices,
``cu_seqlens``, ``initial_state`` and ``variant`` (raising ``ValueError`` /
``TypeError`` that name the argument, what was expected and what came), fills the
defaults of DESIGN §2 (``g=None`` -> no decay, ``beta=None`` -> 1, ``lam=None`` -> 0,
``scale=None`` -> K ** -0.5) and records the optional q/k l2-norm, which is left to the
path that runs the call: the Triton kernels normalise the rows in registers (nothing is copied),
the PyTorch reference paths call :meth:`Inputs.normalised` first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union

import torch

from .state import OfficialState

VARIANTS = ("paper", "official")
OFFICIAL_CHUNK = 64  # the authors' kernel fixes its chunk at 64 tokens (DESIGN §2)
L2NORM_EPS = 1e-6


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + 1e-6)`` over the last dimension, computed in fp32 or wider."""
    acc = torch.promote_types(x.dtype, torch.float32)
    y = x.to(acc)
    return (y * torch.rsqrt(y.pow(2).sum(-1, keepdim=True) + L2NORM_EPS)).to(x.dtype)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """States and gate sums are fp32 for fp32/bf16/fp16 inputs, fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class Inputs:
    """Validated inputs with defaults filled in; shapes as in DESIGN §2."""

    q: torch.Tensor  # (B, T, H, K), as given (see qk_l2norm)
    k: torch.Tensor  # (B, T, H, K)
    v: torch.Tensor  # (B, T, H, V)
    g: Optional[torch.Tensor]  # (B, T, H) or None (no decay)
    beta: torch.Tensor  # (B, T, H)
    lam: Optional[torch.Tensor]  # (B, T, H) or None (lam = 0)
    scale: float
    initial_state: Optional[Union[torch.Tensor, OfficialState]]
    cu_seqlens: Optional[torch.Tensor]  # (N + 1,) int64 on the CPU, or None
    variant: str
    qk_l2norm: bool = False  # q and k still to be l2-normalised over K (use_qk_l2norm=True)

    def normalised(self) -> "Inputs":
        """These inputs with q and k l2-normalised (eager PyTorch, differentiable; the reference paths)."""
        if not self.qk_l2norm:
            return self
        return replace(self, q=l2norm(self.q), k=l2norm(self.k), qk_l2norm=False)

    @property
    def num_sequences(self) -> int:
        return self.q.shape[0] if self.cu_seqlens is None else self.cu_seqlens.numel() - 1

    def sequence_bounds(self):
        """(batch index, start, end) of every sequence."""
        if self.cu_seqlens is None:
            return [(b, 0, self.q.shape[1]) for b in range(self.q.shape[0])]
        cu = self.cu_seqlens.tolist()
        return [(0, cu[n], cu[n + 1]) for n in range(len(cu) - 1)]


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def _check_tensor(name, t, ndim, lead, device):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}; move all inputs to one device")
    shape = t.shape
    if len(shape) != ndim or shape[: len(lead)] != lead:
        want = "[" + ",".join(str(s) for s in lead) + (",*" if ndim > len(lead) else "") + "]"
        raise ValueError(f"{name} must have shape {want} (B, T, H{', D' if ndim == 4 else ''}), got {_shape(t)}")


def _check_cu_seqlens(cu_seqlens, batch: int, length: int) -> torch.Tensor:
    if not isinstance(cu_seqlens, torch.Tensor):
        cu_seqlens = torch.as_tensor(cu_seqlens)
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
        raise ValueError(
            f"cu_seqlens must be a 1-D integer tensor [0, t1, ..., T] with at least two entries, "
            f"got dtype {cu_seqlens.dtype} and shape {_shape(cu_seqlens)}"
        )
    if batch != 1:
        raise ValueError(f"cu_seqlens packs sequences into a batch of one: q must have B = 1, got B = {batch}")
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    if cu[0].item() != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {cu[0].item()}")
    if not bool((cu[1:] > cu[:-1]).all()):
        raise ValueError(f"cu_seqlens must be strictly increasing (no empty sequences), got {cu.tolist()}")
    if cu[-1].item() != length:
        raise ValueError(f"cu_seqlens must end at T = {length} (the packed length), got {cu[-1].item()}")
    return cu


def _check_state(name, s, want_shape, device):
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(s).__name__}")
    if s.shape != tuple(want_shape):
        dims = ",".join(str(d) for d in want_shape)
        raise ValueError(f"{name} must have shape [{dims}] (N, H, K, V), got {_shape(s)}")
    if s.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 (or float64 for reference checks), got {s.dtype}")
    if s.device != device:
        raise ValueError(f"{name} is on {s.device} but q is on {device}; move it to q's device")


def prepare(q, k, v, g, beta, lam, *, scale, initial_state, use_qk_l2norm, cu_seqlens, variant) -> Inputs:
    """Check every argument of a Q-Delta op and return them normalised."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must have shape [B,T,H,K], got {_shape(q)}")
    B, T, H, K = q.shape
    device = q.device
    _check_tensor("q", q, 4, (B, T, H), device)
    _check_tensor("k", k, 4, (B, T, H, K), device)
    _check_tensor("v", v, 4, (B, T, H), device)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}; q, k and v must share one dtype")
    for name, t in (("g", g), ("beta", beta), ("lam", lam)):
        if t is not None:
            _check_tensor(name, t, 3, (B, T, H), device)
    if T == 0:
        raise ValueError("q has T = 0 tokens; pass at least one token")
    if scale is None:
        scale = K**-0.5
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a Python float, got {type(scale).__name__}")
    cu = None if cu_seqlens is None else _check_cu_seqlens(cu_seqlens, B, T)
    N = B if cu is None else cu.numel() - 1
    want = (N, H, K, v.shape[-1])
    if isinstance(initial_state, OfficialState):
        if variant != "official":
            raise TypeError(
                "initial_state is an OfficialState, which only variant='official' carries; "
                "pass its .state tensor for variant='paper'"
            )
        for name, s in initial_state.tensors():
            _check_state(f"initial_state.{name}", s, want, device)
        initial_state.check_offsets(N, OFFICIAL_CHUNK, values=cu is not None)  # dense: read by the paths that need it
    elif initial_state is not None:
        _check_state("initial_state", initial_state, want, device)
    if beta is None:
        beta = torch.ones(B, T, H, dtype=q.dtype, device=device)
    return Inputs(q, k, v, g, beta, lam, float(scale), initial_state, cu, variant, bool(use_qk_l2norm))
