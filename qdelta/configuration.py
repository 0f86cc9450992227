"""Model configs: Q-Delta and its baselines, as ``transformers`` configs (DESIGN §3).

Field names follow the authors' code and flash-linear-attention, so their ``config.json``
files load unchanged. One base class holds what every model type shares (embedding, blocks,
SwiGLU MLP, norms); each model type adds its mixer's fields.

    model_type        mixer                                      recurrence
    "qdelta"          Q-Delta (q/k/v/a/b/lamb projections)       chunk_qdelta, lam = sigmoid(.)
    "gated_deltanet"  Gated DeltaNet (no lamb_proj)              chunk_qdelta, lam = None
    "delta_net"       DeltaNet (no decay)                        chunk_qdelta, lam = None, g = None
    "linear_attn"     gated linear attention                     qdelta.kernels.linear_attention
    "transformer"     causal softmax attention, rotary           torch SDPA

A Q-Delta ``config.json`` without a ``variant`` field comes from the authors' code: it loads as
``variant="official"`` (logged). Configs we write always record the variant.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

VARIANTS = ("paper", "official")
GATE_ACTIVATIONS = ("swish", "silu", "sigmoid")


def mlp_intermediate_size(hidden_size: int, hidden_ratio: float, intermediate_size: Optional[int]) -> int:
    """SwiGLU width: ``256 * ceil(int(d * hidden_ratio * 2/3) / 256)`` unless given explicitly."""
    if intermediate_size is not None:
        return int(intermediate_size)
    width = int(hidden_size * hidden_ratio * 2 / 3)
    return 256 * ((width + 255) // 256)


def _require(cond: bool, field: str, expected: str, got, fix: str) -> None:
    if not cond:
        raise ValueError(f"config field {field!r} must be {expected}, got {got!r}; {fix}")


class BaseLMConfig(PretrainedConfig):
    """Fields shared by every model type (embedding, pre-norm blocks, SwiGLU MLP, untied head)."""

    model_type = "qdelta_base"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        num_hidden_layers: int = 21,
        num_heads: int = 6,
        hidden_ratio: float = 4,
        intermediate_size: Optional[int] = None,
        hidden_act: str = "swish",
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        max_position_embeddings: int = 2048,
        use_cache: bool = True,
        pad_token_id: Optional[int] = None,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        attn: Optional[dict] = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.use_cache = use_cache
        self.attn = attn
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_fields()

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """Refuses fields this package does not implement (``qdelta.config_fields``), then builds the config."""
        from .config_fields import check_config_fields

        check_config_fields(config_dict, cls)
        return super().from_dict(config_dict, **kwargs)

    @property
    def max_sequence_length(self) -> Optional[int]:
        """Longest input the model supports; ``None`` (no limit) for recurrent models."""
        return None

    def validate_fields(self) -> None:
        """Reject configs this implementation cannot run exactly (raises ``ValueError``)."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, name, "a positive int", value, "fix config.json")
        _require(
            self.hidden_act in ("swish", "silu"),
            "hidden_act",
            "'swish' (SwiGLU MLP)",
            self.hidden_act,
            "only the SwiGLU MLP of DESIGN §3 is implemented",
        )
        _require(
            self.attn is None,
            "attn",
            "null (no hybrid attention layers)",
            self.attn,
            "hybrid checkpoints mixing attention layers into a recurrent stack are not supported",
        )
        affine = getattr(self, "elementwise_affine", True)
        _require(
            affine in (True, None),
            "elementwise_affine",
            "true (norms with weights)",
            affine,
            "norms without weights are not implemented",
        )


class _RecurrentConfig(BaseLMConfig):
    """Fields of the delta-rule and linear-attention mixers."""

    def __init__(
        self,
        head_dim: Optional[int] = 256,
        expand_v: float = 2,
        num_v_heads: Optional[int] = None,
        use_gate: bool = True,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        allow_neg_eigval: bool = False,
        attn_mode: str = "chunk",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        **kwargs,
    ):
        self.head_dim = head_dim
        self.expand_v = expand_v
        self.num_v_heads = num_v_heads
        self.use_gate = use_gate
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.conv_bias = conv_bias
        self.allow_neg_eigval = allow_neg_eigval
        self.attn_mode = attn_mode
        # initial decay rate range (Mamba-2 / fla: dt ~ logU(dt_min, dt_max), g = -A * dt, A ~ U(0, 16));
        # only the initialisation reads it
        self.dt_min = dt_min
        self.dt_max = dt_max
        super().__init__(**kwargs)

    @property
    def head_k_dim(self) -> int:
        return int(self.head_dim)

    @property
    def head_v_dim(self) -> int:
        return int(self.head_k_dim * self.expand_v)

    @property
    def value_heads(self) -> int:
        return self.num_heads if self.num_v_heads is None else int(self.num_v_heads)

    def validate_fields(self) -> None:
        super().validate_fields()
        _require(
            isinstance(self.head_dim, int) and self.head_dim > 0,
            "head_dim",
            "a positive int",
            self.head_dim,
            "fix config.json",
        )
        v = self.head_dim * self.expand_v
        _require(
            math.isclose(v, round(v)) and v >= 1,
            "expand_v",
            "a ratio giving an integer head_dim * expand_v",
            self.expand_v,
            f"head_dim * expand_v = {v}",
        )
        _require(
            self.value_heads % self.num_heads == 0 and self.value_heads >= self.num_heads,
            "num_v_heads",
            f"a multiple of num_heads={self.num_heads} (grouped values) or null",
            self.num_v_heads,
            "set num_v_heads to k * num_heads",
        )
        _require(not self.conv_bias, "conv_bias", "false", self.conv_bias, "short convolutions have no bias here")
        _require(
            isinstance(self.conv_size, int) and self.conv_size >= 1,
            "conv_size",
            "an int >= 1",
            self.conv_size,
            "fix config.json",
        )
        _require(
            0 < self.dt_min <= self.dt_max,
            "dt_min/dt_max",
            "0 < dt_min <= dt_max",
            (self.dt_min, self.dt_max),
            "fix config.json",
        )


class QDeltaConfig(_RecurrentConfig):
    """Q-Delta LM (DESIGN §3). ``variant``: "paper" (exact recurrence) or "official" (authors' kernel)."""

    model_type = "qdelta"

    def __init__(self, lamb_bias: float = 0.9, variant: str = "paper", **kwargs):
        self.lamb_bias = lamb_bias
        self.variant = variant
        super().__init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        if config_dict.get("variant") is None:
            logger.info(
                "Q-Delta config has no 'variant' field (a checkpoint from the authors' code): "
                "using variant='official', the function their chunk kernel computes (DESIGN §2)"
            )
            config_dict = {**config_dict, "variant": "official"}
        return super().from_dict(config_dict, **kwargs)

    def to_diff_dict(self):
        out = super().to_diff_dict()
        out["variant"] = self.variant
        return out

    def validate_fields(self) -> None:
        super().validate_fields()
        _require(
            self.variant in VARIANTS,
            "variant",
            f"one of {VARIANTS}",
            self.variant,
            "'official' reproduces checkpoints trained with the authors' code",
        )
        _require(
            self.value_heads == self.num_heads,
            "num_v_heads",
            f"null or num_heads={self.num_heads}",
            self.num_v_heads,
            "grouped values are not defined for Q-Delta's lamb_proj; they are supported for gated_deltanet",
        )


class GatedDeltaNetConfig(_RecurrentConfig):
    """Gated DeltaNet LM: flash-linear-attention's layout (the Q-Delta layer without ``lamb_proj``).

    ``output_gate_activation`` (fla 0.6): the output gate's ``swish`` / ``silu`` (the same) or ``sigmoid``.
    """

    model_type = "gated_deltanet"

    def __init__(self, output_gate_activation: str = "swish", **kwargs):
        self.output_gate_activation = output_gate_activation
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        _require(
            self.output_gate_activation in GATE_ACTIVATIONS,
            "output_gate_activation",
            f"one of {GATE_ACTIVATIONS}",
            self.output_gate_activation,
            "flash-linear-attention 0.6 offers these three",
        )


class DeltaNetConfig(_RecurrentConfig):
    """DeltaNet LM in flash-linear-attention's layout (no decay; ``head_dim = hidden_size * expand_k / num_heads``)."""

    model_type = "delta_net"

    def __init__(
        self,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        head_dim: Optional[int] = None,
        use_gate: bool = False,
        use_beta: bool = True,
        use_output_norm: bool = True,
        qk_norm: str = "l2",
        qk_activation: str = "silu",
        num_heads: int = 16,
        hidden_size: int = 2048,
        **kwargs,
    ):
        self.expand_k = expand_k
        self.use_beta = use_beta
        self.use_output_norm = use_output_norm
        self.qk_norm = qk_norm
        self.qk_activation = qk_activation
        if head_dim is None:
            head_dim = int(hidden_size * expand_k) // num_heads
        super().__init__(
            head_dim=head_dim,
            expand_v=expand_v,
            use_gate=use_gate,
            num_heads=num_heads,
            hidden_size=hidden_size,
            **kwargs,
        )

    def validate_fields(self) -> None:
        super().validate_fields()
        _require(self.qk_norm == "l2", "qk_norm", "'l2'", self.qk_norm, "only l2-normalised q, k are implemented")
        _require(
            self.qk_activation == "silu",
            "qk_activation",
            "'silu'",
            self.qk_activation,
            "only the SiLU feature map is implemented",
        )
        _require(
            self.use_output_norm,
            "use_output_norm",
            "true",
            self.use_output_norm,
            "the output RMSNorm is always applied",
        )
        _require(
            self.value_heads == self.num_heads,
            "num_v_heads",
            "null",
            self.num_v_heads,
            "DeltaNet has no grouped values",
        )


class LinearAttentionConfig(_RecurrentConfig):
    """Gated linear attention: ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, ``o_t = scale S_t^T q_t``.

    Shares projections, short convolutions, l2-normalised q/k and the gated output norm with the
    delta-rule layers; ``use_decay=False`` drops ``a_proj``/``A_log``/``dt_bias`` (g = 0).
    """

    model_type = "linear_attn"

    def __init__(self, use_decay: bool = True, **kwargs):
        self.use_decay = use_decay
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        feature_map = getattr(self, "feature_map", None)
        _require(
            feature_map is None,
            "feature_map",
            "absent",
            feature_map,
            "flash-linear-attention's feature-map LinearAttention is not implemented; 'linear_attn' here "
            "is the gated linear attention of qdelta.kernels.linear_attention",
        )
        _require(
            self.value_heads == self.num_heads,
            "num_v_heads",
            "null",
            self.num_v_heads,
            "linear attention here has no grouped values",
        )


class TransformerConfig(BaseLMConfig):
    """Transformer baseline in flash-linear-attention's layout: causal SDPA with rotary embeddings."""

    model_type = "transformer"

    def __init__(
        self,
        num_heads: int = 32,
        num_kv_heads: Optional[int] = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        window_size: Optional[int] = None,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        **kwargs,
    ):
        self.num_kv_heads = num_kv_heads
        self.qkv_bias = qkv_bias
        self.qk_norm = qk_norm
        self.window_size = window_size
        self.rope_theta = rope_theta
        super().__init__(num_heads=num_heads, max_position_embeddings=max_position_embeddings, **kwargs)

    @property
    def max_sequence_length(self) -> Optional[int]:
        return int(self.max_position_embeddings)

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else int(self.num_kv_heads)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate_fields(self) -> None:
        super().validate_fields()
        _require(
            self.hidden_size % self.num_heads == 0,
            "num_heads",
            f"a divisor of hidden_size={self.hidden_size}",
            self.num_heads,
            "fix config.json",
        )
        _require(
            self.head_dim % 2 == 0, "hidden_size / num_heads", "even (rotary pairs)", self.head_dim, "fix config.json"
        )
        _require(
            self.num_heads % self.kv_heads == 0,
            "num_kv_heads",
            f"a divisor of num_heads={self.num_heads}",
            self.num_kv_heads,
            "fix config.json",
        )
        _require(
            self.window_size is None,
            "window_size",
            "null",
            self.window_size,
            "sliding-window attention is not implemented",
        )
        _require(
            isinstance(self.max_position_embeddings, int) and self.max_position_embeddings > 0,
            "max_position_embeddings",
            "a positive int",
            self.max_position_embeddings,
            "fix config.json",
        )


CONFIG_CLASSES = {
    cls.model_type: cls
    for cls in (QDeltaConfig, GatedDeltaNetConfig, DeltaNetConfig, LinearAttentionConfig, TransformerConfig)
}
