"""Reading checkpoint folders: ``config.json`` and safetensors weights, with clear errors.

Formats accepted unchanged (DESIGN §3): folders written by this package (``save_pretrained``),
by the authors' Q-Delta code (``model_type: "qdelta"``, no ``variant`` field) and by
flash-linear-attention 0.6 (``gated_deltanet``, ``delta_net``, ``transformer`` model types; same
weight names as ours); every ``config.json`` field is checked by :mod:`qdelta.config_fields`.
Weights: ``model.safetensors``, a sharded ``model.safetensors.index.json``, or (fallback)
``pytorch_model.bin`` read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import torch

logger = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"


def checkpoint_folder(path) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"checkpoint folder {str(folder)!r} does not exist; pass a folder holding "
            f"config.json and {SAFETENSORS} (as written by save_pretrained)"
        )
    if not folder.is_dir():
        raise ValueError(
            f"checkpoint path {str(folder)!r} is a file, expected a folder holding config.json and "
            f"{SAFETENSORS}; pass its parent folder"
        )
    return folder


def read_config_dict(folder: Path) -> dict:
    """The parsed ``config.json`` of ``folder`` (FileNotFoundError / ValueError when absent or invalid)."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing: a checkpoint folder needs config.json "
            f"(found: {sorted(p.name for p in folder.iterdir())})"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); re-save the checkpoint") from err
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(config).__name__}")
    return config


def weight_files(folder: Path) -> List[Path]:
    """The weight files of ``folder``, in load order."""
    single, index, legacy = folder / SAFETENSORS, folder / SAFETENSORS_INDEX, folder / TORCH_BIN
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise ValueError(
                f"{str(index)!r} is not a valid safetensors index ({err}); re-save the checkpoint"
            ) from err
        files = [folder / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"shards {missing} named in {str(index)!r} are missing from {str(folder)!r}")
        return files
    if legacy.is_file():
        return [legacy]
    raise FileNotFoundError(
        f"no weights in {str(folder)!r}: expected {SAFETENSORS} (or {SAFETENSORS_INDEX} with "
        f"its shards); found {sorted(p.name for p in folder.iterdir())}"
    )


def read_state_dict(files: List[Path]) -> Dict[str, torch.Tensor]:
    """All tensors of the weight files on the CPU; a truncated or corrupt file raises ValueError."""
    from safetensors import safe_open

    state: Dict[str, torch.Tensor] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    part = {name: f.get_tensor(name) for name in f.keys()}
            else:
                part = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # safetensors raises its own error types for bad headers and offsets
            raise ValueError(
                f"cannot read weights from {str(path)!r}: the file is truncated or corrupt "
                f"({type(err).__name__}: {err}); re-download or re-save the checkpoint"
            ) from err
        state.update(part)
    return state


def check_weights(expected: Mapping[str, Tuple[int, ...]], found: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise ValueError naming missing, unexpected and wrongly shaped weights (at most 8 of each)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{name}: checkpoint {list(found[name].shape)}, model {list(expected[name])}"
        for name in sorted(set(expected) & set(found))
        if tuple(found[name].shape) != tuple(expected[name])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing weights (e.g. {missing[:8]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[:8]})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({'; '.join(mismatched[:8])})")
    if problems:
        raise ValueError(
            f"weights in {where} do not match the model its config.json describes: "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights "
            "(hidden_size, num_heads, head_dim, expand_v, num_hidden_layers, vocab_size)."
        )


def describe(config: dict) -> str:
    """A one-line description of a checkpoint's origin, for logs."""
    model_type = config.get("model_type")
    if model_type == "qdelta" and "variant" not in config:
        return "Q-Delta checkpoint from the authors' code (no 'variant' field)"
    if model_type == "qdelta":
        return f"Q-Delta checkpoint (variant={config['variant']!r})"
    return f"{model_type} checkpoint"
