"""The public names of :mod:`qdelta` (importing :mod:`qdelta.modeling` registers the models with transformers)."""

from .cache import QDeltaCache  # noqa: E402
from .configuration import (  # noqa: E402
    DeltaNetConfig,
    GatedDeltaNetConfig,
    LinearAttentionConfig,
    QDeltaConfig,
    TransformerConfig,
)
from .loading import load_model  # noqa: E402
from .modeling import (  # noqa: E402
    DeltaNetForCausalLM,
    DeltaNetModel,
    GatedDeltaNetForCausalLM,
    GatedDeltaNetModel,
    LinearAttentionForCausalLM,
    LinearAttentionModel,
    QDeltaForCausalLM,
    QDeltaModel,
    TransformerForCausalLM,
    TransformerModel,
)

__all__ = [
    "load_model",
    "QDeltaCache",
    "QDeltaConfig",
    "QDeltaModel",
    "QDeltaForCausalLM",
    "GatedDeltaNetConfig",
    "GatedDeltaNetModel",
    "GatedDeltaNetForCausalLM",
    "DeltaNetConfig",
    "DeltaNetModel",
    "DeltaNetForCausalLM",
    "LinearAttentionConfig",
    "LinearAttentionModel",
    "LinearAttentionForCausalLM",
    "TransformerConfig",
    "TransformerModel",
    "TransformerForCausalLM",
]
