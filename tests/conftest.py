"""Shared test support, as fixtures: the kernel tests' tolerances, tiny tokenizers and models.

Tests take these by fixture name and import nothing from here (pytest runs in importlib mode).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

# --- Tolerances of the Triton kernel tests -------------------------------------------------------
# Relative L2 error ||out - ref|| / ||ref|| against the float64 reference (the token loop, or on the
# GPU the PyTorch chunk reference in float64), per case. Loosen an entry only with a written reason.

# CPU, TRITON_INTERPRET=1, fp32 inputs: the interpreter computes dots in fp32 (numpy); measured
# 1e-7 .. 5e-7 on outputs and every gradient.
INTERPRET_FP32 = {"forward": 1e-5, "grad": 1e-5}

# CPU, TRITON_INTERPRET=1, fp16 inputs: q, k are fp16 (normalised inside the kernel, unrounded)
# (the fp64 reference normalises unrounded values), outputs and gradients are rounded to fp16
# (2^-11 relative): a few 1e-4 expected.
INTERPRET_FP16 = {"forward": 2e-3, "grad": 2e-3}

# GPU, fp32 inputs: the forward's tl.dot on fp32 operands runs in tf32 on Hopper (10-bit
# mantissa, ~3e-4 per product); the backward recomputes in fp32 from tf32-made chunk states.
GPU_FP32 = {"forward": 3e-3, "grad": 3e-3}

# GPU, fp32 inputs with chunk_qdelta(precision="ieee"): every fp32 dot in full fp32, so only fp32
# rounding is left (the interpreter, fp32 throughout, measures 1e-7 .. 1e-6); far under tf32's ~2e-3.
GPU_FP32_IEEE = {"forward": 1e-4, "grad": 1e-4}

# GPU, bf16 inputs (the reference sees the same bf16 values in float64): outputs and gradients
# are rounded to bf16 (2^-9 relative) on top of tf32 arithmetic (STYLE: ~6e-3 / ~8e-3).
GPU_BF16 = {"forward": 6e-3, "grad": 8e-3}

# Decoding (fused recurrent) against chunked prefill of the same sequence, and prefill split
# invariance, both in fp32 on the GPU: the two paths round differently (tf32 dots in the chunk
# path, fp32 FMAs in the recurrent one).
GPU_CONSISTENCY = 3e-3


def _tolerance(dtype_name: str, kind: str, device: str) -> float:
    """Tolerance for ``kind`` in {"forward", "grad"}; dtype_name "float32" or "bfloat16"."""
    if device == "cpu":
        return INTERPRET_FP32[kind]
    return (GPU_FP32 if dtype_name == "float32" else GPU_BF16)[kind]


TOLERANCES = MappingProxyType(
    {
        "INTERPRET_FP32": INTERPRET_FP32,
        "INTERPRET_FP16": INTERPRET_FP16,
        "GPU_FP32": GPU_FP32,
        "GPU_FP32_IEEE": GPU_FP32_IEEE,
        "GPU_BF16": GPU_BF16,
        "GPU_CONSISTENCY": GPU_CONSISTENCY,
        "tolerance": _tolerance,
    }
)


@pytest.fixture
def tol():
    """The tolerance tables above by name, and ``tol["tolerance"](dtype_name, kind, device)``."""
    return TOLERANCES


# --- Tiny tokenizers and models -------------------------------------------------------------------

WORDS = ["the", "key", "value", "is", "of", "query", ":", ".", "a", "b", "c", "d"] + [str(i) for i in range(40)]


def _save_word_tokenizer(folder: Path) -> Path:
    """A whitespace word-level tokenizer (<pad>=0, <bos>=1, <eos>=2, <unk>=3) saved as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def _tiny_llama(vocab_size: int = 64, seed: int = 0):
    """A random 2-layer Llama (a KV-cache model from transformers) for adapter checks."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def save_word_tokenizer():
    """``save_word_tokenizer(folder) -> folder``: writes the word-level tokenizer of ``WORDS`` there."""
    return _save_word_tokenizer


def _save_short_transformer(folder, max_positions: int, seed: int = 0):
    """A tiny random Transformer limited to ``max_positions`` tokens, saved with the word tokenizer."""
    from transformers import AutoTokenizer

    from qdelta.testing import tiny_model

    _save_word_tokenizer(folder)
    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    tiny_model("transformer", seed=seed, vocab_size=vocab, max_position_embeddings=max_positions).save_pretrained(
        str(folder)
    )
    return folder


@pytest.fixture(scope="session")
def save_short_transformer():
    """``save_short_transformer(folder, max_positions, seed=0) -> folder``: a window-limited checkpoint."""
    return _save_short_transformer


@pytest.fixture(scope="session")
def tiny_llama():
    """``tiny_llama(vocab_size=64, seed=0)``: a random 2-layer ``LlamaForCausalLM`` in eval mode."""
    return _tiny_llama
