"""Text training data rendered exactly as the recall tasks render theirs (``data.kind: text``).

Each entry of ``data.tasks`` names a task of :data:`qdelta.tasks.TASKS_DIR` (its YAML, with
``include:`` followed) and may override its ``metadata``::

    data:
      kind: text
      tasks:
        - {task: qd_mqar_quick, weight: 2}
        - {task: qd_niah_single_2_quick, metadata: {num_depths: 5}}

The task's own generator (``custom_dataset``) is called with training seeds
(``derive_seed(seed, "pool", task, chunk)``; the task's evaluation seed is never used) until
``pool_size`` docs exist; a training example is ``context + target + "\\n"`` tokenized as lm-eval
does (context, then the continuation), with the loss on the target and the newline
(``loss_on: answer``) or on every token (``loss_on: all``). Batch ``step`` draws its rows from
the pools with a generator seeded by ``(seed, step)``: a pure function of (seed, step).

The tokenizer (unless ``data.tokenizer`` names a folder) is a byte-level BPE trained on docs of
every task (:func:`qdelta.harness.train.tokenizer.build_text_tokenizer`); the generators then measure
needle lengths in its tokens (``metadata.tokenizer``), as ``qdelta eval`` does with the checkpoint.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml

from .config import DataSpec, EvalSpec
from .data import IGNORE_INDEX, Batch, derive_seed

log = logging.getLogger(__name__)

TASK_ENTRY_FIELDS = ("task", "weight", "metadata")
POOL_CHUNK = 64  # examples per generator call while filling a pool


class _TaskLoader(yaml.SafeLoader):
    """Reads lm-eval task YAML; ``!function module.name`` becomes the string ``module.name``."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _read_task_yaml(path: Path) -> Dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_TaskLoader) or {}
    parent = data.pop("include", None)
    if parent is None:
        return data
    return {**_read_task_yaml((path.parent / parent).resolve()), **data}


def find_task(name: str) -> Dict[str, Any]:
    """The resolved YAML of task ``name`` under ``TASKS_DIR`` (includes merged, child wins)."""
    from qdelta.tasks import TASKS_DIR

    found = []
    for path in sorted(Path(TASKS_DIR).rglob("*.yaml")):
        try:
            raw = yaml.load(path.read_text(), Loader=_TaskLoader)
        except yaml.YAMLError:
            continue
        if isinstance(raw, dict) and raw.get("task") == name:
            found.append(path)
    if not found:
        raise ValueError(f"data.tasks: no task named {name!r} under {TASKS_DIR}; see `qdelta tasks list`")
    config = _read_task_yaml(found[0])
    if "custom_dataset" not in config:
        raise ValueError(
            f"data.tasks: task {name!r} has no custom_dataset generator; only generated "
            f"(synthetic) tasks can be rendered for training"
        )
    return config


def _import(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@dataclass
class _Task:
    name: str
    weight: float
    build: Any  # the generator function
    metadata: Dict[str, Any]

    def docs(self, seed: int, num_examples: int, tokenizer_dir: Optional[str]) -> List[Dict[str, Any]]:
        meta = {**self.metadata, "seed": seed, "num_examples": num_examples}
        if tokenizer_dir is not None:
            meta["tokenizer"] = tokenizer_dir
        return list(self.build(**meta)["test"])


def _parse_entry(entry: Dict[str, Any], i: int) -> _Task:
    where = f"data.tasks[{i}]"
    if not isinstance(entry, dict) or "task" not in entry:
        raise ValueError(f"{where}: expected {{task: NAME, weight: W, metadata: {{...}}}}, got {entry!r}")
    unknown = sorted(set(entry) - set(TASK_ENTRY_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {list(TASK_ENTRY_FIELDS)}")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise ValueError(f"{where}.weight: expected a number > 0, got {weight!r}")
    extra = entry.get("metadata", {}) or {}
    if not isinstance(extra, dict):
        raise TypeError(f"{where}.metadata: expected a mapping, got {extra!r}")
    config = find_task(entry["task"])
    return _Task(
        entry["task"], float(weight), _import(config["custom_dataset"]), {**(config.get("metadata") or {}), **extra}
    )


def _encode(tokenizer, doc: Dict[str, Any]) -> Tuple[List[int], int]:
    """Token ids of context + target + newline and where the continuation starts (lm-eval's split)."""
    context, continuation = doc["context"], doc["target"] + "\n"
    trailing = len(context) - len(context.rstrip(" "))  # lm-eval moves trailing spaces to the continuation
    if trailing:
        context, continuation = context[:-trailing], context[-trailing:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    if whole[: len(ctx)] != ctx:
        whole = ctx + tokenizer.encode(continuation, add_special_tokens=False)
    return whole, len(ctx)


class TextSource:
    """Recall tasks rendered as text; see the module docstring."""

    def __init__(self, spec: DataSpec, eval_spec: EvalSpec, seed: int, tokenizer_dir=None):
        from transformers import AutoTokenizer

        from .tokenizer import build_text_tokenizer

        self.spec, self.eval_spec, self.seed = spec, eval_spec, seed
        self.tasks = [_parse_entry(entry, i) for i, entry in enumerate(spec.tasks)]
        self._tmp = tempfile.TemporaryDirectory(prefix="qdelta-tokenizer-")
        if tokenizer_dir is not None or spec.tokenizer is not None:
            path = str(tokenizer_dir if tokenizer_dir is not None else spec.tokenizer)
            if not Path(path, "tokenizer.json").is_file():
                raise FileNotFoundError(
                    f"data.tokenizer: no tokenizer.json in {path!r}; give a tokenizer "
                    f"folder or leave data.tokenizer empty to build one"
                )
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        else:
            corpus = [
                d["context"] + d["target"]
                for task in self.tasks
                for d in task.docs(derive_seed(seed, "tokenizer", task.name) % 2**31, 8, None)
            ]
            self.tokenizer = build_text_tokenizer(corpus, spec.tokenizer_vocab_size)
        self.tokenizer.save_pretrained(self._tmp.name)  # generators count lengths in these tokens
        self.vocab_size = len(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if spec.workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(spec.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
                self.pools = [self._pool(task, ex.map) for task in self.tasks]
        else:
            self.pools = [self._pool(task, map) for task in self.tasks]
        self.weights = torch.tensor([task.weight for task in self.tasks], dtype=torch.float64)

    def _pool(self, task: _Task, mapper) -> List[Tuple[List[int], int]]:
        docs: List[Dict[str, Any]] = []
        chunk = 0
        while len(docs) < self.spec.pool_size:
            # chunks are pure functions of (seed, task, chunk): generated in parallel, joined in order
            wave = range(chunk, chunk + max(1, self.spec.workers))
            seeds = [derive_seed(self.seed, "pool", task.name, c) % 2**31 for c in wave]
            parts = list(mapper(task.docs, seeds, [POOL_CHUNK] * len(seeds), [self._tmp.name] * len(seeds)))
            docs += [d for part in parts for d in part]
            chunk += len(seeds)
        pool = [self._checked(task, _encode(self.tokenizer, d)) for d in docs[: self.spec.pool_size]]
        log.info(
            "%s: %d training docs, up to %d tokens", task.name, self.spec.pool_size, max(len(ids) for ids, _ in pool)
        )
        return pool[: self.spec.pool_size]

    def _checked(self, task: _Task, encoded: Tuple[List[int], int]) -> Tuple[List[int], int]:
        if len(encoded[0]) > self.spec.seq_len:
            raise ValueError(
                f"data.seq_len: a {task.name} example needs {len(encoded[0])} tokens, more than "
                f"seq_len={self.spec.seq_len}; raise data.seq_len or shorten the task"
            )
        return encoded

    def _rows(self, examples: List[Tuple[List[int], int]]) -> Batch:
        T = max(len(ids) for ids, _ in examples)
        B = len(examples)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        for b, (ids, start) in enumerate(examples):
            n = len(ids)
            input_ids[b, :n] = torch.tensor(ids)
            mask[b, :n] = 1
            first = start - 1 if self.spec.loss_on == "answer" else 0  # logits at t predict token t + 1
            targets[b, first : n - 1] = torch.tensor(ids[first + 1 : n])
        return Batch(input_ids, targets, mask)

    def batch(self, step: int, batch_size: int) -> Batch:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "batch", step))
        which = torch.multinomial(self.weights, batch_size, replacement=True, generator=gen).tolist()
        picks = [int(torch.randint(len(self.pools[t]), (1,), generator=gen)) for t in which]
        return self._rows([self.pools[t][i] for t, i in zip(which, picks)])

    @torch.no_grad()
    def evaluate(self, model, device) -> Dict[str, float]:
        """Greedy accuracy of the whole continuation (target + newline) on held-out docs, per task."""
        scores: Dict[str, float] = {}
        for task in self.tasks:
            docs = task.docs(self.eval_spec.seed, self.eval_spec.num_examples, self._tmp.name)
            examples = [_encode(self.tokenizer, d) for d in docs][: max(self.eval_spec.num_examples, 1)]
            hits = 0
            for start in range(0, len(examples), self.eval_spec.batch_size):
                part = examples[start : start + self.eval_spec.batch_size]
                batch = self._rows(part).to(device)
                # score the answer only (not the trailing newline): lm-eval's greedy check
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                preds = logits.argmax(-1)
                for b, (ids, ctx_len) in enumerate(part):
                    answer = slice(ctx_len - 1, len(ids) - 2)
                    hits += int(torch.equal(preds[b, answer].cpu(), batch.input_ids[b, ctx_len : len(ids) - 1].cpu()))
            scores[task.name] = hits / len(examples)
        scores["mean"] = sum(scores.values()) / len(self.tasks)
        return scores
