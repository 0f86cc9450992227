"""Chunkwise Q-Delta (DESIGN §2, "Chunkwise form"): the PyTorch reference path.

Per chunk of C tokens from state S0, with ``G`` the in-chunk cumulative gate, ``gam = exp(G)``
and ``Gam_ij = exp(G_i - G_j)`` (i >= j)::

    X  = K + diag(lam) Q
    L  = strictly_lower( diag(beta) (X K^T) * Gam )     paper: row i pairs x_i with k_j
    U' = (I + L)^-1 diag(beta) (V - diag(gam) X S0)
    O  = scale * ( diag(gam) Q S0 + ((Q K^T) * Gam) U' )
    S_C = gam_C S0 + K^T diag(gam_C / gam) U'

``variant="official"`` pairs ``<k_i, x_j>`` instead, predicts from the chunk-start state and
the x-memory (see :mod:`qdelta.kernels.state`) and fixes chunks at 64 tokens from every
sequence start. Exact for any chunk size in the paper variant.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Optional, Tuple, Union

import torch

from ._inputs import OFFICIAL_CHUNK, prepare
from ._sequences import run_per_sequence
from .state import OfficialState

PRECISIONS = ("tf32", "ieee")  # chunk_qdelta's ``precision``: tl.dot's input_precision for fp32 inputs


def resolve_precision(precision: Optional[str]) -> str:
    """``precision`` checked; None: as torch multiplies fp32 matrices, "ieee" under
    ``torch.get_float32_matmul_precision() == "highest"`` (torch's default), "tf32" under "high" or "medium"."""
    if precision is None:
        return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'tf32', 'ieee' or None, got {precision!r}")
    return precision


def _chunk(q, k, v, g, beta, lam, scale, state):
    """One chunk: q, k (H, C, K); v (H, C, V); g, beta, lam (H, C); state as in naive."""
    official = isinstance(state, OfficialState)
    S = state.state if official else state
    C = q.shape[1]
    x = k + lam[..., None] * q  # (H, C, K)
    G = g.cumsum(-1)  # (H, C)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    Gam = torch.where(causal, G[:, :, None] - G[:, None, :], float("-inf")).exp()  # (H, C, C)
    gam = G.exp()[..., None]  # (H, C, 1)
    if official:
        pairing = k @ x.transpose(1, 2)  # <k_i, x_j>
        prediction = x @ state.chunk_start + k @ state.x_memory
    else:
        pairing = x @ k.transpose(1, 2)  # <x_i, k_j>
        prediction = x @ S
    L = (beta[..., None] * pairing * Gam).tril(-1)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    U = torch.linalg.solve_triangular(
        eye + L, beta[..., None] * (v - gam * prediction), upper=False, unitriangular=True
    )  # (H, C, V)
    o = scale * (gam * (q @ S) + ((q @ k.transpose(1, 2)) * Gam) @ U)
    to_end = (G[:, -1:] - G).exp()[..., None]  # gam_C / gam_i, (H, C, 1)
    decay = gam[:, -1:]  # (H, 1, 1)
    S = decay * S + k.transpose(1, 2) @ (to_end * U)
    if not official:
        return o, S
    offset = state.offset + C
    if offset == OFFICIAL_CHUNK:
        return o, OfficialState(S, S, torch.zeros_like(S), 0)
    x_memory = decay * state.x_memory + x.transpose(1, 2) @ (to_end * U)
    return o, OfficialState(S, decay * state.chunk_start, x_memory, offset)


def chunk_sequence(q, k, v, g, beta, lam, scale, state, chunk_size):
    """One sequence, chunk by chunk; tensors as in :func:`qdelta.kernels.naive.recurrent_sequence`."""
    T = q.shape[0]
    first = OFFICIAL_CHUNK - state.offset if isinstance(state, OfficialState) else chunk_size
    starts = [0] + list(range(first, T, chunk_size))
    heads_first = lambda t: t.transpose(0, 1)  # noqa: E731  (T, H, ...) -> (H, T, ...)
    q, k, v, g, beta, lam = map(heads_first, (q, k, v, g, beta, lam))
    outputs = []
    for start, end in zip(starts, starts[1:] + [T]):
        part = lambda t: t[:, start:end]  # noqa: E731
        o, state = _chunk(part(q), part(k), part(v), part(g), part(beta), part(lam), scale, state)
        outputs.append(o)
    return torch.cat(outputs, 1).transpose(0, 1), state


def chunk_qdelta(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    lam: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
    initial_state: Optional[Union[torch.Tensor, OfficialState]] = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    variant: str = "paper",
    chunk_size: int = 64,
    precision: Optional[str] = None,
) -> Tuple[torch.Tensor, Optional[Union[torch.Tensor, OfficialState]]]:
    """Q-Delta, chunkwise parallel (for training and prefill).

    Arguments and returns as :func:`qdelta.kernels.naive_recurrent_qdelta`, plus

        chunk_size: tokens per chunk (``>= 1``). The paper variant gives the same result for
            every chunk size; ``variant="official"`` is defined by 64-token chunks and accepts
            only ``chunk_size=64``.
        precision: how the Triton kernels multiply fp32 inputs. ``"tf32"``: their matrix
            products (``tl.dot``) on fp32 operands run in TF32 on the tensor cores (10-bit
            mantissa); fp32 inputs then land 1.8e-3 relative L2 from the float64 reference at
            K = 256 on the H200 (output; gradients up to 2.5e-3). ``"ieee"``: full fp32 products
            (slower): 4.5e-7 there (gradients up to 9.4e-7). ``None`` (default): what torch uses
            for fp32 matmuls, "ieee" unless ``torch.set_float32_matmul_precision("high")`` (or
            "medium") asked for TF32, so an fp32 model's attention multiplies as its linear layers
            do. bf16/fp16 inputs are unaffected (their kernels are the same either way); the
            PyTorch reference path computes in the inputs' dtype and ignores it.

    CUDA tensors run the Triton kernels of :mod:`qdelta.kernels.triton` (forward and
    backward); so do CPU tensors when ``TRITON_INTERPRET=1`` (the interpreter multiplies in
    fp32 whatever ``precision`` says). float64
    inputs, K > 256, V > 512, chunk_size > 64 and an official state in the middle of a chunk
    run the PyTorch reference on any device. With ``use_qk_l2norm=True`` the Triton kernels
    normalise q and k in registers (gradient included); no normalised copy is made. Precision on
    the Triton path: fp32 states and accumulation; fp32 inputs use the dots ``precision`` names,
    and bf16/fp16 inputs use 16-bit dot operands in the sequential passes.

    Example::

        >>> q, k = (torch.randn(1, 100, 2, 16) for _ in range(2))
        >>> v, g = torch.randn(1, 100, 2, 24), -torch.rand(1, 100, 2)
        >>> beta, lam = torch.rand(1, 100, 2), torch.rand(1, 100, 2)
        >>> o, _ = chunk_qdelta(q, k, v, g, beta, lam, use_qk_l2norm=True)
        >>> ref, _ = naive_recurrent_qdelta(q, k, v, g, beta, lam, use_qk_l2norm=True)
        >>> bool((o - ref).abs().max() < 1e-4)
        True
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    precision = resolve_precision(precision)
    if variant == "official" and chunk_size != OFFICIAL_CHUNK:
        raise ValueError(
            f"variant='official' is defined by the authors' {OFFICIAL_CHUNK}-token chunks; "
            f"chunk_size must be {OFFICIAL_CHUNK}, got {chunk_size}"
        )
    inp = prepare(
        q,
        k,
        v,
        g,
        beta,
        lam,
        scale=scale,
        initial_state=initial_state,
        use_qk_l2norm=use_qk_l2norm,
        cu_seqlens=cu_seqlens,
        variant=variant,
    )
    if inp.q.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1":  # Triton (qdelta.kernels.triton)
        from .triton import chunk_qdelta_triton, chunk_supports

        if chunk_supports(inp, chunk_size):
            return chunk_qdelta_triton(inp, chunk_size, output_final_state, precision)
    return run_per_sequence(inp, partial(chunk_sequence, chunk_size=chunk_size), output_final_state)
