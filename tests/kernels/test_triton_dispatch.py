"""Dispatch and ``inplace`` of the public ops on the CPU (reference path: no TRITON_INTERPRET here)."""
import os

import pytest
import torch

from qdelta.kernels import OfficialState, fused_recurrent_qdelta, naive_recurrent_qdelta
from qdelta.kernels.testing import random_inputs

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="checks the reference path taken without the interpreter")


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
