"""Tokenizers for synthetic tasks: real HF tokenizers, saved and reloaded offline."""

import pytest
from transformers import AutoTokenizer

from qdelta.harness.train.tokenizer import build_id_tokenizer, build_text_tokenizer

CORPUS = [f"One of the special magic numbers for key{i % 17} is: {(i * 7919) % 10_000_000}." for i in range(200)]


def test_id_tokenizer_maps_numbers_to_ids(tmp_path):
    build_id_tokenizer(8192).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == 8192
    assert tok("12 4100 0 8191")["input_ids"] == [12, 4100, 0, 8191]
    assert tok.decode([5, 4097]) == "5 4097"


def test_text_tokenizer_round_trips_and_splits_digits(tmp_path):
    built = build_text_tokenizer(CORPUS, vocab_size=400)
    built.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "One of the special magic numbers for key3 is: 9876543. Unseen words: zebra, UUID 3f2a-11ef."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: any text survives
    digits = [tok.decode([i]).strip() for i in tok(" 9876543")["input_ids"]]
    assert [d for d in digits if d] == list("9876543")
    assert tok.eos_token_id == 0 and tok.pad_token_id == 1
    assert len(tok(" special magic numbers")["input_ids"]) <= 4  # frequent words became single tokens
    # deterministic: the same corpus gives the same vocabulary
    assert build_text_tokenizer(CORPUS, vocab_size=400).get_vocab() == built.get_vocab()


def test_bad_sizes():
    with pytest.raises(ValueError, match="vocab_size"):
        build_id_tokenizer(0)
    with pytest.raises(ValueError, match="vocab_size"):
        build_text_tokenizer(CORPUS, vocab_size=100)
