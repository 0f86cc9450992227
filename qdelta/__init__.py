"""qdelta: the reference implementation of Q-Delta and a long-context recall harness."""

__version__ = "0.1.0"
