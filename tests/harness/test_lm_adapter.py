"""The lm-eval adapter `qdelta`: scoring against an independent reference, prefix reuse == recompute,
cached greedy generation == uncached, overflow handling, device/batch-size arguments, registry."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from qdelta.harness.eval.adapter import QDeltaLM, parse_batch_size
from qdelta.harness.eval.scoring import ReuseStats, plan_chains, plan_prefix_groups, score_requests
from qdelta.testing import tiny_model


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, save_word_tokenizer):
    return str(save_word_tokenizer(tmp_path_factory.mktemp("tok")))


def _token_requests(seed: int, vocab: int = 90):
    """MQAR-like requests: 3 shared contexts with several continuations (1-3 tokens), contexts that
    extend another (later queries of the same sequence) and unrelated singles."""
    g = torch.Generator().manual_seed(seed)

    def rand(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    reqs = []
    for length in (20, 33, 47):
        ctx = rand(length)
        for n_cont in (1, 1, 2, 3):
            reqs.append((None, ctx, rand(n_cont)))
        reqs.append((None, ctx + rand(4), rand(1)))  # a later query of the same sequence
    for length in (5, 12, 30):
        reqs.append((None, rand(length), rand(2)))
    return reqs


def _reference(model, reqs):
    """Each request alone, no cache: sum of log-softmax at the continuation positions (fp64)."""
    out = []
    for _, ctx, cont in reqs:
        full = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(full).logits[0].double(), -1)
        pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
        target = torch.tensor(cont)
        out.append((float(logp[pos, target].sum()), bool((logp[pos].argmax(-1) == target).all())))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qdelta", "qdelta_official", "transformer", "hf_llama"])
def test_prefix_reuse_equals_recompute(kind, tokenizer_dir, tiny_llama):
    if kind == "hf_llama":
        model = tiny_llama(vocab_size=96)
    elif kind == "qdelta_official":
        model = tiny_model("qdelta", seed=1, variant="official")
    else:
        model = tiny_model(kind, seed=1)
    lm = QDeltaLM(model, tokenizer=tokenizer_dir, device="cpu", batch_size="3")
    reqs = _token_requests(seed=7)
    reused = lm._loglikelihood_tokens(reqs)
    stats = lm.take_stats()
    assert stats["prefix_groups"] == 3 and stats["requests_in_groups"] == 15
    assert stats["prefix_tokens_saved"] >= 4 * (20 + 33 + 47)
    lm.prefix_reuse = False
    recomputed = lm._loglikelihood_tokens(reqs)
    assert lm.take_stats()["prefix_groups"] == 0
    reference = _reference(model, reqs)
    for a, b, r in zip(reused, recomputed, reference):
        assert abs(a[0] - b[0]) < 2e-5 and a[1] == b[1]
        assert abs(a[0] - r[0]) < 2e-5 and a[1] == r[1]


@pytest.mark.slow
@pytest.mark.parametrize("walk,variant", [("sequential", "paper"), ("batched", "paper"), ("batched", "official")])
def test_prefix_tree_walk_computes_each_shared_token_once(walk, variant):
    """A branching tree of contexts (nested MQAR-like queries, siblings, identical contexts): every
    distinct prefix is run exactly once and every score equals recomputing the request alone, both
    one chain at a time (any cache) and level by level in masked batches (our cache)."""
    g = torch.Generator().manual_seed(11)

    def rand(n):
        return torch.randint(3, 90, (n,), generator=g).tolist()

    root, a, b, c = rand(12), rand(6), rand(5), rand(7)
    contexts = [
        root,
        root + a,
        root + a + b,
        root + a + b + rand(3),
        root + c,
        root + c,
        root + a + rand(4),
        root + rand(2),
    ]
    items = [(ctx, rand(1 + k % 3)) for k, ctx in enumerate(contexts)]
    model = tiny_model("qdelta", seed=2, variant=variant)

    def forward(ids, past, use_cache):
        with torch.no_grad():
            out = model(input_ids=ids, past_key_values=past, use_cache=use_cache or past is not None)
        return out.logits, out.past_key_values

    def forward_masked(ids, mask, past):
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, past_key_values=past, use_cache=True)
        return out.logits, out.past_key_values

    stats = ReuseStats()
    items = items + [(rand(9), rand(2)) for _ in range(3)]  # unrelated requests batched plainly
    extra = [ctx + rand(3) for ctx in (items[-1][0], items[-2][0])]  # two more small chains
    items += [(extra[0], rand(1)), (extra[1], rand(3))]
    got = score_requests(
        forward,
        items,
        batch_size=3,
        pad_id=0,
        device="cpu",
        stats=stats,
        forward_masked=forward_masked if walk == "batched" else None,
    )
    sequences = [ctx + cont[:-1] for ctx, cont in items]
    distinct_prefixes = {tuple(s[: p + 1]) for s in sequences for p in range(len(s))}
    assert stats.groups == 3 and stats.requests_in_groups == 12  # the tree, two small chains, one plain request
    assert stats.tokens_run == len(distinct_prefixes)
    assert stats.tokens_run + stats.tokens_saved == sum(len(s) for s in sequences)
    for (logprob, greedy), (ref_logprob, ref_greedy) in zip(got, _reference(model, [(None, *it) for it in items])):
        assert abs(logprob - ref_logprob) < 2e-5 and greedy == ref_greedy


def test_plan_chains():
    seqs = [[1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [7, 8, 8], [1, 2, 9], [7, 1]]
    chains = plan_chains(seqs, [len(s) for s in seqs], min_fraction=0.5)
    assert sorted(sorted(c) for c in chains) == [[0, 1, 3], [2], [4]]


def test_plan_prefix_groups():
    contexts = [[1, 2, 3, 4], [9, 9, 9, 1], [1, 2, 3, 5], [1, 2, 3, 4], [1, 7], [9, 9, 9, 9, 9]]
    groups = plan_prefix_groups(contexts, min_fraction=0.5)
    by_members = {tuple(sorted(g.members)): g.prefix_len for g in groups}
    assert by_members == {(0, 2, 3): 3, (4,): 2, (1, 5): 3}
    assert sorted(i for g in groups for i in g.members) == list(range(6))
    with pytest.raises(ValueError, match="prefix_min_fraction"):
        plan_prefix_groups(contexts, min_fraction=0.0)


def _greedy_reference(model, lm, context, budget, stop):
    ids, gen = lm.tok_encode(context), []
    for _ in range(budget):
        with torch.no_grad():
            token = int(model(torch.tensor([ids + gen])).logits[0, -1].argmax())
        if token == lm.eot_token_id:
            break
        gen.append(token)
        if stop in lm.tok_decode(gen):
            break
    return lm.tok_decode(gen).split(stop)[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qdelta", "transformer"])
def test_generate_until_cached_equals_uncached(kind, tokenizer_dir):
    model = tiny_model(kind, seed=3)
    lm = QDeltaLM(model, tokenizer=tokenizer_dir, device="cpu", batch_size=2)
    contexts = [
        "the key 3 is 5 . the key 4 is",
        "the key 3 is 5 . the key 9 is",
        "the key 3 is 5 . the key 9 is",
        "a b c",
        "query 7 : 8 9 10 11",
    ]
    reqs = [Instance("generate_until", {}, (c, {"until": ["."], "max_gen_toks": 6}), i) for i, c in enumerate(contexts)]
    shared = lm.generate_until(reqs)
    assert lm.take_stats()["prefix_tokens_saved"] > 0
    lm.prefix_reuse = False
    plain = lm.generate_until(reqs)
    expected = [_greedy_reference(model, lm, c, 6, ".") for c in contexts]
    assert shared == plain == expected
    assert len(set(expected)) > 1  # the random model does not answer everything alike
    with pytest.raises(ValueError, match="do_sample"):
        lm.generate_until([Instance("generate_until", {}, ("a b", {"do_sample": True, "temperature": 1.0}), 0)])


def test_loglikelihood_rolling_is_the_whole_document(tokenizer_dir):
    model = tiny_model("qdelta", seed=4)
    lm = QDeltaLM(model, tokenizer=tokenizer_dir, device="cpu", batch_size=2)
    text = "the key 3 is 5 . the key 4 is 7 . query 3"
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    tokens = lm.tok_encode(text)
    full = torch.tensor([[lm.prefix_token_id] + tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0, :-1].double(), -1)
    assert total == pytest.approx(float(logp[torch.arange(len(tokens)), torch.tensor(tokens)].sum()), abs=2e-5)


def test_too_long_requests_error_or_are_counted(tokenizer_dir):
    model = tiny_model("transformer", seed=5, max_position_embeddings=16)
    assert model.config.max_sequence_length == 16
    lm = QDeltaLM(model, tokenizer=tokenizer_dir, device="cpu", batch_size=4)
    short, long = (None, list(range(3, 10)), [11]), (None, list(range(3, 20)), [11, 12])
    with pytest.raises(ValueError, match="on_overflow=count"):
        lm._loglikelihood_tokens([short, long])
    counting = QDeltaLM(model, tokenizer=tokenizer_dir, device="cpu", batch_size=4, on_overflow="count")
    scores = counting._loglikelihood_tokens([short, long])
    assert scores[1] == (float("-inf"), False) and scores[0][0] > float("-inf")
    assert counting.take_stats()["events"] == {"loglikelihood_over_max_length": 1}
    text = " ".join(["a"] * 14)
    outs = counting.generate_until([Instance("generate_until", {}, (text, {"until": ["."], "max_gen_toks": 5}), 0)])
    assert len(counting.tok_encode(outs[0])) <= 2
    assert counting.take_stats()["events"] == {"generation_capped_at_max_length": 1}


def test_device_batch_size_and_arguments(tokenizer_dir):
    model = tiny_model("qdelta", seed=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available.*--device cpu"):
            QDeltaLM(model, tokenizer=tokenizer_dir, device="cuda:0", batch_size="8")
        lm = QDeltaLM(model, tokenizer=tokenizer_dir, device="auto", batch_size="8")
        assert lm.device.type == "cpu" and lm.batch_size == 8
    assert parse_batch_size("auto") == 64 and parse_batch_size("auto:4", 16) == 16
    with pytest.raises(ValueError, match="batch_size"):
        parse_batch_size("many")
    with pytest.raises(ValueError, match="unknown --model_args.*colour"):
        QDeltaLM(model, tokenizer=tokenizer_dir, colour="red")
    with pytest.raises(ValueError, match="dtype"):
        QDeltaLM(model, tokenizer=tokenizer_dir, dtype="float8")
    with pytest.raises(ValueError, match="no such folder"):
        QDeltaLM("/nonexistent/checkpoint")


def test_registry_keeps_builtins():
    assert get_model("qdelta") is QDeltaLM
    assert get_model("hf").__name__ == "HFLM"
