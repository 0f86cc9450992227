"""The tokenizer that lets `qdelta eval --tasks qd_mqar` read the text MQAR task with a model
trained on token-level MQAR (results/mqar/long/runs, vocab 8192).

qd_mqar renders token t of `qdelta.tasks.mqar.zoology_multiquery_ar` as `syllable_name(t)` for t < V/2 (keys)
and `str(t - V/2)` for t >= V/2 (values), joined by spaces (`qdelta.tasks.synthetic.build_mqar`).
The trained checkpoints carry the id tokenizer (token t is the string "t"), which cannot read
syllable words. This WordLevel tokenizer inverts qd_mqar's rendering, so each word of a qd_mqar
context becomes exactly the token id the model was trained on; pass it as
`--model_args pretrained=CKPT,tokenizer=results/mqar/long/text_tokenizer`.

Run `python -m qdelta.harness.train.mqar_tokenizer OUT_DIR [VOCAB]` to (re)write it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers


def text_symbol_vocab(vocab_size: int) -> dict:
    """{qd_mqar word: training token id} for every id in [0, vocab_size)."""
    from qdelta.tasks.synthetic import mqar_symbol

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2 or vocab_size % 2:
        raise ValueError(f"vocab_size must be an even int >= 2, got {vocab_size!r}")
    half = vocab_size // 2
    vocab = {mqar_symbol(t, half): t for t in range(vocab_size)}
    if len(vocab) != vocab_size:
        raise ValueError(f"vocab_size {vocab_size}: the qd_mqar words are not distinct")
    return vocab


def build_text_mqar_tokenizer(vocab_size: int = 8192):
    """A ``PreTrainedTokenizerFast`` mapping qd_mqar words to token-level MQAR ids."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(text_symbol_vocab(vocab_size), unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    build_text_mqar_tokenizer(int(sys.argv[2]) if len(sys.argv) > 2 else 8192).save_pretrained(out)
    print(out)
