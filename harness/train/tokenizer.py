"""Real Hugging Face tokenizers for models trained on synthetic tasks (offline, deterministic).

Two kinds, both saved as ``tokenizer.json`` + ``tokenizer_config.json`` and loadable with
``transformers.AutoTokenizer.from_pretrained(folder)``:

- :func:`build_id_tokenizer` for token-level MQAR: token ``i`` is the string ``"i"`` (a
  WordLevel vocabulary ``"0" .. "V-1"`` split on whitespace), so ``"12 4100"`` -> ``[12, 4100]``.
- :func:`build_text_tokenizer` for text tasks: a byte-level BPE trained on a corpus rendered by
  the task generators. Digits are always single tokens (numbers and UUIDs are spelled digit by
  digit, as in RULER-style recall) and any text encodes (byte fallback, no unknown token).
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def _wrap(tokenizer: Tokenizer, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


def build_id_tokenizer(vocab_size: int):
    """A tokenizer whose token ``i`` is the decimal string of ``i`` (0 <= i < vocab_size).

    No special tokens: every id is an MQAR symbol. Returns a ``PreTrainedTokenizerFast``.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    tokenizer = Tokenizer(models.WordLevel({str(i): i for i in range(vocab_size)}, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    return _wrap(tokenizer)


def build_text_tokenizer(corpus: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE trained on ``corpus`` (an iterable of strings) with ``vocab_size`` entries.

    Digits are split individually before BPE, so no merge ever spans two digits. Special tokens:
    ``<|endoftext|>`` (bos and eos, id 0) and ``<|pad|>`` (id 1). Deterministic for a given
    corpus. Returns a ``PreTrainedTokenizerFast``.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(f"vocab_size must be an int >= 300 (256 byte symbols + specials + merges), got {vocab_size!r}")
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return _wrap(tokenizer, bos_token=EOS, eos_token=EOS, pad_token=PAD)
