"""Tiny configs and models for tests (vocab 64-128, d 32-64, 2 layers): CPU-fast, all model types.

>>> from qdelta.testing import tiny_config, tiny_model
>>> model = tiny_model("qdelta", seed=0)          # random weights, fp32, eval mode
>>> model.config.num_hidden_layers
2
"""

from __future__ import annotations

import torch

from .configuration import CONFIG_CLASSES

MODEL_TYPES = tuple(CONFIG_CLASSES)

_TINY = {
    "qdelta": dict(num_heads=2, head_dim=16, expand_v=2, variant="paper"),
    "gated_deltanet": dict(num_heads=2, head_dim=16, expand_v=2),
    "delta_net": dict(num_heads=2, expand_k=1, expand_v=1, use_gate=False),
    "linear_attn": dict(num_heads=2, head_dim=16, expand_v=1),
    "transformer": dict(num_heads=4, num_kv_heads=2, max_position_embeddings=512),
}


def tiny_config(model_type: str, **overrides):
    """A small random-initialisable config of ``model_type`` (vocab 96, d 32, 2 layers, MLP 64)."""
    if model_type not in CONFIG_CLASSES:
        raise ValueError(f"model_type must be one of {sorted(CONFIG_CLASSES)}, got {model_type!r}")
    fields = dict(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        norm_eps=1e-6,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    fields.update(_TINY[model_type])
    fields.update(overrides)
    return CONFIG_CLASSES[model_type](**fields)


def tiny_model(model_type: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A ``...ForCausalLM`` built from :func:`tiny_config` with weights drawn from ``seed``, in eval mode."""
    from .modeling import MODEL_CLASSES

    config = tiny_config(model_type, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODEL_CLASSES[model_type][1](config)
    return model.to(dtype).eval()
