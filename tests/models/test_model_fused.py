"""The fused glue (qdelta/fused.py) against the eager modules it replaces.

CPU tier (CI): the selection rule and the state layouts; CPU tensors never take the fused path.
GPU tier (marked ``gpu``, needs CUDA and fla-core): every fused function against its eager module in
fp32 (values 1e-5 relative, gradients too), the whole model's logits and gradients, padded == packed
and cached decoding == the full forward on the fused path.
"""

import contextlib
import importlib.util

import pytest
import torch

from qdelta import fused
from qdelta.blocks import SwiGLU
from qdelta.norms import GatedRMSNorm, RMSNorm
from qdelta.packing import Packing
from qdelta.short_conv import ShortConvolution
from qdelta.testing import tiny_model

HAS_FLA = importlib.util.find_spec("fla") is not None
_GPU_MARKS = (
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(not HAS_FLA, reason="needs fla-core (pip install 'qdelta[gpu]')"),
)


def gpu(fn):
    for mark in _GPU_MARKS:
        fn = mark(fn)
    return fn


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


# ---------------------------------------------------------------- CPU tier


def test_cpu_tensors_take_the_eager_path():
    assert not fused.enabled(torch.ones(3))


def test_eager_context_nests():
    assert fused._disabled_depth == 0
    with fused.eager():
        with fused.eager():
            assert fused._disabled_depth == 2
        assert fused._disabled_depth == 1
    assert fused._disabled_depth == 0


def test_state_layout_round_trip():
    ours = torch.randn(3, 8, 3, generator=torch.Generator().manual_seed(0))
    theirs = fused.to_fla_state(ours)
    assert theirs.shape == (3, 8, 4) and bool((theirs[..., 0] == 0).all())
    torch.testing.assert_close(fused.from_fla_state(theirs), ours, rtol=0, atol=0)


def test_rms_norm_residual_form_equals_add_then_norm():
    gen = torch.Generator().manual_seed(1)
    norm = RMSNorm(16)
    norm.weight.data = torch.rand(16, generator=gen) + 0.5
    x, r = torch.randn(2, 5, 16, generator=gen), torch.randn(2, 5, 16, generator=gen)
    y, s = norm(x, residual=r)
    torch.testing.assert_close(s, r + x, rtol=0, atol=0)
    torch.testing.assert_close(y, norm(r + x), rtol=0, atol=0)


@pytest.mark.skipif(not HAS_FLA, reason="needs fla-core (pip install 'qdelta[gpu]')")
def test_fla_imports_when_installed_and_leaves_our_auto_classes():
    from transformers import AutoConfig

    from qdelta.configuration import TransformerConfig

    assert fused.available()
    assert type(AutoConfig.for_model("transformer")) is TransformerConfig  # fla.models registers its own


# ---------------------------------------------------------------- GPU tier


def _both(fn, *inputs):
    """fn(*inputs) on the fused and on the eager path, with the input gradients of a random projection."""
    outs, grads = [], []
    for ctx in (contextlib.nullcontext, fused.eager):
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        with ctx():
            out = fn(*leaves)
        out = out[0] if isinstance(out, tuple) else out
        proj = torch.randn(out.shape, generator=torch.Generator(out.device).manual_seed(7), device=out.device)
        (out * proj).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in leaves if t.grad is not None])
    return outs, grads


def _assert_close(outs, grads, tol=1e-5):
    assert _rel(outs[0], outs[1]) < tol, _rel(outs[0], outs[1])
    for a, b in zip(*grads):
        assert _rel(a, b) < tol, _rel(a, b)


@pytest.mark.parametrize("mask", [None, [[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]]])
@pytest.mark.parametrize("with_state", [False, True])
@gpu
def test_short_conv_fused_equals_eager(mask, with_state):
    torch.manual_seed(0)
    conv = ShortConvolution(48, 4).cuda()
    B, T = 2, 7
    mask_t = None if mask is None else torch.tensor(mask, device="cuda")
    packing = Packing.from_mask(mask_t, B, T, "cuda")
    x = torch.randn(1, packing.total, 48, device="cuda")
    state = torch.randn(B, 48, 3, device="cuda") if with_state else None
    (outs, grads) = _both(lambda x: conv(x, packing, state, output_state=True), x)
    _assert_close(outs, grads)
    with torch.no_grad():
        new_fused = conv(x, packing, state, output_state=True)[1]
        with fused.eager():
            new_eager = conv(x, packing, state, output_state=True)[1]
    torch.testing.assert_close(new_fused, new_eager, rtol=0, atol=0)


@gpu
def test_short_conv_decode_step_fused_equals_eager():
    torch.manual_seed(0)
    conv = ShortConvolution(48, 4).cuda()
    packing = Packing.from_mask(None, 3, 1, "cuda")
    x, state = torch.randn(1, 3, 48, device="cuda"), torch.randn(3, 48, 3, device="cuda")
    with torch.no_grad():
        y, s = conv(x, packing, state.clone(), output_state=True)
        with fused.eager():
            y_ref, s_ref = conv(x, packing, state.clone(), output_state=True)
    assert _rel(y, y_ref) < 1e-5
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)


@gpu
def test_norms_and_swiglu_fused_equal_eager():
    torch.manual_seed(0)
    norm = RMSNorm(64).cuda()
    norm.weight.data.uniform_(0.5, 1.5)
    x, r = torch.randn(2, 9, 64, device="cuda"), torch.randn(2, 9, 64, device="cuda")
    _assert_close(*_both(lambda x: norm(x), x))
    _assert_close(*_both(lambda x, r: norm(x, residual=r), x, r))
    _assert_close(*_both(lambda x, r: norm(x, residual=r)[1], x, r))
    for activation in ("swish", "sigmoid"):
        gated = GatedRMSNorm(32, activation=activation).cuda()
        gated.weight.data.uniform_(0.5, 1.5)
        o, g = torch.randn(1, 9, 3, 32, device="cuda"), torch.randn(1, 9, 3, 32, device="cuda")
        _assert_close(*_both(lambda o, g: gated(o, g), o, g))
        _assert_close(*_both(lambda o: gated(o), o))
    mlp = SwiGLU(64, 128).cuda()
    _assert_close(*_both(lambda x: mlp(x), x))


def _model(variant="paper", **overrides):
    fields = dict(hidden_size=128, num_heads=2, head_dim=64, expand_v=2, intermediate_size=256, variant=variant)
    fields.update(overrides)
    return tiny_model("qdelta", seed=0, **fields).cuda()


@pytest.mark.parametrize("variant", ["paper", "official"])
@gpu
def test_model_logits_loss_and_gradients_fused_equal_eager(variant):
    model = _model(variant).train()
    ids = torch.randint(3, 96, (2, 80), generator=torch.Generator().manual_seed(0)).cuda()
    results = []
    for ctx in (contextlib.nullcontext, fused.eager):
        model.zero_grad(set_to_none=True)
        with ctx():
            out = model(ids, labels=ids)
        logits = out.logits.detach().clone()  # the fused loss's backward writes the logits' gradient over them
        out.loss.backward()
        results.append((logits, out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logits, loss, grads), (logits_ref, loss_ref, grads_ref) = results
    assert _rel(logits, logits_ref) < 1e-5
    assert abs(float(loss - loss_ref)) < 1e-5 * abs(float(loss_ref))
    for name, grad in grads.items():
        assert _rel(grad, grads_ref[name]) < 1e-4, (name, _rel(grad, grads_ref[name]))


@pytest.mark.parametrize("variant", ["paper", "official"])
@gpu
def test_fused_cached_decoding_and_padding_equal_full_forward(variant):
    model = _model(variant)
    ids = torch.randint(3, 96, (2, 40), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        full = model(ids).logits
        with fused.eager():
            assert _rel(full, model(ids).logits) < 1e-5
        out = model(ids[:, :29], use_cache=True)
        steps, cache = [out.logits], out.past_key_values
        for t in range(29, 40):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
        assert _rel(torch.cat(steps, 1), full) < 1e-5
        mask = torch.ones_like(ids)
        mask[1, :7] = 0
        padded = model(ids, attention_mask=mask).logits
        alone = model(ids[1:, 7:]).logits
        assert _rel(padded[1, 7:], alone[0]) < 1e-5
        assert _rel(padded[0], full[0]) < 1e-5
