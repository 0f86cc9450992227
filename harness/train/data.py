"""Training data for ``qdelta train``: every batch is a pure function of (seed, step).

A data source has

    vocab_size: int
    tokenizer: a transformers tokenizer saved with every checkpoint
    batch(step, batch_size) -> Batch        # the global batch of that step (DDP ranks slice it)
    evaluate(model, device) -> dict         # held-out metrics (eval seed, never a training seed)

``Batch.targets[b, t]`` is the token the logits at position ``t`` must predict (-100: not
scored), so the loss is ``cross_entropy(logits.flatten(0, 1), targets.flatten())``.
Nothing is drawn from a global RNG; resuming at step ``s`` sees exactly the batches an
uninterrupted run sees.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from .config import DataSpec, EvalSpec

IGNORE_INDEX = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64, IGNORE_INDEX where not scored
    attention_mask: Optional[torch.Tensor] = None  # (B, T) 1 = token, None = all tokens

    def rows(self, start: int, end: int) -> "Batch":
        mask = None if self.attention_mask is None else self.attention_mask[start:end]
        return Batch(self.input_ids[start:end], self.targets[start:end], mask)

    def to(self, device) -> "Batch":
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return Batch(self.input_ids.to(device), self.targets.to(device), mask)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class MQARSource:
    """Token-level MQAR (:mod:`qdelta.tasks.mqar`, generator ``data.generator``).

    Fresh data (no ``data.train_sets``): step ``s`` uses setting ``configs[s % len(configs)]`` for
    the whole batch (one sequence length per step, no padding), with examples drawn from seed
    ``derive_seed(seed, "mqar", s)`` (mod 2**32 for zoology's generator); evaluation on held-out data of the eval section.
    Fixed sets (zoology's protocol, :mod:`qdelta.harness.train.mqar_sets`): step ``s`` is batch
    ``s mod batches_per_epoch`` of the train sets in zoology's order; evaluation on the test sets.
    """

    def __init__(self, spec: DataSpec, eval_spec: EvalSpec, seed: int):
        from .tokenizer import build_id_tokenizer

        self.spec, self.eval_spec, self.seed = spec, eval_spec, seed
        self.vocab_size = spec.vocab_size
        self.tokenizer = build_id_tokenizer(spec.vocab_size)
        self.sets = _fixed_sets(spec, seed) if spec.train_sets else None

    def batch(self, step: int, batch_size: int) -> Batch:
        if self.sets is not None:
            return Batch(*self.sets.batch(step, batch_size))
        from qdelta.tasks.mqar import mqar_examples

        seq_len, num_kv_pairs = self.spec.configs[step % len(self.spec.configs)]
        inputs, labels = mqar_examples(
            self.spec.generator,
            self.vocab_size,
            seq_len,
            num_kv_pairs,
            batch_size,
            seed=derive_seed(self.seed, "mqar", step) % (2**32 if self.spec.generator == "zoology" else 2**63),
            power_a=self.spec.power_a,
        )
        return Batch(inputs, labels)

    def evaluate(self, model, device) -> Dict[str, float]:
        from qdelta.tasks.mqar import evaluate_mqar, mqar_hits

        if self.sets is None or not self.sets.test:
            return evaluate_mqar(
                model,
                self.vocab_size,
                settings=[tuple(c) for c in self.spec.configs],
                num_examples=self.eval_spec.num_examples,
                seed=self.eval_spec.seed,
                power_a=self.spec.power_a,
                batch_size=self.eval_spec.batch_size,
                device=device,
                generator=self.spec.generator,
            )
        scores: Dict[str, float] = {}
        hits_all = count_all = 0
        for key, inputs, labels, _ in self.sets.test:
            hits, count = mqar_hits(model, inputs, labels, self.eval_spec.batch_size, device)
            scores[key] = hits / count
            hits_all, count_all = hits_all + hits, count_all + count
        slice_scores = list(scores.values())
        scores["mean"] = sum(slice_scores) / len(slice_scores)
        scores["all"] = hits_all / count_all
        return scores


def _fixed_sets(spec: DataSpec, seed: int):
    from .mqar_sets import FixedSets, cache_dir_for, set_specs

    train, test = set_specs(spec, seed)
    return FixedSets(train, test, cache_dir_for(spec))


def make_source(spec: DataSpec, eval_spec: EvalSpec, seed: int, tokenizer_dir=None):
    """The data source a config asks for; ``tokenizer_dir`` reuses a saved tokenizer (resume)."""
    if spec.kind == "mqar":
        return MQARSource(spec, eval_spec, seed)
    from .text import TextSource

    return TextSource(spec, eval_spec, seed, tokenizer_dir=tokenizer_dir)
