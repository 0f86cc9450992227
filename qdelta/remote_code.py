"""``trust_remote_code`` support: checkpoint folders that ``transformers`` Auto classes load without ``import qdelta``.

A folder saved by our models (``save_pretrained``) carries ``auto_map`` in ``config.json`` and
a small module, ``qdelta_remote.py``, that imports the installed ``qdelta`` package. So tools
that only call ``AutoConfig`` / ``AutoModelForCausalLM.from_pretrained(path,
trust_remote_code=True)``, such as lm-eval's ``hf`` model, load our checkpoints:

    lm_eval --model hf --model_args pretrained=results/checkpoints/qdelta-tiny-recall,trust_remote_code=True ...

The module holds no model code; the weights are read by the same classes as ``qdelta.load_model``.
:func:`add_remote_code` adds both files to an existing folder without touching its weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict

REMOTE_MODULE = "qdelta_remote"

_MODULE_TEXT = '''"""Loads this checkpoint with the installed qdelta package (`pip install qdelta`).

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
'''


def auto_map(model_type: str) -> Dict[str, str]:
    """``config.json``'s ``auto_map`` for one of our model types (ValueError for another)."""
    from .modeling import MODEL_CLASSES

    if model_type not in MODEL_CLASSES:
        raise ValueError(f"model_type {model_type!r} is not one of qdelta's: {sorted(MODEL_CLASSES)}")
    base, causal = MODEL_CLASSES[model_type]
    return {
        "AutoConfig": f"{REMOTE_MODULE}.{causal.config_class.__name__}",
        "AutoModel": f"{REMOTE_MODULE}.{base.__name__}",
        "AutoModelForCausalLM": f"{REMOTE_MODULE}.{causal.__name__}",
    }


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_remote_module(folder) -> Path:
    """Write ``qdelta_remote.py`` into ``folder``; returns its path."""
    path = Path(folder) / f"{REMOTE_MODULE}.py"
    _write_atomic(path, _MODULE_TEXT)
    return path


def add_remote_code(folder) -> None:
    """Give an existing checkpoint folder ``auto_map`` and ``qdelta_remote.py``; weights untouched.

    Only ``config.json`` (rewritten with the same keys plus ``auto_map``) and the module change.
    """
    from .checkpoint_formats import checkpoint_folder, read_config_dict

    folder = checkpoint_folder(folder)
    config = read_config_dict(folder)
    config["auto_map"] = auto_map(config.get("model_type"))
    _write_atomic(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_remote_module(folder)
