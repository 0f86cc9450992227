"""Text training data: rendered by the tasks' own generators, a pure function of (seed, step)."""

import pytest
import torch

from qdelta.harness.train.config import load_config
from qdelta.harness.train.text import TextSource


def _config(**data):
    base = {
        "kind": "text",
        "seq_len": 160,
        "pool_size": 40,
        "tokenizer_vocab_size": 400,
        "tasks": [{"task": "qd_ar_quick"}, {"task": "qd_mqar_quick", "weight": 2}],
    }
    return load_config(data={"name": "t", "data": {**base, **data}, "eval": {"num_examples": 8}})


@pytest.fixture(scope="module")
def source():
    cfg = _config()
    return TextSource(cfg.data, cfg.eval, cfg.seed)


def test_batches_are_a_pure_function_of_seed_and_step(source):
    cfg = _config()
    again = TextSource(cfg.data, cfg.eval, cfg.seed)  # a fresh source (as after a restart)
    for step in (0, 7):
        a, b = source.batch(step, 6), again.batch(step, 6)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)
    assert not torch.equal(source.batch(0, 6).input_ids, source.batch(1, 6).input_ids)
    assert source.tokenizer.get_vocab() == again.tokenizer.get_vocab()


def test_rows_render_context_then_scored_answer(source):
    batch = source.batch(3, 4)
    tok = source.tokenizer
    for b in range(4):
        n = int(batch.attention_mask[b].sum())
        assert (batch.input_ids[b, n:] == source.pad_id).all()
        scored = (batch.targets[b] != -100).nonzero()[:, 0]
        # the scored tokens are exactly the continuation: " value\n" at the end of the row
        answer = tok.decode(batch.targets[b, scored].tolist())
        text = tok.decode(batch.input_ids[b, :n].tolist())
        assert text.endswith(answer) and answer.endswith("\n") and answer.strip().isdigit()
        assert int(scored[-1]) == n - 2  # the last logit that predicts a real token
    # training docs are not the task's evaluation docs (other seeds)
    from qdelta.tasks.synthetic import build_ar

    eval_contexts = {
        d["context"]
        for d in build_ar(
            settings=[[8, 4], [16, 4]], num_examples=4, seed=0, key_kind="letter", value_kind="number", value_digits=2
        )["test"]
    }
    pool_texts = {tok.decode(ids[:start]) for ids, start in source.pools[0]}
    assert not eval_contexts & pool_texts


def test_evaluate_scores_an_oracle_and_a_random_model(source):
    class Oracle(torch.nn.Module):  # predicts the next token of the very input it is given
        def forward(self, input_ids, attention_mask=None):
            logits = torch.full(input_ids.shape + (source.vocab_size,), -1e4)
            logits[:, :-1].scatter_(2, input_ids[:, 1:, None], 0.0)
            return type("Out", (), {"logits": logits})()

    class Random(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            g = torch.Generator().manual_seed(0)
            return type("Out", (), {"logits": torch.randn(input_ids.shape + (source.vocab_size,), generator=g)})()

    assert source.evaluate(Oracle(), "cpu") == {"qd_ar_quick": 1.0, "qd_mqar_quick": 1.0, "mean": 1.0}
    assert source.evaluate(Random(), "cpu")["mean"] < 0.2


def test_bad_task_entries_and_short_seq_len():
    cfg = _config(tasks=[{"task": "qd_nope"}])
    with pytest.raises(ValueError, match=r"data.tasks: no task named 'qd_nope'"):
        TextSource(cfg.data, cfg.eval, 0)
    cfg = _config(tasks=[{"task": "qd_ar_quick", "wieght": 1}])
    with pytest.raises(ValueError, match=r"data.tasks\[0\]: unknown field"):
        TextSource(cfg.data, cfg.eval, 0)
    cfg = _config(seq_len=16, tasks=[{"task": "qd_ar_quick"}])
    with pytest.raises(ValueError, match="data.seq_len"):
        TextSource(cfg.data, cfg.eval, 0)
