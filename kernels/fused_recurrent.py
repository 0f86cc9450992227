"""Recurrent Q-Delta for decoding (one or a few tokens per call).

Both variants; ``variant="official"`` carries the chunk-start state and x-memory it needs in an
:class:`~qdelta.kernels.state.OfficialState`, so decoding token by token after a prefill gives
what the authors' chunk kernel gives for the whole sequence.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import torch

from ._inputs import prepare
from ._sequences import run_per_sequence
from .naive import recurrent_sequence
from .state import OfficialState

_TRITON = []  # qdelta.kernels.triton once imported: on first use, as Triton reads TRITON_INTERPRET then


def _triton_package():
    if not _TRITON:
        from . import triton

        _TRITON.append(triton)
    return _TRITON[0]


def fused_recurrent_qdelta(
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
    inplace: bool = False,
) -> Tuple[torch.Tensor, Optional[Union[torch.Tensor, OfficialState]]]:
    """Q-Delta, token by token (for decoding).

    Arguments and returns as :func:`qdelta.kernels.naive_recurrent_qdelta`, plus

        inplace: write the final state over ``initial_state`` (a contiguous fp32 tensor, or for
            ``variant="official"`` an :class:`OfficialState`, offsets included) and return it.

    CUDA tensors (and CPU tensors with ``TRITON_INTERPRET=1``) run the Triton kernel of
    :mod:`qdelta.kernels.triton` (forward only); calls that need gradients, float64 inputs,
    K > 256 or V > 512 run the PyTorch token loop in fp32 state. There, a dense call (no
    ``cu_seqlens``) reads no tensor value on the host, so the official offsets' range is not
    checked; with ``inplace=True`` it allocates only ``o`` and can be captured in a CUDA graph.

    Example::

        >>> q, k = (torch.randn(4, 1, 2, 16) for _ in range(2))
        >>> v, lam = torch.randn(4, 1, 2, 32), torch.rand(4, 1, 2)
        >>> state = torch.randn(4, 2, 16, 32)
        >>> o, state = fused_recurrent_qdelta(q, k, v, lam=lam, initial_state=state,
        ...                                   output_final_state=True, use_qk_l2norm=True)
        >>> o.shape
        torch.Size([4, 1, 2, 32])
    """
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
    if inplace and initial_state is None:
        raise ValueError(
            "inplace=True writes the final state over initial_state, but initial_state is None; "
            "pass a state or drop inplace"
        )
    if inp.q.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1":  # Triton (qdelta.kernels.triton)
        kernels = _triton_package()
        if kernels.recurrent_supports(inp):
            return kernels.fused_recurrent_qdelta_triton(inp, output_final_state, inplace)
    o, final = run_per_sequence(inp, recurrent_sequence, output_final_state or inplace)
    if inplace:
        targets = initial_state if isinstance(initial_state, OfficialState) else (initial_state,)
        sources = final if isinstance(final, OfficialState) else (final,)
        if isinstance(initial_state, torch.Tensor) and isinstance(final, OfficialState):
            raise ValueError(
                "inplace=True with variant='official' needs initial_state to be an OfficialState, "
                "got a tensor; pass OfficialState.at_boundary(state)"
            )
        for dst, src in zip(targets, sources):
            dst.copy_(src)
        final = initial_state
    return o, final
