"""Gradients (float64 gradcheck) and bad-input errors of the three Q-Delta ops (issue 2)."""

import os

import pytest
import torch

from qdelta.kernels import OfficialState, chunk_qdelta, fused_recurrent_qdelta, naive_recurrent_qdelta
from qdelta.kernels.testing import random_inputs

OPS = [naive_recurrent_qdelta, fused_recurrent_qdelta, chunk_qdelta]
NAMES = ("q", "k", "v", "g", "beta", "lam", "initial_state")


def _gradcheck(op, x, extra_names=(), **kw):
    names = NAMES + tuple(extra_names)

    def f(*tensors):
        args = dict(zip(names, tensors))
        if extra_names:  # an OfficialState built from differentiable parts
            args["initial_state"] = OfficialState(
                args.pop("initial_state"), args.pop("chunk_start"), args.pop("x_memory"), kw["offset"]
            )
        o, s = op(**args, use_qk_l2norm=True, output_final_state=True, **{k: v for k, v in kw.items() if k != "offset"})
        s = s.state if isinstance(s, OfficialState) else s
        return o, s

    inputs = [x[n].detach().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
def test_gradcheck_paper(op):
    x = random_inputs(1, 9, 2, 3, 2, dtype=torch.float64, seed=1)
    kw = {"chunk_size": 4} if op is chunk_qdelta else {}
    _gradcheck(op, x, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
def test_gradcheck_official_across_a_chunk_boundary(op):
    # Start 60 tokens into a 64-token chunk, so the 9 tokens cross a chunk boundary.
    x = random_inputs(1, 9, 1, 3, 2, dtype=torch.float64, seed=2)
    gen = torch.Generator().manual_seed(3)
    x["chunk_start"] = torch.randn(1, 1, 3, 2, generator=gen, dtype=torch.float64)
    x["x_memory"] = torch.randn(1, 1, 3, 2, generator=gen, dtype=torch.float64)
    _gradcheck(op, x, extra_names=("chunk_start", "x_memory"), variant="official", offset=torch.tensor([60]))


def _inputs():
    return random_inputs(2, 6, 3, 4, 5, seed=0)


BAD = [
    # (description, change to the keyword arguments, expected error, words the message must name)
    ("k of other shape", lambda x: x.update(k=x["k"][..., :3]), ValueError, ["k", "[2,6,3,3]"]),
    ("v with other heads", lambda x: x.update(v=x["v"][:, :, :2]), ValueError, ["v", "[2,6,2,5]"]),
    ("beta with other batch", lambda x: x.update(beta=x["beta"][:1]), ValueError, ["beta", "[1,6,3]"]),
    ("g with extra dim", lambda x: x.update(g=x["g"][..., None]), ValueError, ["g", "(B, T, H)"]),
    ("k of other dtype", lambda x: x.update(k=x["k"].double()), TypeError, ["k", "torch.float64", "torch.float32"]),
    ("integer lam", lambda x: x.update(lam=(x["lam"] * 10).long()), TypeError, ["lam", "floating"]),
    ("lam on the meta device", lambda x: x.update(lam=x["lam"].to("meta")), ValueError, ["lam", "meta"]),
    ("q not 4-D", lambda x: x.update(q=x["q"][0]), ValueError, ["q", "[B,T,H,K]"]),
    (
        "state of other shape",
        lambda x: x.update(initial_state=x["initial_state"][:, :, :2]),
        ValueError,
        ["initial_state", "[2,3,4,5]"],
    ),
    (
        "half state",
        lambda x: x.update(initial_state=x["initial_state"].half()),
        TypeError,
        ["initial_state", "float32"],
    ),
    ("unknown variant", lambda x: x.update(variant="authors"), ValueError, ["variant", "'authors'", "official"]),
    ("cu_seqlens with B > 1", lambda x: x.update(cu_seqlens=torch.tensor([0, 6])), ValueError, ["B = 1", "B = 2"]),
    (
        "official state for paper",
        lambda x: x.update(initial_state=OfficialState.at_boundary(x["initial_state"])),
        TypeError,
        ["OfficialState", "variant='paper'"],
    ),
    ("string scale", lambda x: x.update(scale="0.5"), TypeError, ["scale", "str"]),
]


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("what,change,error,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_clear_error(op, what, change, error, words):
    x = _inputs()
    change(x)
    with pytest.raises(error) as info:
        op(**x)
    for word in words:
        assert word in str(info.value), f"{what}: {word!r} missing from {info.value}"


def _packed():
    x = random_inputs(1, 10, 2, 4, 3, seed=1, num_sequences=2)
    return x


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "cu,words",
    [
        ([1, 4, 10], ["start at 0", "got 1"]),
        ([0, 6, 6, 10], ["strictly increasing", "[0, 6, 6, 10]"]),
        ([0, 7, 4, 10], ["strictly increasing"]),
        ([0, 4, 9], ["end at T = 10", "got 9"]),
        ([0.0, 4.0, 10.0], ["integer"]),
    ],
)
def test_bad_cu_seqlens(op, cu, words):
    x = _packed()
    if len(cu) != 3:
        x["initial_state"] = None
    with pytest.raises(ValueError) as info:
        op(**x, cu_seqlens=torch.tensor(cu))
    for word in words:
        assert word in str(info.value)


def test_packed_state_must_have_one_row_per_sequence():
    x = _packed()
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2,2,4,3\]"):
        chunk_qdelta(**dict(x, initial_state=x["initial_state"][:1]), cu_seqlens=torch.tensor([0, 4, 10]))


@pytest.mark.parametrize("size,error", [(0, ValueError), (-3, ValueError), (16.0, TypeError), (True, TypeError)])
def test_bad_chunk_size(size, error):
    with pytest.raises(error, match="chunk_size"):
        chunk_qdelta(**_inputs(), chunk_size=size)


def test_official_variant_requires_64_token_chunks():
    with pytest.raises(ValueError, match="chunk_size must be 64, got 32"):
        chunk_qdelta(**_inputs(), variant="official", chunk_size=32)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1",
    reason="the dense Triton decode path does not read the offsets (on a GPU that read is a device sync); "
    "the PyTorch path checks them",
)
def test_bad_official_offset():
    x = _inputs()
    state = OfficialState.at_boundary(x.pop("initial_state"))
    state = state._replace(offset=torch.tensor([0, 64]))
    with pytest.raises(ValueError, match=r"offset must lie in \[0, 64\)"):
        fused_recurrent_qdelta(**x, initial_state=state, variant="official")
