"""Each mixer against a hand-written fp64 reference built from DESIGN §3 (not from the layer code)."""

import pytest
import torch
import torch.nn.functional as F

from qdelta.kernels import naive_recurrent_qdelta
from qdelta.packing import Packing
from qdelta.testing import tiny_model

T = 70  # crosses the 64-token chunk boundary


def _conv_silu(x, conv):
    """Causal depthwise conv of (1, T, D) with weight [D, 1, W], then SiLU."""
    W = conv.weight.shape[-1]
    return F.silu(F.conv1d(F.pad(x.transpose(1, 2), (W - 1, 0)), conv.weight, groups=x.shape[-1]).transpose(1, 2))


def _rms(x, w, eps):
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w


def _input(d, seed=0):
    return torch.randn(1, T, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _qkv(mixer, h, H, K, V):
    """The mixer's q, k, v by hand: projection, causal short conv, SiLU; (1, T, heads, dim)."""
    q = _conv_silu(mixer.q_proj(h), mixer.q_conv1d).view(1, T, H, K)
    k = _conv_silu(mixer.k_proj(h), mixer.k_conv1d).view(1, T, H, K)
    v = _conv_silu(mixer.v_proj(h), mixer.v_conv1d).view(1, T, H, V)
    return q, k, v


def _assert_mixer_output(mixer, h, o, H, V):
    """o (1, T, H, V) through the gated per-head RMSNorm and o_proj equals the mixer on h."""
    o = _rms(o, mixer.o_norm.weight, 1e-6) * F.silu(mixer.g_proj(h).view(1, T, H, V))
    expected = mixer.o_proj(o.reshape(1, T, H * V))
    with torch.no_grad():
        got, _ = mixer(h, Packing.from_mask(None, 1, T, h.device))
    torch.testing.assert_close(got, expected.detach(), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_qdelta_layer_matches_design(variant):
    model = tiny_model("qdelta", seed=1, variant=variant, dtype=torch.float64)
    mixer = model.model.layers[0].attn
    h = _input(32)
    H, K, V = 2, 16, 32
    q, k, v = _qkv(mixer, h, H, K, V)
    beta = torch.sigmoid(mixer.b_proj(h))
    lam = torch.sigmoid(mixer.lamb_proj(h) - 0.9)
    g = -mixer.A_log.exp() * F.softplus(mixer.a_proj(h) + mixer.dt_bias)
    o, _ = naive_recurrent_qdelta(q, k, v, g, beta, lam, use_qk_l2norm=True, variant=variant)
    _assert_mixer_output(mixer, h, o, H, V)


@pytest.mark.slow
def test_linear_attention_layer_matches_token_loop():
    model = tiny_model("linear_attn", seed=2, dtype=torch.float64)
    mixer = model.model.layers[0].attn
    h = _input(32, seed=1)
    H, K, V = 2, 16, 16
    q, k, v = (x[0] for x in _qkv(mixer, h, H, K, V))  # (T, heads, dim)
    q = q / (q.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
    k = k / (k.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
    g = (-mixer.A_log.exp() * F.softplus(mixer.a_proj(h) + mixer.dt_bias))[0]  # (T, H)
    S = torch.zeros(H, K, V, dtype=torch.float64)
    outs = []
    for t in range(T):
        S = g[t].exp()[:, None, None] * S + k[t][:, :, None] * v[t][:, None, :]
        outs.append(K**-0.5 * torch.einsum("hk,hkv->hv", q[t], S))
    _assert_mixer_output(mixer, h, torch.stack(outs)[None], H, V)


def test_attention_layer_matches_explicit_softmax_with_rotary():
    model = tiny_model("transformer", seed=3, dtype=torch.float64)
    attn = model.model.layers[0].attn
    h = _input(32, seed=2)
    H, Hkv, Dh = 4, 2, 8
    q = attn.q_proj(h).view(T, H, Dh)
    k = attn.k_proj(h).view(T, Hkv, Dh).repeat_interleave(H // Hkv, 1)
    v = attn.v_proj(h).view(T, Hkv, Dh).repeat_interleave(H // Hkv, 1)
    inv = 10000.0 ** (-torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)  # (Dh/2,)
    ang = torch.arange(T, dtype=torch.float64)[:, None, None] * inv  # (T, 1, Dh/2)

    def rope(x):  # rotate-half: pairs (i, i + Dh/2)
        a, b = x[..., : Dh // 2], x[..., Dh // 2 :]
        return torch.cat([a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()], -1)

    q, k = rope(q), rope(k)
    scores = torch.einsum("thd,shd->hts", q, k) / Dh**0.5
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    o = torch.einsum("hts,shd->thd", scores.softmax(-1), v)
    expected = attn.o_proj(o.reshape(1, T, H * Dh))
    with torch.no_grad():
        got, _ = attn(h, Packing.from_mask(None, 1, T, h.device))
    torch.testing.assert_close(got, expected.detach(), atol=1e-10, rtol=1e-10)


def test_block_and_mlp_match_design():
    model = tiny_model("delta_net", seed=4, dtype=torch.float64)
    block = model.model.layers[1]
    h = _input(32, seed=3)
    packing = Packing.from_mask(None, 1, T, h.device)
    with torch.no_grad():
        mixed, _ = block.attn(_rms(h, block.attn_norm.weight, 1e-6), packing)
        x = h + mixed
        m = _rms(x, block.mlp_norm.weight, 1e-6)
        expected = x + block.mlp.down_proj(F.silu(block.mlp.gate_proj(m)) * block.mlp.up_proj(m))
        got, _ = block(h, packing)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    assert block.mlp.gate_proj.weight.shape == (64, 32)  # intermediate_size from tiny_config
    from qdelta.configuration import mlp_intermediate_size

    assert mlp_intermediate_size(1024, 4, None) == 2816 and mlp_intermediate_size(2048, 4, None) == 5632
