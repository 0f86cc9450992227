"""Per-layer, per-head stability diagnostics of a recurrent checkpoint (DESIGN §2, "Stability").

With l2-normalised ``k``, ``q`` and ``x = k + lam q``, ``a_t = k_t^T x_t``. The un-gated step
contracts the mixed error when ``beta_t a_t`` lies in (0, 2), at rate ``rho = sup |1 - beta_t a_t|``.
For one long input this module measures, per layer and head:

    beta*a  quantiles (min, 1 %, median, 99 %, max) over tokens
    outside share of tokens with beta*a outside (0, 2)
    rho     max over tokens of |1 - beta*a|      (< 1 means contraction on every token)
    lam     quantiles (Q-Delta only; lam = 0 for Gated DeltaNet / DeltaNet)
    alpha   mean decay exp(g) (1 without decay)
    state   Frobenius norm of the recurrent state after each piece of the input, and its growth
            (last / first)

The input runs through the model in pieces with the cache, exactly as in decoding, so the state
norm is read between pieces. Transformers have no recurrent state and are rejected.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from .kernels import l2norm
from .layers import RecurrentMixer

logger = logging.getLogger(__name__)

QUANTILES = (0.0, 0.01, 0.5, 0.99, 1.0)


@dataclass
class StabilityReport:
    model_type: str
    variant: Optional[str]
    num_tokens: int
    rows: List[Dict[str, float]]  # one per (layer, head)
    positions: List[int]  # tokens seen when each state norm was read
    state_norms: torch.Tensor  # (layers, heads, len(positions))
    beta_a: Dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (tokens, heads)


def _mixers(model) -> List[RecurrentMixer]:
    layers = model.model.layers if hasattr(model, "model") else model.layers
    mixers = [block.attn for block in layers]
    if not all(isinstance(m, RecurrentMixer) for m in mixers):
        raise ValueError(
            f"stability diagnostics need a recurrent model (qdelta, gated_deltanet, delta_net, "
            f"linear_attn); got model_type {model.config.model_type!r}, which has no recurrent state"
        )
    return mixers


def _per_token(record: dict) -> Dict[str, torch.Tensor]:
    """beta*a, lam, alpha per token and head from one captured call: each (tokens, heads)."""
    q, k = l2norm(record["q"][0].float()), l2norm(record["k"][0].float())  # (T, H, K)
    T, H = q.shape[:2]
    lam = record["lam"][0].float() if record["lam"] is not None else q.new_zeros(T, H)
    beta = record["beta"][0].float() if record["beta"] is not None else q.new_ones(T, H)
    a = (k * k).sum(-1) + lam * (k * q).sum(-1)  # k^T (k + lam q)
    alpha = record["g"][0].float().exp() if record["g"] is not None else q.new_ones(T, H)
    return {"beta_a": beta * a, "lam": lam, "alpha": alpha}


def _state_norm(state) -> torch.Tensor:
    s = state["recurrent"]
    s = getattr(s, "state", s)  # OfficialState -> its read-out state
    return s[0].float().flatten(1).norm(dim=1)  # (heads,)


@torch.no_grad()
def analyse_stability(model, input_ids: torch.Tensor, piece: int = 256) -> StabilityReport:
    """Run ``input_ids`` (1, T) through ``model`` in pieces of ``piece`` tokens and collect diagnostics."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, T), got {tuple(input_ids.shape)}")
    if piece < 1:
        raise ValueError(f"piece must be >= 1 tokens, got {piece}")
    mixers = _mixers(model)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    collected: List[Dict[str, List[torch.Tensor]]] = [{"beta_a": [], "lam": [], "alpha": []} for _ in mixers]
    norms: List[List[torch.Tensor]] = [[] for _ in mixers]
    positions, cache = [], None
    try:
        for m in mixers:
            m.capture = []
        for start in range(0, input_ids.shape[1], piece):
            cache = model(input_ids[:, start : start + piece], past_key_values=cache, use_cache=True).past_key_values
            positions.append(min(start + piece, input_ids.shape[1]))
            for i, m in enumerate(mixers):
                for record in m.capture:
                    for name, value in _per_token(record).items():
                        collected[i][name].append(value.cpu())
                m.capture.clear()
                norms[i].append(_state_norm(cache.layers[i]).cpu())
    finally:
        for m in mixers:
            m.capture = None
    rows, beta_a = [], {}
    state_norms = torch.stack([torch.stack(n, -1) for n in norms])  # (layers, heads, pieces)
    for i, stats in enumerate(collected):
        ba, lam, alpha = (torch.cat(stats[name]) for name in ("beta_a", "lam", "alpha"))
        beta_a[i] = ba
        for h in range(ba.shape[1]):
            qs = torch.quantile(ba[:, h].double(), torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
            lq = torch.quantile(lam[:, h].double(), torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
            rows.append(
                {
                    "layer": i,
                    "head": h,
                    "beta_a_min": qs[0],
                    "beta_a_p01": qs[1],
                    "beta_a_p50": qs[2],
                    "beta_a_p99": qs[3],
                    "beta_a_max": qs[4],
                    "outside": float(((ba[:, h] <= 0) | (ba[:, h] >= 2)).float().mean()),
                    "rho": float((1 - ba[:, h]).abs().max()),
                    "lam_p01": lq[1],
                    "lam_p50": lq[2],
                    "lam_p99": lq[3],
                    "alpha_mean": float(alpha[:, h].mean()),
                    "state_first": float(state_norms[i, h, 0]),
                    "state_last": float(state_norms[i, h, -1]),
                    "state_growth": float(state_norms[i, h, -1] / state_norms[i, h, 0].clamp_min(1e-30)),
                }
            )
    return StabilityReport(
        model.config.model_type,
        getattr(model.config, "variant", None),
        input_ids.shape[1],
        rows,
        positions,
        state_norms,
        beta_a,
    )


COLUMNS = [
    ("layer", "{:d}"),
    ("head", "{:d}"),
    ("beta_a_min", "{:.3f}"),
    ("beta_a_p01", "{:.3f}"),
    ("beta_a_p50", "{:.3f}"),
    ("beta_a_p99", "{:.3f}"),
    ("beta_a_max", "{:.3f}"),
    ("outside", "{:.2%}"),
    ("rho", "{:.3f}"),
    ("lam_p01", "{:.3f}"),
    ("lam_p50", "{:.3f}"),
    ("lam_p99", "{:.3f}"),
    ("alpha_mean", "{:.4f}"),
    ("state_first", "{:.3g}"),
    ("state_last", "{:.3g}"),
    ("state_growth", "{:.3g}"),
]


def format_table(report: StabilityReport) -> str:
    """A fixed-width text table, one line per layer and head, with a summary line."""
    cells = [[name for name, _ in COLUMNS]]
    for row in report.rows:
        cells.append([fmt.format(row[name]) for name, fmt in COLUMNS])
    widths = [max(len(r[j]) for r in cells) for j in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    worst = max(report.rows, key=lambda r: r["rho"])
    contracting = sum(r["rho"] < 1 for r in report.rows)
    lines.append(
        f"{report.model_type} (variant={report.variant}), {report.num_tokens} tokens: "
        f"{contracting}/{len(report.rows)} heads have rho < 1 (beta*a in (0, 2) on every token); "
        f"worst rho {worst['rho']:.3f} at layer {worst['layer']} head {worst['head']}"
    )
    return "\n".join(lines)


def plot_stability(report: StabilityReport, path) -> str:
    """Write a two-panel PNG (state norm along the input; beta*a histogram per layer) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    layers, heads = report.state_norms.shape[:2]
    colors = plt.get_cmap("viridis")([i / max(layers - 1, 1) for i in range(layers)])
    for i in range(layers):
        for h in range(heads):
            left.plot(
                report.positions,
                report.state_norms[i, h].tolist(),
                color=colors[i],
                alpha=0.8,
                label=f"layer {i}" if h == 0 else None,
            )
        right.hist(report.beta_a[i].flatten().tolist(), bins=60, histtype="step", color=colors[i], label=f"layer {i}")
    left.set(
        xlabel="tokens seen",
        ylabel="||S|| (Frobenius, per head)",
        yscale="log",
        title="recurrent state norm along the input",
    )
    for edge in (0.0, 2.0):
        right.axvline(edge, color="red", linestyle="--", linewidth=1)
    right.set(
        xlabel="beta * a  (contraction needs (0, 2))",
        ylabel="tokens x heads",
        title=f"{report.model_type} (variant={report.variant})",
    )
    left.legend(fontsize="small")
    right.legend(fontsize="small")
    fig.tight_layout()
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp made it 0600
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("wrote %s", path)
    return path
