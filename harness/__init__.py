"""The evaluation harness: lm-eval adapter, CLI, run records, leaderboards, training."""
