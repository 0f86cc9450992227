"""The bridge tokenizer of qdelta.harness.train.mqar_tokenizer: a qd_mqar text doc, tokenized with it,
is exactly the token-level MQAR sequence (and answer) the MQAR checkpoints were trained on."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from qdelta.harness.train import mqar_tokenizer as bridge
from qdelta.tasks.mqar import zoology_multiquery_ar
from qdelta.tasks.synthetic import build_mqar

ROOT = Path(__file__).resolve().parents[2]


def test_qd_mqar_docs_tokenize_to_the_training_ids():
    settings = [[16, 2], [32, 4]]
    tok = bridge.build_text_mqar_tokenizer(64)
    docs = list(build_mqar(vocab_size=64, settings=settings, num_examples=3, seed=2)["test"])
    assert len(docs) == 3 * (2 + 4)
    for d in docs:
        i = settings.index([d["seq_len"], d["num_kv_pairs"]])
        inputs, labels = zoology_multiquery_ar(64, 3, d["seq_len"], 2 * 1000 + i, num_kv_pairs=d["num_kv_pairs"])
        ids = tok(d["context"])["input_ids"]
        t = len(ids) - 1
        assert ids == inputs[d["example"], : t + 1].tolist()
        assert tok(d["target"])["input_ids"] == [int(labels[d["example"], t])]


def test_committed_tokenizer_matches_the_builder():
    tok = AutoTokenizer.from_pretrained(ROOT / "results" / "mqar" / "long" / "text_tokenizer")
    assert tok.get_vocab() == bridge.text_symbol_vocab(8192)


@pytest.mark.parametrize("bad", [0, 7, "8", True])
def test_bad_vocab_size(bad):
    with pytest.raises(ValueError, match="vocab_size"):
        bridge.text_symbol_vocab(bad)
