"""Host work of one decode step as the model calls it (dense (B, 1, H, K) rows, ``inplace=True``).

The Triton launch is stubbed out, so the step runs its host side on CPU tensors; a dispatch mode
records every aten op it issues. With ``inplace=True`` the step may allocate the output ``o`` and
nothing else (a CUDA graph replays the same buffers), and no op may read a value back to the host
(a sync on the GPU, and an error during graph capture).
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import qdelta.kernels.triton.fused_recurrent as recurrent
from qdelta.kernels import OfficialState, fused_recurrent_qdelta

N = 64  # sequences decoded together
HEADS = {"340M": (6, 128, 256), "1.3B": (6, 256, 512)}  # H, K, V
VALUE_READS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "lift_fresh", "lift_fresh_copy"}
MAX_OPS = {"paper": 1, "official": 3}  # o; o and the offset's in-place advance (add_, remainder_)


class OpLog(TorchDispatchMode):
    """Names of the aten ops issued, and those that return a new tensor (not a view, not in place)."""

    def __init__(self):
        super().__init__()
        self.ops, self.allocating = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops.append(name)
        if any(r.alias_info is None and str(r.type) == "Tensor" for r in func._schema.returns):
            self.allocating.append(name)
        return func(*args, **(kwargs or {}))


def _refuse_host_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the decode step read a tensor back to the host")

    for method in ("tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, method, refuse)


def _step(config, variant, gated, dtype=torch.bfloat16):
    H, K, V = HEADS[config]
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(N, 1, H, K, generator=gen).to(dtype) for _ in range(2))
    v = torch.randn(N, 1, H, V, generator=gen).to(dtype)
    g, beta, lam = (torch.rand(N, 1, H, generator=gen).to(dtype) for _ in range(3))
    if not gated:
        g = lam = None
    state = torch.randn(N, H, K, V, generator=gen)
    if variant == "official":
        state = OfficialState(state, state.clone(), torch.zeros_like(state), torch.zeros(N, dtype=torch.int64))

    def step():
        return fused_recurrent_qdelta(
            q, k, v, g, beta, lam, initial_state=state, inplace=True, variant=variant, use_qk_l2norm=True
        )

    return step, state


@pytest.mark.parametrize("gated", [True, False], ids=["g-lam", "no-g-lam"])
@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("config", list(HEADS))
def test_inplace_decode_allocates_only_the_output(config, variant, gated, monkeypatch):
    launches = []
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors take the Triton path
    monkeypatch.setattr(recurrent, "_launch", lambda kernel, grid, cfg, *args, **constexprs: launches.append(grid))
    step, state = _step(config, variant, gated)
    with torch.no_grad():
        step()  # first call: caches filled here may allocate
        with monkeypatch.context() as patched, OpLog() as log:
            _refuse_host_reads(patched)
            o, final = step()
    assert len(launches) == 2, "the Triton path was not taken"
    assert not VALUE_READS & set(log.ops), f"ops reading values: {log.ops}"
    assert log.allocating == ["empty"], f"allocating ops: {log.allocating} (all ops: {log.ops})"
    assert len(log.ops) <= MAX_OPS[variant], f"ops: {log.ops}"
    assert final is state
    assert o.shape == (N, 1, HEADS[config][0], HEADS[config][2])


def test_official_offset_advances_in_place(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(recurrent, "_launch", lambda *args, **kwargs: None)
    step, state = _step("340M", "official", True)
    state.offset.copy_(torch.arange(N) % 64)
    offset = state.offset
    with torch.no_grad():
        step()
    assert state.offset is offset
    assert torch.equal(offset, (torch.arange(N) + 1) % 64)
