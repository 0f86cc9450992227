"""Checkpoint folders: our round trip, the authors' format, flash-linear-attention's Gated DeltaNet,
and bad folders failing clearly."""

import json
import logging

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

import qdelta
from qdelta.testing import MODEL_TYPES, tiny_model

D, H, K, EXPAND_V, LAYERS, VOCAB, MLP = 32, 2, 16, 2, 2, 80, 64


def _ids(seed=0, shape=(2, 70)):
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_load_round_trip_identical_logits(tmp_path, model_type):
    model = tiny_model(model_type, seed=1)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == model_type
    if model_type == "qdelta":
        assert config["variant"] == "paper"  # recorded explicitly even though it is the default
    ids = _ids()
    ref = model(ids).logits
    ours = qdelta.load_model(tmp_path)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(auto) is type(model)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), type(model.config))
    torch.testing.assert_close(ours(ids).logits, ref, atol=0, rtol=0)
    torch.testing.assert_close(auto(ids).logits, ref, atol=0, rtol=0)


def _documented_weights(num_v_heads=None, with_lam=True, gen=None):
    """Weights named as in DESIGN §3 (the authors' / fla layout), shapes from the config fields."""
    HV = num_v_heads or H
    V = K * EXPAND_V
    rand = lambda *shape: torch.randn(*shape, generator=gen) * 0.2  # noqa: E731
    w = {"model.embeddings.weight": rand(VOCAB, D), "model.norm.weight": 1 + rand(D), "lm_head.weight": rand(VOCAB, D)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "attn_norm.weight"] = 1 + rand(D)
        w[p + "mlp_norm.weight"] = 1 + rand(D)
        w[p + "attn.q_proj.weight"], w[p + "attn.k_proj.weight"] = rand(H * K, D), rand(H * K, D)
        w[p + "attn.v_proj.weight"], w[p + "attn.g_proj.weight"] = rand(HV * V, D), rand(HV * V, D)
        w[p + "attn.a_proj.weight"], w[p + "attn.b_proj.weight"] = rand(HV, D), rand(HV, D)
        if with_lam:
            w[p + "attn.lamb_proj.weight"] = rand(HV, D)
        w[p + "attn.o_proj.weight"] = rand(D, HV * V)
        w[p + "attn.A_log"] = torch.rand(HV, generator=gen) * 2
        w[p + "attn.dt_bias"] = rand(HV)
        for name, dim in (("q", H * K), ("k", H * K), ("v", HV * V)):
            w[p + f"attn.{name}_conv1d.weight"] = rand(dim, 1, 4)
        w[p + "attn.o_norm.weight"] = 1 + rand(V)
        w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"] = rand(MLP, D), rand(MLP, D)
        w[p + "mlp.down_proj.weight"] = rand(D, MLP)
    return w


def _write(folder, config, weights, dtype=torch.float32):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    return folder


def _authors_config(**extra):
    return {
        "architectures": ["QDeltaForCausalLM"],
        "model_type": "qdelta",
        "attn_mode": "chunk",
        "hidden_size": D,
        "num_hidden_layers": LAYERS,
        "num_heads": H,
        "head_dim": K,
        "expand_v": EXPAND_V,
        "conv_size": 4,
        "use_gate": True,
        "use_short_conv": True,
        "allow_neg_eigval": False,
        "hidden_ratio": 4,
        "intermediate_size": MLP,
        "hidden_act": "swish",
        "norm_eps": 1e-6,
        "lamb_bias": 0.9,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
        "fuse_cross_entropy": True,
        "fuse_norm": True,
        "max_position_embeddings": 2048,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.48.0",
        **extra,
    }


@pytest.mark.slow
def test_authors_checkpoint_loads_with_official_variant(tmp_path, caplog):
    weights = _documented_weights(gen=torch.Generator().manual_seed(0))
    folder = _write(tmp_path / "authors", _authors_config(), weights, dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="qdelta"):
        model = qdelta.load_model(folder)
    assert model.config.variant == "official"
    assert "variant='official'" in caplog.text
    state = model.state_dict()
    for name, tensor in weights.items():  # every documented weight landed where its name says
        torch.testing.assert_close(state[name], tensor.to(torch.bfloat16).float(), atol=0, rtol=0)
    ids = _ids(1)
    logits = model(ids).logits
    assert torch.isfinite(logits).all()
    paper = qdelta.load_model(folder, variant="paper")(ids).logits
    assert (logits - paper).abs().max() > 1e-4  # lam matters: the two variants differ on this checkpoint
    cache = model(ids[:, :66], use_cache=True).past_key_values
    step = model(ids[:, 66:67], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(step[:, 0], logits[:, 66], atol=1e-4, rtol=1e-4)
    auto = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert auto.config.variant == "official"
    torch.testing.assert_close(auto(ids).logits, logits, atol=1e-6, rtol=1e-6)


def test_authors_checkpoint_with_negative_eigenvalues_doubles_beta_and_lam(tmp_path):
    weights = _documented_weights(gen=torch.Generator().manual_seed(0))
    plain = qdelta.load_model(_write(tmp_path / "a", _authors_config(), weights))
    neg = qdelta.load_model(_write(tmp_path / "b", _authors_config(allow_neg_eigval=True), weights))
    h = torch.randn(1, 9, D, generator=torch.Generator().manual_seed(2))
    g0, beta0, lam0 = plain.model.layers[0].attn.gates(h)
    g1, beta1, lam1 = neg.model.layers[0].attn.gates(h)
    torch.testing.assert_close(g1, g0)
    torch.testing.assert_close(beta1, 2 * beta0)
    torch.testing.assert_close(lam1, 2 * lam0)
    assert beta1.max() > 1 and torch.isfinite(neg(_ids(3)).logits).all()


def _fla_gdn_config(**extra):
    config = _authors_config(**extra)
    config.update(
        model_type="gated_deltanet",
        architectures=["GatedDeltaNetForCausalLM"],
        fuse_swiglu=True,
        use_l2warp=False,
        num_v_heads=extra.get("num_v_heads"),
        attn=None,
    )
    del config["lamb_bias"]
    return config


@pytest.mark.slow
def test_fla_gated_deltanet_checkpoint_loads(tmp_path):
    weights = _documented_weights(with_lam=False, gen=torch.Generator().manual_seed(4))
    folder = _write(tmp_path / "gdn", _fla_gdn_config(), weights)
    model = qdelta.load_model(folder)
    assert type(model).__name__ == "GatedDeltaNetForCausalLM"
    ids = _ids(5)
    logits = model(ids).logits
    # Gated DeltaNet is Q-Delta with lam = 0: the same weights plus a lamb_proj that drives lam to ~0
    # (sigmoid(-30 - 0.9) ~ 4e-14) give the same logits through the Q-Delta model.
    with_lam = dict(weights)
    for i in range(LAYERS):
        with_lam[f"model.layers.{i}.attn.lamb_proj.weight"] = torch.zeros(H, D)
    qd = qdelta.load_model(_write(tmp_path / "qd", _authors_config(lamb_bias=30.0, variant="paper"), with_lam))
    torch.testing.assert_close(qd(ids).logits, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_grouped_value_heads_equal_repeated_query_key_heads(tmp_path):
    """num_v_heads = 2 * num_heads: each q/k head serves two value heads (fla's GVA)."""
    weights = _documented_weights(num_v_heads=2 * H, with_lam=False, gen=torch.Generator().manual_seed(6))
    gva = qdelta.load_model(_write(tmp_path / "gva", _fla_gdn_config(num_v_heads=2 * H), weights))
    expanded = dict(weights)
    for i in range(LAYERS):
        p = f"model.layers.{i}.attn."
        for name in ("q_proj.weight", "k_proj.weight"):
            expanded[p + name] = weights[p + name].view(H, K, D).repeat_interleave(2, 0).reshape(2 * H * K, D)
        for name in ("q_conv1d.weight", "k_conv1d.weight"):
            expanded[p + name] = weights[p + name].view(H, K, 1, 4).repeat_interleave(2, 0).reshape(2 * H * K, 1, 4)
    full = qdelta.load_model(_write(tmp_path / "full", _fla_gdn_config(num_heads=2 * H), expanded))
    ids = _ids(7)
    torch.testing.assert_close(gva(ids).logits, full(ids).logits, atol=1e-5, rtol=1e-5)


def test_grouped_values_rejected_for_qdelta(tmp_path):
    folder = _write(tmp_path / "qd", _authors_config(num_v_heads=2 * H), _documented_weights(num_v_heads=2 * H))
    with pytest.raises(ValueError, match="num_v_heads"):
        qdelta.load_model(folder)


@pytest.fixture
def good_folder(tmp_path):
    return _write(tmp_path / "good", _authors_config(), _documented_weights(gen=torch.Generator().manual_seed(8)))


def test_missing_folder_and_files_fail_clearly(tmp_path, good_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qdelta.load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        qdelta.load_model(tmp_path / "empty")
    (good_folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        qdelta.load_model(good_folder)
    with pytest.raises(ValueError, match="is a file"):
        qdelta.load_model(good_folder / "config.json")


def test_bad_config_fails_clearly(good_folder):
    (good_folder / "config.json").write_text(json.dumps(_authors_config(model_type="mamba9")))
    with pytest.raises(ValueError, match="model_type 'mamba9'"):
        qdelta.load_model(good_folder)
    (good_folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        qdelta.load_model(good_folder)
    with pytest.raises(ValueError, match="variant"):
        (good_folder / "config.json").write_text(json.dumps(_authors_config()))
        qdelta.load_model(good_folder, variant="fast")


@pytest.mark.parametrize(
    "damage,message",
    [
        ("drop", "missing weights.*layers.1.attn.lamb_proj.weight"),
        ("extra", "unexpected weights.*model.layers.0.attn.extra_proj.weight"),
        ("shape", r"shape mismatches.*model.layers.0.attn.q_proj.weight: checkpoint \[16, 32\], model \[32, 32\]"),
    ],
)
def test_weight_mismatches_fail_clearly(tmp_path, damage, message):
    weights = _documented_weights(gen=torch.Generator().manual_seed(9))
    if damage == "drop":
        del weights["model.layers.1.attn.lamb_proj.weight"]
    elif damage == "extra":
        weights["model.layers.0.attn.extra_proj.weight"] = torch.randn(2, 2)
    else:
        weights["model.layers.0.attn.q_proj.weight"] = torch.randn(16, D)
    folder = _write(tmp_path / damage, _authors_config(), weights)
    with pytest.raises(ValueError, match=message):
        qdelta.load_model(folder)


def test_truncated_safetensors_fails_clearly(good_folder):
    path = good_folder / "model.safetensors"
    data = path.read_bytes()
    for cut in (len(data) // 2, 5):  # data cut short; header cut short
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            qdelta.load_model(good_folder)


@pytest.mark.slow
def test_sharded_and_torch_bin_folders_load(tmp_path):
    model = tiny_model("qdelta", seed=2, variant="official")
    ids = _ids(10)
    ref = model(ids).logits
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    torch.testing.assert_close(qdelta.load_model(tmp_path / "sharded")(ids).logits, ref, atol=0, rtol=0)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    torch.testing.assert_close(qdelta.load_model(legacy)(ids).logits, ref, atol=0, rtol=0)
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="shards"):
        qdelta.load_model(tmp_path / "sharded")


def test_null_variant_means_official(tmp_path):
    folder = _write(tmp_path / "n", _authors_config(variant=None), _documented_weights())
    assert qdelta.load_model(folder).config.variant == "official"


# flash-linear-attention 0.6.0's GatedDeltaNetConfig.__init__ fields (fla/models/gated_deltanet/
# configuration_gated_deltanet.py of the 0.6.0 wheel): each is implemented or refused by name
FLA_06_GDN_FIELDS = (
    "attn_mode hidden_size expand_v use_gate use_short_conv allow_neg_eigval conv_size head_dim num_heads "
    "num_v_heads max_position_embeddings hidden_ratio intermediate_size hidden_act num_hidden_layers norm_eps "
    "attn use_cache pad_token_id bos_token_id eos_token_id tie_word_embeddings initializer_range fuse_norm "
    "fuse_swiglu fuse_cross_entropy fuse_linear_cross_entropy use_l2warp vocab_size attnres_block_size "
    "output_gate_activation"
).split()


def _restated_gate(activation):
    """Forward hook replacing a GatedRMSNorm's output by ``x / rms(x) * w * act(gate)``, written out here."""

    def hook(module, args, output):
        x, gate = (a.double() for a in args)
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + module.eps) * module.weight.double()
        act = 1 / (1 + torch.exp(-gate)) if activation == "sigmoid" else gate / (1 + torch.exp(-gate))
        return (y * act).to(output.dtype)

    return hook


@pytest.mark.parametrize("activation", ["sigmoid", "swish", "silu"])
def test_fla_output_gate_activation_matches_a_restatement(tmp_path, activation):
    weights = _documented_weights(with_lam=False, gen=torch.Generator().manual_seed(11))
    config = _fla_gdn_config(
        output_gate_activation=activation, attnres_block_size=None, fuse_linear_cross_entropy=False, pad_token_id=None
    )
    assert set(config) >= set(FLA_06_GDN_FIELDS)  # a full fla 0.6 config.json
    model = qdelta.load_model(_write(tmp_path / activation, config, weights))
    restated = qdelta.load_model(_write(tmp_path / "plain", _fla_gdn_config(), weights))
    for layer in restated.model.layers:
        layer.attn.o_norm.register_forward_hook(_restated_gate(activation))
    ids = _ids(12)
    logits = model(ids).logits
    torch.testing.assert_close(logits, restated(ids).logits, atol=1e-5, rtol=1e-5)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / activation, dtype=torch.float32)
    torch.testing.assert_close(auto(ids).logits, logits, atol=1e-6, rtol=1e-6)
    cache = model(ids[:, :60], use_cache=True).past_key_values
    step = model(ids[:, 60:61], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(step[:, 0], logits[:, 60], atol=1e-4, rtol=1e-4)
    swish = qdelta.load_model(tmp_path / "plain")(ids).logits
    if activation == "sigmoid":
        assert (logits - swish).abs().max() > 1e-2  # the gate matters on this checkpoint
    else:
        torch.testing.assert_close(logits, swish, atol=0, rtol=0)


@pytest.mark.parametrize(
    "extra, named",
    [
        (
            {"output_gate_activation": "tanh"},
            r"'output_gate_activation' = 'tanh' .*supported: 'swish', 'silu', 'sigmoid'",
        ),
        ({"attnres_block_size": 4}, r"'attnres_block_size' = 4 is not implemented \(supported: null\)"),
        ({"attn": {"layers": [1], "num_heads": 2}}, r"'attn' = .*not implemented \(supported: null\)"),
        (
            {"rope_scaling": {"type": "linear"}},
            r"unknown to every gated_deltanet format qdelta reads: 'rope_scaling' = ",
        ),
        ({"conv_bias": True}, r"'conv_bias' = True is not implemented \(supported: False\)"),
    ],
)
def test_unimplemented_fields_are_refused_by_name(tmp_path, extra, named):
    weights = _documented_weights(with_lam=False, gen=torch.Generator().manual_seed(13))
    folder = _write(tmp_path / "gdn", {**_fla_gdn_config(), **extra}, weights)
    for load in (qdelta.load_model, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(ValueError, match=named) as err:
            load(folder)
        assert len(str(err.value).splitlines()) == 1 and "qdelta/MODELS.md" in str(err.value)


@pytest.mark.slow
def test_unknown_field_refused_for_every_model_type(tmp_path):
    for model_type in MODEL_TYPES:
        folder = tmp_path / model_type
        tiny_model(model_type).save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        qdelta.load_model(folder)  # what we write loads
        (folder / "config.json").write_text(json.dumps({**config, "sliding_window": 128}))
        with pytest.raises(
            ValueError, match=rf"unknown to every {model_type} format qdelta reads: 'sliding_window' = 128"
        ):
            qdelta.load_model(folder)


def test_authors_training_only_fields_are_accepted(tmp_path):
    """fuse_* and use_l2warp choose fused training kernels / the loss: the logits do not depend on them."""
    weights = _documented_weights(gen=torch.Generator().manual_seed(14))
    a = qdelta.load_model(_write(tmp_path / "a", _authors_config(), weights))
    flags = dict(fuse_norm=False, fuse_swiglu=False, fuse_cross_entropy=False, use_l2warp=True)
    b = qdelta.load_model(_write(tmp_path / "b", _authors_config(**flags), weights))
    ids = _ids(15)
    torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=0, rtol=0)
