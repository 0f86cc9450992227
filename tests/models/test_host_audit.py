"""Host work of the GPU path, counted on the CPU (qdelta.harness.bench.host_audit: fake CUDA tensors, Triton
launches recorded and skipped): dense training steps, prefills and decoding steps read no value back to the
host, every layer issues the same ops at any depth, within a recorded bound, and the Triton kernels are the
ones called. Eager glue (fla-core is not installed here); 340M layer shape, bf16, B = 8, T = 2048."""

import os
import shutil

import pytest
import torch

from qdelta.harness.bench.host_audit import MODELS, Setup, audit_call, audit_calls, audit_context
from qdelta.harness.bench.op_audit import OpAudit, Sources

pytestmark = [
    pytest.mark.skipif(torch.backends.cuda.is_built(), reason="the fake CUDA device is for CPU builds of torch"),
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="needs a C++ compiler"),
]

# aten ops one layer issues (eager glue): measured 500 / 499 / 471 (train), 226 / 366 / 215 (prefill),
# 294 / 296 / 284 (decode), with ~10 % headroom; a change that adds host work per layer fails here
MAX_OPS_PER_LAYER = {
    "train": {"qdelta-paper": 550, "qdelta-official": 550, "gdn": 520},
    "prefill": {"qdelta-paper": 250, "qdelta-official": 400, "gdn": 237},
    "decode": {"qdelta-paper": 325, "qdelta-official": 326, "gdn": 313},
}
# Triton kernels per layer: forward; the backward's rerun of the forward without the output pass; backward
FORWARD = ["_l2norm_rows_kernel", "_intra_kernel", "_state_kernel", "_output_kernel"]
BACKWARD = FORWARD[:3] + ["_reverse_state_kernel", "_intra_bwd_kernel", "_kq_bwd_kernel", "_gate_bwd_kernel"]
KERNELS = {"train": (FORWARD, BACKWARD), "prefill": (FORWARD, []), "decode": (["_recurrent_kernel"], [])}
RUNS = [("train", 2), ("train", 4), ("prefill", 2), ("decode", 2)]


@pytest.fixture(scope="module")
def audits():
    """In a fresh process: a backward run earlier in this one (another test) leaves the autograd engine
    without a queue for the fake device."""
    runs = [(name, call, layers) for name in MODELS for call, layers in RUNS]
    return dict(zip(runs, audit_calls(runs, Setup(batch=8, tokens=2048))))


@pytest.mark.parametrize("call", list(KERNELS))
@pytest.mark.parametrize("name", list(MODELS))
def test_dense_calls_read_no_value_back(audits, name, call):
    a = audits[name, call, 2]
    assert a.error is None, a.error
    found = [(op.name, op.detail, op.source) for op in a.ops if op.kind in ("read", "h2d")]
    assert not found, f"{name} {call}: ops that wait for the GPU: {found}"


@pytest.mark.parametrize("name", list(MODELS))
def test_training_step_host_work_per_layer_is_constant_and_bounded(audits, name):
    two, four = audits[name, "train", 2], audits[name, "train", 4]
    per_layer = two.per_layer() + four.per_layer()
    assert all(x == per_layer[0] for x in per_layer), per_layer  # every layer alike, at either depth
    assert two.outside() == four.outside()  # nothing outside the layers grows with depth
    assert len(four.ops) - len(two.ops) == 2 * per_layer[0]["ops"]
    assert per_layer[0]["ops"] <= MAX_OPS_PER_LAYER["train"][name], per_layer[0]
    assert {op.phase for op in two.ops} == {"forward", "backward", "optimizer"}


@pytest.mark.parametrize("call", ["prefill", "decode"])
@pytest.mark.parametrize("name", list(MODELS))
def test_inference_host_work_per_layer_is_bounded(audits, name, call):
    per_layer = audits[name, call, 2].per_layer()
    assert per_layer[0] == per_layer[1]
    assert per_layer[0]["ops"] <= MAX_OPS_PER_LAYER[call][name], per_layer[0]


@pytest.mark.parametrize("call", list(KERNELS))
@pytest.mark.parametrize("name", list(MODELS))
def test_the_triton_kernels_are_launched(audits, name, call):
    forward, backward = KERNELS[call]
    for layers in (2, 4) if call == "train" else (2,):
        launches = audits[name, call, layers].launches
        assert launches == forward * layers + backward * layers, launches


def test_a_padded_prefill_reads_the_lengths_back():
    a = audit_call("qdelta-paper", "padded", 2, Setup(batch=4, tokens=256))
    reads = [op for op in a.ops if op.kind == "read"]
    assert reads and all("qdelta/packing.py:Packing.from_mask" in op.source for op in reads)
    assert all(op.layer is None for op in reads)  # once per call, before the blocks


def test_value_reads_copies_and_casts_are_classified():
    sources = Sources({"tests": os.path.dirname(__file__)}, {})
    with audit_context(), OpAudit(sources) as audit:
        x = torch.ones(4, 8, device="cuda", dtype=torch.bfloat16)
        x.sum().item()
        x.cpu()
        x.float()
        x.t().contiguous()
        torch.tensor([1, 2], device="cuda")
    kinds = [(op.name, op.kind) for op in audit.ops if op.kind]
    assert kinds == [("_local_scalar_dense", "read"), ("_to_copy", "read"), ("_to_copy", "cast")] + [
        ("clone", "copy"),
        ("lift_fresh", "cpu"),
        ("_to_copy", "h2d"),
    ], kinds
    assert all(op.source.startswith("tests/test_host_audit.py:") for op in audit.ops)


def test_the_fake_device_is_gone_after_the_audit():
    with audit_context():
        assert torch.cuda.is_available() and torch.accelerator.current_accelerator().type == "cuda"
    assert not torch.cuda.is_available()
    assert torch.accelerator.current_accelerator() is None
    with pytest.raises((RuntimeError, AssertionError)):  # a CPU build: no CUDA tensor
        torch.empty(1, device="cuda")


def test_a_training_step_is_audited_after_a_backward_in_this_process():
    x = torch.randn(3, requires_grad=True)
    (x * x).sum().backward()  # the autograd engine starts here, without the fake device
    (audit,) = audit_calls([("gdn", "train", 2)], Setup(batch=1, tokens=128))
    assert audit.error is None, audit.error
    assert audit.launches == FORWARD * 2 + BACKWARD * 2, audit.launches
