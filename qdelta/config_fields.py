"""The ``config.json`` fields each checkpoint format may carry, and the values this package implements.

``check_config_fields(config_dict)`` refuses, with one ``ValueError`` naming each offending field,
its value and what is supported:

- a field that no format we read defines for that ``model_type`` (e.g. fla's ``attnres_block_size``
  only when set: ``null`` is the plain model), and
- a known field whose value selects something not implemented (e.g. hybrid ``attn`` layers,
  ``window_size``, ``output_gate_activation: tanh``).

Formats (DESIGN §3): ours (``save_pretrained``: every ``__init__`` field of our config classes),
the authors' Q-Delta code (``model_type: "qdelta"``), and flash-linear-attention 0.6
(``gated_deltanet``, ``delta_net``, ``transformer``; its ``linear_attn`` is refused by
``feature_map``). Fields that only choose a fused training kernel or a loss
(``fuse_norm``, ``fuse_swiglu``, ``fuse_cross_entropy``, ``fuse_linear_cross_entropy``,
``use_l2warp``) or only the initialisation (``initializer_range``) do not change the logits and are
accepted with any value. ``attn_mode`` picks a kernel computing the same function.
"""

from __future__ import annotations

import inspect
from typing import Dict, Optional, Tuple

ANY = None  # any value (bookkeeping, training-only, or checked by the config class's validate_fields)

HF_BOOKKEEPING: Dict[str, Optional[Tuple]] = {
    name: ANY
    for name in (
        "model_type",
        "architectures",
        "dtype",
        "torch_dtype",
        "transformers_version",
        "_name_or_path",
        "_commit_hash",
        "id2label",
        "label2id",
        "problem_type",
        "return_dict",
        "output_attentions",
        "output_hidden_states",
        "tokenizer_class",
        "auto_map",  # which module trust_remote_code imports (qdelta_remote.py); qdelta itself ignores it
    )
}
HF_BOOKKEEPING.update(is_encoder_decoder=(False,), chunk_size_feed_forward=(0,))

FLA_TRAINING_ONLY = {
    name: ANY for name in ("fuse_norm", "fuse_swiglu", "fuse_cross_entropy", "fuse_linear_cross_entropy", "use_l2warp")
}

COMMON = {
    "vocab_size": ANY,
    "hidden_size": ANY,
    "num_hidden_layers": ANY,
    "num_heads": ANY,
    "hidden_ratio": ANY,
    "intermediate_size": ANY,
    "hidden_act": ("swish", "silu"),
    "norm_eps": ANY,
    "initializer_range": ANY,
    "max_position_embeddings": ANY,
    "use_cache": ANY,
    "pad_token_id": ANY,
    "bos_token_id": ANY,
    "eos_token_id": ANY,
    "tie_word_embeddings": (False,),
    "attn": (None,),
}
RECURRENT = {
    "head_dim": ANY,
    "expand_v": ANY,
    "num_v_heads": ANY,
    "use_gate": (True, False),
    "use_short_conv": (True, False),
    "conv_size": ANY,
    "conv_bias": (False,),
    "allow_neg_eigval": (True, False),
    "attn_mode": ("chunk", "fused_recurrent", "fused_chunk"),
}
FLA_06 = {**FLA_TRAINING_ONLY, "attnres_block_size": (None,)}

# field -> allowed values (a tuple) or ANY, per model_type: the union of the formats of that type
FORMAT_FIELDS: Dict[str, Dict[str, Optional[Tuple]]] = {
    "qdelta": {  # ours + the authors' code
        **COMMON,
        **RECURRENT,
        **FLA_TRAINING_ONLY,
        "lamb_bias": ANY,
        "variant": ("paper", "official", None),
        "dt_min": ANY,
        "dt_max": ANY,
    },
    "gated_deltanet": {  # ours + flash-linear-attention 0.6
        **COMMON,
        **RECURRENT,
        **FLA_06,
        "output_gate_activation": ("swish", "silu", "sigmoid"),
        "dt_min": ANY,
        "dt_max": ANY,
    },
    "delta_net": {
        **COMMON,
        **RECURRENT,
        **FLA_06,
        "expand_k": ANY,
        "use_beta": (True, False),
        "use_output_norm": (True,),
        "qk_norm": ("l2",),
        "qk_activation": ("silu",),
        "dt_min": ANY,
        "dt_max": ANY,
    },
    "linear_attn": {  # ours only: fla's feature-map LinearAttention is a different model
        **COMMON,
        **RECURRENT,
        **FLA_06,
        "use_decay": (True, False),
        "feature_map": (None,),
        "dt_min": ANY,
        "dt_max": ANY,
    },
    "transformer": {
        **COMMON,
        **FLA_06,
        "num_kv_heads": ANY,
        "qkv_bias": (True, False),
        "qk_norm": (True, False),
        "window_size": (None,),
        "rope_theta": ANY,
        "elementwise_affine": (True, None),
    },
}
FORMAT_NAMES = {
    "qdelta": "ours or the authors' Q-Delta code",
    "gated_deltanet": "ours or flash-linear-attention's Gated DeltaNet",
    "delta_net": "ours or flash-linear-attention's DeltaNet",
    "linear_attn": "our gated linear attention",
    "transformer": "ours or flash-linear-attention's Transformer",
}


def _same(value, allowed) -> bool:
    """Equality that keeps ``True``/``1`` and ``False``/``0``/``None`` apart."""
    if isinstance(value, bool) or isinstance(allowed, bool) or value is None or allowed is None:
        return value is allowed
    return type(value) is type(allowed) and value == allowed


def own_fields(config_class) -> set:
    """``__init__`` parameters of ``config_class`` and its bases up to ``PretrainedConfig``."""
    names = set()
    for cls in config_class.__mro__:
        if cls.__name__ == "PretrainedConfig" or "__init__" not in vars(cls):
            continue
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                names.add(p.name)
    return names


def supported_fields(model_type: str, config_class=None) -> Dict[str, Optional[Tuple]]:
    """Field -> allowed values (ANY = any) for ``model_type``; our class's own fields included."""
    table = {**HF_BOOKKEEPING, **FORMAT_FIELDS[model_type]}
    for name in own_fields(config_class) if config_class is not None else ():
        table.setdefault(name, ANY)
    return table


def check_config_fields(config: dict, config_class=None) -> None:
    """Raise ``ValueError`` naming every field of ``config`` that is unknown or has an unsupported value."""
    model_type = config.get("model_type")
    if model_type not in FORMAT_FIELDS:
        return  # reported by the caller (unknown model_type)
    table = supported_fields(model_type, config_class)
    problems = []
    for name, value in config.items():
        if name in table and table[name] is not ANY and not any(_same(value, a) for a in table[name]):
            supported = ", ".join(repr(a).replace("None", "null") for a in table[name])
            problems.append(f"field {name!r} = {value!r} is not implemented (supported: {supported})")
    unknown = [name for name in config if name not in table]
    if unknown:
        listed = ", ".join(f"{name!r} = {config[name]!r}" for name in unknown)
        problems.append(f"unknown to every {model_type} format qdelta reads: {listed}")
    owners = [t for t in FORMAT_FIELDS if t != model_type and unknown and set(unknown) <= set(FORMAT_FIELDS[t])]
    if owners:
        problems.append(
            f"those fields belong to model_type {' or '.join(map(repr, owners))}: check the model_type of config.json"
        )
    if problems:
        raise ValueError(
            f"config.json ({model_type}, {FORMAT_NAMES[model_type]}): "
            + "; ".join(problems)
            + ". qdelta refuses fields it does not implement rather than load a different model; "
            "supported fields and values: qdelta/MODELS.md"
        )
