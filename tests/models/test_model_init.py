"""Initialisation parameter by parameter against the distributions flash-linear-attention draws from.

What fla does (fla-org/flash-linear-attention at bc3b101, ``fla/models/*/modeling_*.py``
``_init_weights``, ``fla/layers/gated_deltanet.py``, ``fla/modules/conv/short_conv.py``; the Q-Delta
authors' ``psmiz/Q-Delta`` at 4afe5b5, ``qdelta/modeling_qdelta.py``, is the same):

- every ``nn.Linear`` and ``nn.Conv1d`` (fla's ``ShortConvolution`` is one) weight ~ N(0, initializer_range),
  biases 0; ``nn.Embedding`` ~ N(0, initializer_range); norms (``reset_parameters``) weight 1;
- Gated DeltaNet / Q-Delta decay: ``A_log = log A``, ``A ~ U(0, 16)``;
  ``dt_bias = dt + log(-expm1(-dt))`` (softplus^-1), ``dt = exp(U * (log 0.1 - log 0.001) + log 0.001)``
  clamped at 1e-4;
- no residual rescaling (``prenorm_residual_strategy`` is None unless a caller passes it; nothing does);
- Q-Delta's ``lamb_proj`` is an ``nn.Linear`` (N(0, initializer_range), no bias) and ``lamb_bias`` the
  constant 0.9 of its config.

Distributions are checked with Kolmogorov-Smirnov tests (p > 1e-3 for the right law; the former
A ~ U(1, 16) gives p < 1e-5 at these sample sizes, the former Kaiming-uniform convolutions far less) on fixed seeds.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from qdelta.configuration import QDeltaConfig
from qdelta.norms import GatedRMSNorm, RMSNorm
from qdelta.short_conv import ShortConvolution
from qdelta.testing import tiny_model

STD = 0.05  # not fla's default 0.02, to show the init follows initializer_range
MANY_HEADS = dict(num_heads=250, head_dim=2, expand_v=1, num_hidden_layers=8, initializer_range=STD)
ALPHA = 1e-3


def _model(model_type, **overrides):
    fields = dict(MANY_HEADS) if model_type != "transformer" else dict(num_heads=4, initializer_range=STD)
    fields.update(overrides)
    return tiny_model(model_type, seed=1, **fields)


def _classify(model):
    """{law: [tensors]} for every parameter, by the module that owns it; fails on a parameter no rule covers."""
    laws = {"normal": [], "ones": [], "zeros": [], "A_log": [], "dt_bias": []}
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            where = f"{module_name}.{name}"
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding, ShortConvolution)):
                laws["normal" if name == "weight" else "zeros"].append(p.detach().flatten())
            elif isinstance(module, (RMSNorm, GatedRMSNorm)):
                laws["ones"].append(p.detach().flatten())
            elif name in ("A_log", "dt_bias"):
                laws[name].append(p.detach().flatten())
            else:
                pytest.fail(f"no initialisation rule covers {where}")
    return {k: torch.cat(v) if v else None for k, v in laws.items()}


@pytest.mark.parametrize("model_type", ["qdelta", "gated_deltanet", "delta_net", "linear_attn", "transformer"])
def test_projections_convolutions_embeddings_and_norms(model_type):
    model = _model(model_type, **({"qkv_bias": True} if model_type == "transformer" else {}))
    laws = _classify(model)
    assert bool((laws["ones"] == 1).all())
    if model_type == "transformer":
        assert laws["zeros"] is not None and bool((laws["zeros"] == 0).all())
    # each weight on its own (enough samples in every one), then all pooled
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        if name.endswith("weight") and isinstance(owner, (torch.nn.Linear, torch.nn.Embedding, ShortConvolution)):
            x = p.detach().double().flatten().numpy()
            assert stats.kstest(x, "norm", args=(0, STD)).pvalue > ALPHA / 50, name
            assert abs(x.std() / STD - 1) < 0.1 and abs(x.mean()) < 4 * STD / math.sqrt(x.size), name
    pooled = laws["normal"].double().numpy()
    assert stats.kstest(pooled, "norm", args=(0, STD)).pvalue > ALPHA


@pytest.mark.parametrize("model_type", ["qdelta", "gated_deltanet", "linear_attn"])
def test_decay_parameters(model_type):
    laws = _classify(_model(model_type))
    A = laws["A_log"].double().exp().numpy()
    assert A.size == 8 * 250
    assert stats.kstest(A, "uniform", args=(0, 16)).pvalue > ALPHA
    assert stats.kstest(A, "uniform", args=(1, 15)).pvalue < 1e-5  # the former U(1, 16) is told apart
    dt_bias = laws["dt_bias"].double()
    dt = F.softplus(dt_bias)
    assert bool((dt >= 1e-3 - 1e-12).all()) and bool((dt <= 0.1 + 1e-12).all())
    lo, hi = math.log(1e-3), math.log(0.1)
    assert stats.kstest(dt.log().numpy(), "uniform", args=(lo, hi - lo)).pvalue > ALPHA
    # fla stores dt_bias = dt + log(-expm1(-dt)): recompute it from dt in float64
    torch.testing.assert_close(dt + torch.log(-torch.expm1(-dt)), dt_bias, rtol=0, atol=1e-5)


def test_decay_range_follows_dt_min_dt_max():
    laws = _classify(_model("gated_deltanet", dt_min=1e-4, dt_max=1e-3))
    dt = F.softplus(laws["dt_bias"].double())
    lo, hi = math.log(1e-4), math.log(1e-3)
    assert stats.kstest(dt.log().numpy(), "uniform", args=(lo, hi - lo)).pvalue > ALPHA


def test_no_decay_parameters_where_fla_has_none():
    laws = _classify(_model("delta_net"))
    assert laws["A_log"] is None and laws["dt_bias"] is None


def test_qdelta_extra_parameters_as_the_authors_initialise_them():
    assert QDeltaConfig().lamb_bias == 0.9
    model = _model("qdelta")
    lamb = torch.cat([m.lamb_proj.weight.detach().flatten() for m in model.modules() if hasattr(m, "lamb_proj")])
    assert all(m.lamb_proj.bias is None for m in model.modules() if hasattr(m, "lamb_proj"))
    assert stats.kstest(lamb.double().numpy(), "norm", args=(0, STD)).pvalue > ALPHA
