"""The offline perplexity task: the book of Ruth (KJV, public domain; tasks/data/SOURCES.md).

One doc per chapter (4 docs, 2,574 words), scored by ``loglikelihood_rolling`` like wikitext:
word perplexity, byte perplexity and bits per byte. The text is not part of the NIAH haystack.
"""

from __future__ import annotations

from typing import Any

from .docs import data_hash
from .haystack import DATA_DIR

PPL_FILE = DATA_DIR / "kjv_ruth.txt"


def build_ruth(**metadata: Any):
    """``DatasetDict({"test": [{"page": chapter text, "chapter": i, "data_hash": ...}]})``."""
    import datasets

    chapters = [c.strip() for c in PPL_FILE.read_text(encoding="utf-8").split("\n\n") if c.strip()]
    docs = [{"page": text, "chapter": i + 1} for i, text in enumerate(chapters)]
    digest = data_hash(docs)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([dict(d, data_hash=digest) for d in docs])})
