"""Model-level exactness: padded == packed == one at a time; cached decoding == full forward."""

import pytest
import torch

from qdelta.testing import MODEL_TYPES, tiny_model

CASES = [(t, "paper") for t in MODEL_TYPES] + [("qdelta", "official")]
# option branches: no short conv / no output gate, DeltaNet without beta, linear attention without
# decay, grouped values, Transformer with q/k norms, qkv bias and multi-query attention
OPTIONS = {
    "gdn-noconv-nogate": ("gated_deltanet", dict(use_short_conv=False, use_gate=False)),
    "gdn-grouped-values": ("gated_deltanet", dict(num_v_heads=4, conv_size=2)),
    "deltanet-nobeta": ("delta_net", dict(use_beta=False, allow_neg_eigval=True)),
    "linear-nodecay": ("linear_attn", dict(use_decay=False)),
    "transformer-options": ("transformer", dict(qk_norm=True, qkv_bias=True, num_kv_heads=1)),
}
BASE_CASES = list(CASES)
CASES += [(name, "paper") for name in OPTIONS]
TOL = dict(atol=2e-5, rtol=2e-5)


def _model(model_type, variant):
    if model_type in OPTIONS:
        model_type, extra = OPTIONS[model_type]
    else:
        extra = {"variant": variant} if model_type == "qdelta" else {}
    return tiny_model(model_type, seed=3, **extra)


def _ids(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 96, (n,), generator=gen) for n in lengths]


@pytest.mark.slow
@pytest.mark.parametrize("model_type,variant", CASES)
def test_padded_equals_packed_equals_one_at_a_time(model_type, variant):
    model = _model(model_type, variant)
    seqs = _ids([67, 13, 30], seed=1)
    T = max(len(s) for s in seqs)
    alone = [model(s[None]).logits[0] for s in seqs]
    for side in ("right", "left"):
        ids = torch.zeros(len(seqs), T, dtype=torch.long)
        mask = torch.zeros(len(seqs), T, dtype=torch.long)
        for i, s in enumerate(seqs):
            span = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
            ids[i, span], mask[i, span] = s, 1
        logits = model(ids, attention_mask=mask).logits
        for i, s in enumerate(seqs):
            span = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
            torch.testing.assert_close(logits[i, span], alone[i], **TOL)
            assert bool((logits[i][mask[i] == 0] == 0).all())
    # pads hold garbage token ids: they must not change anything
    ids = torch.randint(3, 96, (len(seqs), T), generator=torch.Generator().manual_seed(9))
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    logits = model(ids, attention_mask=mask).logits
    for i, s in enumerate(seqs):
        torch.testing.assert_close(logits[i, : len(s)], alone[i], **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("model_type,variant", CASES)
def test_cached_decoding_reproduces_full_forward(model_type, variant):
    model = _model(model_type, variant)
    ids = torch.stack(_ids([68, 68], seed=2))  # crosses the 64-token chunk boundary while decoding
    full = model(ids).logits
    prompt = 60
    out = model(ids[:, :prompt], use_cache=True)
    cache, pieces = out.past_key_values, [out.logits]
    for t in range(prompt, ids.shape[1]):
        out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, **TOL)
    assert cache.seq_length == ids.shape[1]
    assert cache.token_counts.tolist() == [ids.shape[1]] * 2


@pytest.mark.slow
@pytest.mark.parametrize("model_type,variant", BASE_CASES)
def test_prefill_split_in_two_equals_one_prefill(model_type, variant):
    model = _model(model_type, variant)
    ids = torch.stack(_ids([90, 90], seed=4))
    full = model(ids).logits
    first = model(ids[:, :37], use_cache=True)
    second = model(ids[:, 37:], past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, **TOL)


@pytest.mark.slow
def test_padded_prefill_then_decode_matches_each_sequence_alone():
    model = _model("qdelta", "official")
    seqs = _ids([20, 7], seed=5)
    ids = torch.zeros(2, 20, dtype=torch.long)
    mask = torch.zeros(2, 20, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, 20 - len(s) :], mask[i, 20 - len(s) :] = s, 1
    cache = model(ids, attention_mask=mask, use_cache=True).past_key_values
    nxt = torch.tensor([[5], [6]])
    step = model(
        nxt,
        attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
        past_key_values=cache,
        use_cache=True,
    ).logits
    for i, s in enumerate(seqs):
        alone = model(torch.cat([s, nxt[i]])[None]).logits[0, -1]
        torch.testing.assert_close(step[i, -1], alone, **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qdelta", "transformer"])
def test_cache_methods(model_type):
    model = _model(model_type, "paper")
    ids = torch.stack(_ids([12, 12, 12], seed=6))
    cache = model(ids, use_cache=True).past_key_values
    nxt = torch.tensor([[7], [8], [9]])
    ref = model(nxt, past_key_values=cache.clone(), use_cache=True).logits
    again = model(nxt, past_key_values=cache.clone(), use_cache=True).logits
    torch.testing.assert_close(again, ref, atol=0, rtol=0)  # clone is independent: the cache was not advanced
    picked = cache.select(torch.tensor([2, 0]))
    torch.testing.assert_close(model(nxt[[2, 0]], past_key_values=picked, use_cache=True).logits, ref[[2, 0]], **TOL)
    grown = cache.repeat_interleave(2)
    assert grown.batch_size == 6 and grown.seq_length == cache.seq_length == 12
    out = model(nxt.repeat_interleave(2, 0), past_key_values=grown, use_cache=True).logits
    torch.testing.assert_close(out, ref.repeat_interleave(2, 0), **TOL)
    with pytest.raises(ValueError, match="batch size"):
        model(nxt[:2], past_key_values=cache, use_cache=True)


@pytest.mark.parametrize(
    "model_type,variant", [("qdelta", "official"), ("gated_deltanet", "paper"), ("transformer", "paper")]
)
@pytest.mark.slow
def test_shared_prefix_cache_then_padded_continuations(model_type, variant):
    """The harness's prefix reuse: one prefix, its cache repeated, right-padded continuations with a mask."""
    model = _model(model_type, variant)
    prefix = _ids([58], seed=7)[0]
    conts = _ids([9, 3, 6], seed=8)
    cache = model(prefix[None], use_cache=True).past_key_values.repeat_interleave(len(conts))
    width = max(len(c) for c in conts)
    ids = torch.full((len(conts), width), 0, dtype=torch.long)
    mask = torch.zeros(len(conts), len(prefix) + width, dtype=torch.long)
    mask[:, : len(prefix)] = 1
    for i, c in enumerate(conts):
        ids[i, : len(c)], mask[i, len(prefix) : len(prefix) + len(c)] = c, 1
    logits = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits
    for i, c in enumerate(conts):
        full = model(torch.cat([prefix, c])[None]).logits[0, len(prefix) :]
        torch.testing.assert_close(logits[i, : len(c)], full, **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("model_type,variant", BASE_CASES)
def test_selected_shorter_row_continues_exactly(model_type, variant):
    """A right-padded prefill, then only its shorter row continues (the cache is wider than that row)."""
    model = _model(model_type, variant)
    short, long_, cont = _ids([5, 9, 3], seed=9)
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for i, s in enumerate((short, long_)):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    cache = model(ids, attention_mask=mask, use_cache=True).past_key_values.select(torch.tensor([0]))
    step_mask = torch.cat([mask[:1], torch.ones(1, len(cont), dtype=torch.long)], 1)
    logits = model(cont[None], attention_mask=step_mask, past_key_values=cache, use_cache=True).logits
    full = model(torch.cat([short, cont])[None]).logits[0, len(short) :]
    torch.testing.assert_close(logits[0], full, **TOL)
