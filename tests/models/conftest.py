import pytest


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    """Model tests run the PyTorch reference ops on the CPU, even if another suite set TRITON_INTERPRET."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
