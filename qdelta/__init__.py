"""qdelta: the reference implementation of Q-Delta and a long-context recall harness.

Importing the package registers every model type with ``transformers``' ``AutoConfig``,
``AutoModel`` and ``AutoModelForCausalLM``: "qdelta", "gated_deltanet", "delta_net",
"linear_attn", "transformer".
"""

__version__ = "0.1.0"

from .cache import QDeltaCache  # noqa: E402
from .configuration import DeltaNetConfig, GatedDeltaNetConfig, LinearAttentionConfig, QDeltaConfig, TransformerConfig  # noqa: E402
from .loading import load_model  # noqa: E402
from .modeling import (  # noqa: E402
    MODEL_CLASSES,
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


def _register() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    for model_type, (base, causal) in MODEL_CLASSES.items():
        AutoConfig.register(model_type, causal.config_class, exist_ok=True)
        AutoModel.register(causal.config_class, base, exist_ok=True)
        AutoModelForCausalLM.register(causal.config_class, causal, exist_ok=True)


_register()

__all__ = [
    "__version__",
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
