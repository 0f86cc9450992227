"""Tiny offline fixtures for the harness tests: a word-level tokenizer and small models."""

from __future__ import annotations

from pathlib import Path

WORDS = ["the", "key", "value", "is", "of", "query", ":", ".", "a", "b", "c", "d"] + [str(i) for i in range(40)]


def save_word_tokenizer(folder: Path) -> Path:
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


def tiny_llama(vocab_size: int = 64, seed: int = 0):
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
