"""Checkpoints load through transformers' Auto classes with ``trust_remote_code=True`` (the path
lm-eval's ``hf`` model takes): ``auto_map`` + ``qdelta_remote.py``, weights untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from qdelta import load_model
from qdelta.modeling import MODEL_CLASSES
from qdelta.remote_code import REMOTE_MODULE, add_remote_code
from qdelta.testing import tiny_model

SHIPPED = Path(__file__).resolve().parents[2] / "results" / "checkpoints"


@pytest.mark.parametrize("model_type", ["qdelta", "transformer"])
def test_saved_folder_loads_with_trust_remote_code(tmp_path, monkeypatch, model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    tiny_model(model_type, seed=3).save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    base, causal = MODEL_CLASSES[model_type]
    assert config["auto_map"]["AutoModelForCausalLM"] == f"{REMOTE_MODULE}.{causal.__name__}"
    assert (tmp_path / "ckpt" / f"{REMOTE_MODULE}.py").is_file()

    assert type(AutoConfig.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)) is causal.config_class
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True).eval()
    assert type(remote).__name__ == causal.__name__
    ids = torch.randint(0, remote.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(remote(ids).logits, load_model(tmp_path / "ckpt")(ids).logits)


def test_add_remote_code_leaves_weights_byte_identical(tmp_path):
    folder = tmp_path / "old"
    tiny_model("gated_deltanet", seed=1).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / f"{REMOTE_MODULE}.py").unlink()
    before = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    add_remote_code(folder)
    after = json.loads((folder / "config.json").read_text())
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == before
    assert {k: v for k, v in after.items() if k != "auto_map"} == config
    assert after["auto_map"]["AutoConfig"] == f"{REMOTE_MODULE}.GatedDeltaNetConfig"
    with pytest.raises(ValueError, match="not one of qdelta's"):
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
        add_remote_code(folder)


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED.iterdir() if (p / "config.json").is_file()))
def test_shipped_checkpoints_carry_remote_code(name):
    folder = SHIPPED / name
    config = json.loads((folder / "config.json").read_text())
    causal = MODEL_CLASSES[config["model_type"]][1]
    assert config["auto_map"]["AutoModelForCausalLM"] == f"{REMOTE_MODULE}.{causal.__name__}"
    assert "from qdelta import" in (folder / f"{REMOTE_MODULE}.py").read_text()
