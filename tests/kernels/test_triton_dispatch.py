"""Dispatch and ``inplace`` of the public ops on the CPU (reference path: no TRITON_INTERPRET here)."""

import os

import pytest
import torch

from qdelta.kernels import OfficialState, chunk_qdelta, fused_recurrent_qdelta, naive_recurrent_qdelta
from qdelta.kernels.testing import random_inputs

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="checks the reference path taken without the interpreter"
)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_inplace_writes_the_final_state_over_the_initial_one(variant):
    x = random_inputs(2, 5, 2, 6, 7, seed=4)
    state = x.pop("initial_state")
    if variant == "official":
        state = OfficialState(state, state.clone(), torch.zeros_like(state), torch.tensor([3, 62]))
    ref_o, ref_s = naive_recurrent_qdelta(**x, initial_state=state, output_final_state=True, variant=variant)
    o, s = fused_recurrent_qdelta(**x, initial_state=state, inplace=True, variant=variant)
    assert s is state and torch.equal(o, ref_o)
    for a, b in zip(s if variant == "official" else [s], ref_s if variant == "official" else [ref_s]):
        assert torch.equal(a, b)


def test_inplace_needs_a_state():
    x = random_inputs(1, 2, 1, 4, 4, seed=1, with_initial_state=False)
    with pytest.raises(ValueError, match="inplace=True"):
        fused_recurrent_qdelta(**x, inplace=True)


def test_inplace_official_needs_an_official_state():
    x = random_inputs(1, 2, 1, 4, 4, seed=2)
    with pytest.raises(ValueError, match="OfficialState"):
        fused_recurrent_qdelta(**x, inplace=True, variant="official")


@pytest.mark.parametrize("bad", ["fp32", "IEEE", "tf32x3", "highest"])
def test_chunk_qdelta_refuses_an_unknown_precision(bad):
    x = random_inputs(1, 5, 1, 4, 4, seed=3)
    with pytest.raises(ValueError, match="precision must be 'tf32', 'ieee' or None, got"):
        chunk_qdelta(**x, precision=bad)


def test_chunk_qdelta_precision_leaves_the_reference_path_alone():
    x = random_inputs(1, 70, 2, 6, 7, seed=3)
    o, s = chunk_qdelta(**x, output_final_state=True)
    o_ieee, s_ieee = chunk_qdelta(**x, output_final_state=True, precision="ieee")
    assert torch.equal(o, o_ieee) and torch.equal(s, s_ieee)


def test_default_precision_follows_torch_float32_matmul_precision():
    from qdelta.kernels.chunk import resolve_precision

    before = torch.get_float32_matmul_precision()
    try:
        for setting, expected in (("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")):
            torch.set_float32_matmul_precision(setting)
            assert resolve_precision(None) == expected
            assert resolve_precision("tf32") == "tf32" and resolve_precision("ieee") == "ieee"
    finally:
        torch.set_float32_matmul_precision(before)


def test_launch_retries_with_fewer_stages_when_out_of_shared_memory():
    """A setting tuned for bf16 can ask too much shared memory for fp32 operands: the launcher
    retries with fewer pipeline stages, remembers the cap, and re-raises at one stage."""
    from qdelta.kernels.triton import launch as L

    class FakeKernel:
        __name__ = "fake"

        def __init__(self, fits):
            self.fits, self.calls = fits, []

        def __getitem__(self, grid):
            def run(*args, **kw):
                self.calls.append(kw["num_stages"])
                if kw["num_stages"] > self.fits:
                    raise L.OutOfResources(1, 2, "shared memory")

            return run

    k = FakeKernel(fits=1)
    L.launch(k, (1,), {"num_stages": 3, "BV": 64}, 0, H=2)
    assert k.calls == [3, 2, 1]
    L.launch(k, (1,), {"num_stages": 3, "BV": 64}, 0, H=2)  # the cap is remembered
    assert k.calls == [3, 2, 1, 1]
    never = FakeKernel(fits=0)
    with pytest.raises(L.OutOfResources):
        L.launch(never, (1,), {"num_stages": 2, "BV": 32}, 0, H=2)


def test_launch_settings_defaults_overrides_and_refusals(monkeypatch):
    """Defaults per head size, OVERRIDES on top, and the settings seen to fault on Triton 3.6 refused."""
    from qdelta.kernels.triton import launch as L

    monkeypatch.setattr(L, "OVERRIDES", {})
    wide, narrow = L.settings("reverse", 256, 512), L.settings("reverse", 128, 256)
    assert wide["BV"] == 64 and wide["num_warps"] == 8 and narrow["num_warps"] == 4
    assert L.settings("state", 100, 40)["BV"] == 64  # V = 40 pads to a 64-wide tile
    monkeypatch.setattr(L, "OVERRIDES", {"state": {"BV": 32, "LOWP": False}})
    assert L.settings("state", 256, 512)["BV"] == 32 and not L.settings("state", 256, 512)["LOWP"]
    monkeypatch.setattr(L, "OVERRIDES", {"state": {"BV": 16}})
    with pytest.raises(ValueError, match="faults or computes wrong numbers on Hopper"):
        L.settings("state", 256, 512)
    L.settings("state", 128, 256)  # the narrower head is fine
    monkeypatch.setattr(L, "OVERRIDES", {"reverse": {"BV": 32, "LOWP": True}})
    for K in (256, 128):  # faults at K = 256, a wrong initial-state gradient at K = 128 (v10)
        with pytest.raises(ValueError, match="use BV >= 64"):
            L.settings("reverse", K, 256)
    L.settings("reverse", 64, 256)  # not seen at smaller heads
    L.settings("reverse", 128, 24)  # nor refused where V itself is narrower than 64
    monkeypatch.setattr(L, "OVERRIDES", {"reverse": {"BV": 32, "LOWP": False}})
    L.settings("reverse", 128, 256)
    monkeypatch.setattr(L, "OVERRIDES", {"kq_bwd": {"BK": 32, "BV": 32, "LOWP": True}})
    for K, V in ((256, 512), (128, 256)):  # faults at both head sizes
        with pytest.raises(ValueError, match="fault on Hopper"):
            L.settings("kq_bwd", K, V)
    monkeypatch.setattr(L, "OVERRIDES", {"kq_bwd": {"BK": 32, "BV": 32, "LOWP": False}})
    L.settings("kq_bwd", 256, 512)
    with pytest.raises(KeyError, match="no launch settings"):
        L.settings("nonexistent", 64, 64)


def test_chunk_table_is_built_once_per_bounds_and_describes_the_chunks():
    """The table is cached (its host-to-device copies would synchronise every call); equal bounds give
    the same table, other bounds or chunk sizes another, and its entries match the bounds."""
    from qdelta.kernels.triton.chunk import chunk_table

    bounds = ((0, 50), (50, 61), (61, 130))
    t = chunk_table(bounds, 64, "cpu")
    assert chunk_table(bounds, 64, "cpu") is t
    assert chunk_table(bounds, 16, "cpu") is not t and chunk_table(((0, 130),), 64, "cpu") is not t
    assert t.bos.tolist() == [0, 50, 61, 125] and t.len.tolist() == [50, 11, 64, 5]
    assert t.seq_chunks.tolist() == [0, 1, 2, 4] and t.last.tolist() == [0, 1, 3] and t.last_bos == (0, 50, 125)
    for part in (t.bos, t.len, t.seq_chunks):  # views of one copied buffer, each 16-byte aligned
        assert part.dtype == torch.int32 and part.data_ptr() % 16 == 0


def test_overridden_merges_single_values_for_the_block_and_restores(monkeypatch):
    from qdelta.kernels.triton import launch as L

    monkeypatch.setattr(L, "OVERRIDES", {"state": {"BV": 32, "LOWP": False}})
    with L.overridden({"state": {"BV": 64}, "kq_bwd": {"BK": 32}}):
        assert L.OVERRIDES == {"state": {"BV": 64, "LOWP": False}, "kq_bwd": {"BK": 32}}
        assert L.settings("state", 128, 256)["BV"] == 64
    assert L.OVERRIDES == {"state": {"BV": 32, "LOWP": False}}
    with pytest.raises(RuntimeError), L.overridden({"state": {"BV": 16}}):
        raise RuntimeError("a failing launch")
    assert L.OVERRIDES == {"state": {"BV": 32, "LOWP": False}}


def test_keep_tables_holds_the_tables_used_in_the_block():
    """What a CUDA graph captured in the block reads stays referenced, whatever the cache drops."""
    from qdelta.kernels.triton.chunk import chunk_table, keep_tables

    with keep_tables() as held:
        first = chunk_table(((0, 100),), 64, "cpu")
        again = chunk_table(((0, 100),), 64, "cpu")
    after = chunk_table(((0, 130),), 64, "cpu")
    assert held == [first, again] and first is again and after not in held
