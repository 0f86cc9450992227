"""Shared document format of the recall tasks and the in-memory dataset lm-eval reads.

Every recall doc has these fields (plus the task's slicing fields such as ``seq_len``,
``num_kv_pairs``, ``context_length``, ``depth``):

- ``context``: the prompt text (the YAML uses ``doc_to_text: "{{context}}"``).
- ``target``: what follows the prompt, with its leading separator (``" 4821907"``): the
  continuation scored by ``loglikelihood`` and the reference of ``generate_until``.
- ``answer``: the bare answer (``"4821907"``).
- ``match``: how a generated answer is scored: ``exact`` (first generated word equals the answer,
  trailing punctuation ignored) or ``contains`` (the answer appears in the generation,
  case-insensitive; RULER's rule). Log-likelihood requests are scored by greedy accuracy.
- ``answer_pattern``: a regular expression whose group 1 finds the answer in ``context`` by its
  key (what an exact-recall reader would look for); the ``qd_oracle`` test model uses it.
- ``slice``: the slice name the metrics are reported under (``L64_K4``, ``len1024_depth25``).
- ``length_unit``: what lengths count: ``symbols`` (MQAR, AR), ``words`` or ``tokens:<tokenizer>``.
- ``data_hash``: sha256 of the whole generated test split (every doc without this field), the
  same in every doc, for run records.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Dict, List

log = logging.getLogger(__name__)

COMMON_FIELDS = ("context", "target", "answer", "answer_pattern", "match", "slice", "length_unit")


def data_hash(docs: List[Dict[str, Any]]) -> str:
    """sha256 of the docs as canonical JSON (sorted keys), ``data_hash`` fields left out."""
    h = hashlib.sha256()
    for doc in docs:
        clean = {k: v for k, v in doc.items() if k != "data_hash"}
        h.update(json.dumps(clean, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def to_dataset(docs: List[Dict[str, Any]], task: str):
    """``datasets.DatasetDict({"test": ...})`` from docs, each stamped with ``data_hash``."""
    import datasets

    if not docs:
        raise ValueError(f"{task}: the parameters produce no examples; check metadata.num_examples and the slice lists")
    for doc in docs:
        missing = [f for f in COMMON_FIELDS if f not in doc]
        assert not missing, f"{task} doc lacks {missing}"
    digest = data_hash(docs)
    log.info("%s: %d docs, data sha256 %s", task, len(docs), digest)
    rows = [dict(doc, data_hash=digest) for doc in docs]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
