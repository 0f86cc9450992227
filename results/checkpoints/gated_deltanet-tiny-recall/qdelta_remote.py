"""Loads this checkpoint with the installed qdelta package (`pip install qdelta`).

transformers imports this file for `from_pretrained(..., trust_remote_code=True)` through the
`auto_map` of config.json; it holds no model code of its own.
"""

from qdelta import (  # noqa: F401
    DeltaNetConfig,
    DeltaNetForCausalLM,
    DeltaNetModel,
    GatedDeltaNetConfig,
    GatedDeltaNetForCausalLM,
    GatedDeltaNetModel,
    LinearAttentionConfig,
    LinearAttentionForCausalLM,
    LinearAttentionModel,
    QDeltaConfig,
    QDeltaForCausalLM,
    QDeltaModel,
    TransformerConfig,
    TransformerForCausalLM,
    TransformerModel,
)
