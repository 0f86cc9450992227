"""``load_model``: any of our model types from a Hugging Face folder, with clear errors.

    >>> import qdelta
    >>> model = qdelta.load_model("results/checkpoints/qdelta-tiny-recall")  # doctest: +SKIP
    >>> model = qdelta.load_model(path, variant="paper", device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP

``transformers.AutoModelForCausalLM.from_pretrained(path)`` also works once ``import qdelta``
has run, but it only warns about missing or unexpected weights; ``load_model`` refuses them.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

import torch

from .checkpoint_formats import (
    check_weights,
    checkpoint_folder,
    describe,
    read_config_dict,
    read_state_dict,
    weight_files,
)
from .configuration import CONFIG_CLASSES, VARIANTS

logger = logging.getLogger(__name__)


def load_model(
    path,
    *,
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    variant: Optional[str] = None,
):
    """Load a ``...ForCausalLM`` (eval mode) from a checkpoint folder.

    Args:
        path: folder with ``config.json`` and ``model.safetensors`` (or a sharded index).
        device: where the model goes.
        dtype: parameter dtype; None keeps fp32 on the CPU and the checkpoint's dtype elsewhere.
        variant: Q-Delta only, override the config's ``"paper"`` / ``"official"``; a config without
            the field (the authors' code) means ``"official"``.
    Raises:
        FileNotFoundError: missing folder, config.json or weights.
        ValueError: unknown model_type, bad config fields, missing / unexpected / wrongly shaped
            weights, truncated or corrupt weight file, bad ``variant``.
    """
    from .modeling import MODEL_CLASSES

    folder = checkpoint_folder(path)
    raw = read_config_dict(folder)
    model_type = raw.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ValueError(
            f"config.json of {str(folder)!r} has model_type {model_type!r}; this package loads {sorted(CONFIG_CLASSES)}"
        )
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} or None, got {variant!r}")
    logger.info("loading %s from %s", describe(raw), folder)
    config = CONFIG_CLASSES[model_type].from_dict(dict(raw))
    if variant is not None:
        if model_type == "qdelta":
            config.variant = variant
        else:
            logger.info("variant=%r has no effect on a %s model (it has no lam)", variant, model_type)
    files = weight_files(folder)
    state = read_state_dict(files)
    with torch.device("meta"):
        model = MODEL_CLASSES[model_type][1](config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    check_weights(expected, state, str(folder))
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" else state["model.embeddings.weight"].dtype
    state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()
