"""Numbers reported by the Q-Delta paper (Park, Kim, Park, ICML 2026, arXiv 2606.08804).

A separate, labelled source: zero-shot lm-eval results as printed in the paper, never measured
here and never merged into the measured leaderboard tables.
"""

from __future__ import annotations

from typing import Dict, List

SOURCE = "Q-Delta paper (arXiv 2606.08804), zero-shot, lm-eval; reported, not measured here"

# average accuracy over the commonsense suite, by model size
COMMONSENSE_AVG: Dict[str, Dict[str, float]] = {
    "RetNet": {"340M": 44.55, "1.3B": 50.31},
    "Mamba": {"340M": 46.64, "1.3B": 52.39},
    "Mamba2": {"340M": 46.27, "1.3B": 52.46},
    "DeltaNet": {"340M": 43.82, "1.3B": 52.53},
    "Gated DeltaNet": {"340M": 46.01, "1.3B": 52.77},
    "Q-Delta": {"340M": 47.24, "1.3B": 53.47},
}

# S-NIAH average accuracy, 1.3B models
SNIAH_AVG_1P3B: Dict[str, float] = {
    "RetNet": 38.09,
    "Mamba": 62.62,
    "Mamba2": 76.58,
    "DeltaNet": 81.29,
    "Gated DeltaNet": 83.51,
    "Q-Delta": 90.02,
}


def reported_rows() -> List[dict]:
    """One row per model: commonsense average at 340M and 1.3B, S-NIAH average at 1.3B (percent)."""
    return [
        {
            "model": name,
            "commonsense_avg_340M": sizes["340M"],
            "commonsense_avg_1.3B": sizes["1.3B"],
            "sniah_avg_1.3B": SNIAH_AVG_1P3B[name],
            "source": SOURCE,
        }
        for name, sizes in COMMONSENSE_AVG.items()
    ]


def reported_markdown() -> str:
    lines = [
        "## Reported by the paper (separate source: not measured here)",
        "",
        f"Source: {SOURCE}. Percent.",
        "",
        "| model | commonsense avg 340M | commonsense avg 1.3B | S-NIAH avg 1.3B |",
        "|---|---:|---:|---:|",
    ]
    for row in reported_rows():
        lines.append(
            f"| {row['model']} | {row['commonsense_avg_340M']:.2f} | {row['commonsense_avg_1.3B']:.2f} "
            f"| {row['sniah_avg_1.3B']:.2f} |"
        )
    return "\n".join(lines) + "\n"
