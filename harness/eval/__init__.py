"""Evaluation: the lm-eval model adapter, request scoring, run records and leaderboards."""
