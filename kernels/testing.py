"""Random Q-Delta inputs for tests and benchmarks (seeded; never zeros)."""

from __future__ import annotations

from typing import Dict, Optional

import torch


def random_inputs(
    B: int,
    T: int,
    H: int,
    K: int,
    V: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    with_decay: bool = True,
    with_lam: bool = True,
    with_initial_state: bool = True,
    num_sequences: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """Keyword arguments for the Q-Delta ops, drawn from a seeded generator.

    q, k ~ N(0, 1) (pass ``use_qk_l2norm=True`` as the layer does); v ~ N(0, 1);
    g = log(alpha) with alpha in (0.6, 1); beta, lam ~ U(0.05, 0.95); initial state ~ N(0, 0.5).
    ``num_sequences`` sets N for the initial state (defaults to B).
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape, low=None, high=None):
        if low is None:
            x = torch.randn(*shape, generator=gen, dtype=torch.float64)
        else:
            x = low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)
        return x.to(device=device, dtype=dtype)

    out = dict(q=draw(B, T, H, K), k=draw(B, T, H, K), v=draw(B, T, H, V), beta=draw(B, T, H, low=0.05, high=0.95))
    if with_decay:
        out["g"] = draw(B, T, H, low=0.6, high=1.0).log()
    if with_lam:
        out["lam"] = draw(B, T, H, low=0.05, high=0.95)
    if with_initial_state:
        N = B if num_sequences is None else num_sequences
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        out["initial_state"] = (0.5 * torch.randn(N, H, K, V, generator=gen, dtype=torch.float64)).to(
            device=device, dtype=state_dtype
        )
    return out
