"""Recurrent Q-Delta for decoding (one or a few tokens per call).

Both variants; ``variant="official"`` carries the chunk-start state and x-memory it needs in an
:class:`~qdelta.kernels.state.OfficialState`, so decoding token by token after a prefill gives
what the authors' chunk kernel gives for the whole sequence.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from ._inputs import prepare
from ._sequences import run_per_sequence
from .naive import recurrent_sequence
from .state import OfficialState


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
) -> Tuple[torch.Tensor, Optional[Union[torch.Tensor, OfficialState]]]:
    """Q-Delta, token by token (for decoding).

    Arguments and returns as :func:`qdelta.kernels.naive_recurrent_qdelta`. Until the Triton
    recurrent kernel lands, every device runs the PyTorch token loop in fp32 state.

    Example::

        >>> q, k = (torch.randn(4, 1, 2, 16) for _ in range(2))
        >>> v, lam = torch.randn(4, 1, 2, 32), torch.rand(4, 1, 2)
        >>> state = torch.randn(4, 2, 16, 32)
        >>> o, state = fused_recurrent_qdelta(q, k, v, lam=lam, initial_state=state,
        ...                                   output_final_state=True, use_qk_l2norm=True)
        >>> o.shape
        torch.Size([4, 1, 2, 32])
    """
    inp = prepare(q, k, v, g, beta, lam, scale=scale, initial_state=initial_state,
                  use_qk_l2norm=use_qk_l2norm, cu_seqlens=cu_seqlens, variant=variant)
    return run_per_sequence(inp, recurrent_sequence, output_final_state)
