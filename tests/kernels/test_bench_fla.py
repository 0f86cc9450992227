"""The benchmark's fla column: the lifted Hopper/Triton backward guard is found, lifted only inside
the block, and stated under the table. The guard checks need fla (``fla-core``) importable; they
skip without it (it is not a dependency: the benchmark carries it to the GPU machine as a wheel)."""

import importlib.util

import pytest
import torch

from qdelta.harness.bench import kernels as bench_kernels

HAVE_FLA = importlib.util.find_spec("fla") is not None


def _report(note=None) -> bench_kernels.Report:
    row = bench_kernels.Row("340M", 2048, "fla-gdn", True, 0.8, 2.9, 0.7, 16)
    return bench_kernels.Report(
        card="NVIDIA H100 80GB HBM3",
        torch="2.11.0",
        triton="3.6.0",
        date="2026-11-27",
        fla="0.6.0",
        copy_gbps=3000.0,
        rows=[row],
        fla_note=note,
    )


def test_markdown_states_a_lifted_guard_under_the_table():
    text = bench_kernels.to_markdown(_report(bench_kernels.FLA_GUARD_NOTE))
    table_end = text.index("| 340M | 2048 |")
    note_at = text.index("backward guard lifted for timing; its gradients are not trusted here")
    assert table_end < note_at < text.index("Decode step")
    assert "guard lifted" not in bench_kernels.to_markdown(_report())


def _call_guarded_backward(chunk_o):
    """fla's gated chunk_bwd_dqkwg on tiny CPU tensors; returns the error text ('' if none)."""
    B, T, H, K, V = 1, 64, 1, 16, 16
    gen = torch.Generator().manual_seed(0)
    q, k, do_ = (torch.randn(B, T, H, n, generator=gen) for n in (K, K, V))
    v = torch.randn(B, T, H, V, generator=gen)
    h, dh = (torch.randn(B, 1, H, K, V, generator=gen) for _ in range(2))
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=gen))
    try:
        chunk_o.chunk_bwd_dqkwg(q, k, v, do_, h, dh, g=g, scale=K**-0.5)
    except Exception as err:  # past the guard, the Triton launch on CPU tensors may fail: fine here
        return f"{type(err).__name__}: {err}"
    return ""


@pytest.mark.skipif(not HAVE_FLA, reason="fla (fla-core) not installed")
def test_guard_is_found_and_lifted_only_inside_the_block(monkeypatch):
    import fla.ops.common.chunk_o as chunk_o

    # pretend to be where the guard bites: a Hopper GPU with Triton 3.6
    monkeypatch.setattr(chunk_o, "IS_NVIDIA_HOPPER", True)
    monkeypatch.setattr(chunk_o, "TRITON_ABOVE_3_4_0", True)
    monkeypatch.setattr(chunk_o, "TRITON_ABOVE_3_7_1", False)
    assert "RuntimeError" in _call_guarded_backward(chunk_o) and "3.7.1" in _call_guarded_backward(chunk_o)
    with bench_kernels.fla_backward_guard_lifted() as lifted:
        assert lifted is True
        assert "3.7.1" not in _call_guarded_backward(chunk_o)
    assert chunk_o.TRITON_ABOVE_3_7_1 is False
    assert "3.7.1" in _call_guarded_backward(chunk_o)

    monkeypatch.setattr(chunk_o, "IS_NVIDIA_HOPPER", False)  # elsewhere there is nothing to lift
    with bench_kernels.fla_backward_guard_lifted() as lifted:
        assert lifted is False


@pytest.mark.skipif(not HAVE_FLA, reason="fla (fla-core) not installed")
def test_guard_lifting_refuses_an_fla_without_the_flag(monkeypatch):
    import fla.ops.common.chunk_o as chunk_o

    monkeypatch.delattr(chunk_o, "TRITON_ABOVE_3_7_1")
    with pytest.raises(RuntimeError, match="TRITON_ABOVE_3_7_1"):
        with bench_kernels.fla_backward_guard_lifted():
            pass
