"""generate() with the shared cache, sequence limits, and training gradients."""

import pytest
import torch

from qdelta.testing import MODEL_TYPES, tiny_model

pytestmark = pytest.mark.slow  # CPU-heavy: run by the full suite, skipped by -m 'not slow'


def _greedy_without_cache(model, ids, steps):
    for _ in range(steps):
        nxt = model(ids).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], 1)
    return ids[0, -steps:].tolist()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_generate_left_padded_batch_equals_greedy_one_at_a_time(model_type):
    extra = {"variant": "official"} if model_type == "qdelta" else {}
    model = tiny_model(model_type, seed=11, **extra)
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    ids[1, :4] = 0
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    for row in range(2):
        prompt = ids[row][mask[row].bool()][None]
        assert out[row, 9:].tolist() == _greedy_without_cache(model, prompt, 5)


def test_beam_search_with_cache_equals_without():
    model = tiny_model("qdelta", seed=12, variant="official")
    ids = torch.randint(3, 96, (2, 8), generator=torch.Generator().manual_seed(1))
    cached = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0)
    uncached = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0, use_cache=False)
    assert cached.tolist() == uncached.tolist()


def test_sequence_limits():
    for model_type in MODEL_TYPES:
        limit = tiny_model(model_type).config.max_sequence_length
        assert limit == (512 if model_type == "transformer" else None)
    model = tiny_model("transformer", max_position_embeddings=16)
    cache = model(torch.randint(3, 96, (1, 16)), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="max_sequence_length=16"):
        model(torch.tensor([[5]]), past_key_values=cache, use_cache=True)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_training_loss_has_gradients_for_every_parameter(model_type):
    model = tiny_model(model_type, seed=13).train()
    ids = torch.randint(3, 96, (2, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 15:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    loss = model(ids, attention_mask=mask, labels=labels).loss
    assert 3.5 < loss.item() < 6.0  # near log(96) = 4.56 for a random model
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_logits_to_keep_projects_only_the_positions_asked_for():
    model = tiny_model("qdelta", seed=14)
    ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(3))
    full = model(ids).logits

    def close(a, b):  # a smaller matmul: not bit-equal
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    close(model(ids, logits_to_keep=1).logits, full[:, -1:])
    close(model(ids, logits_to_keep=3).logits, full[:, -3:])
    close(model(ids, logits_to_keep=torch.tensor([0, 4])).logits, full[:, [0, 4]])
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, labels=ids, logits_to_keep=1)


def test_generate_prefill_projects_only_the_last_position():
    model = tiny_model("qdelta", seed=15)
    shapes = []
    model.lm_head.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape[:2])))
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(4))
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert shapes == [(2, 1)] * 3
    assert out[0, 12:].tolist() == _greedy_without_cache(model, ids[:1], 3)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_greedy_generate_equals_generate(model_type):
    from qdelta.generation import greedy_generate

    extra = {"variant": "official"} if model_type == "qdelta" else {}
    model = tiny_model(model_type, seed=16, **extra)
    ids = torch.randint(3, 96, (3, 11), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[2, :4] = 0  # left padding
    ids[2, :4] = 0
    want = model.generate(
        ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=1
    )
    assert greedy_generate(model, ids, 6, attention_mask=mask).tolist() == want.tolist()
    assert greedy_generate(model, ids, 1, attention_mask=mask).tolist() == want[:, :12].tolist()


def test_greedy_generate_refuses_what_it_cannot_do():
    from qdelta.generation import greedy_generate

    model, ids = tiny_model("qdelta", seed=17), torch.randint(3, 96, (1, 4))
    with pytest.raises(ValueError, match="cuda_graph=True needs"):
        greedy_generate(model, ids, 3, cuda_graph=True)  # a CPU model
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        greedy_generate(model, ids, 0)


def test_continue_from_yields_the_same_tokens_in_blocks():
    from qdelta.generation import GreedyDecoder

    model = tiny_model("gated_deltanet", seed=18)
    decoder = GreedyDecoder(model)
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(6))
    whole = decoder(ids, 11)[:, 9:]
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        blocks = list(decoder.continue_from(out.past_key_values, first, 11, block=4))
    assert [b.shape[1] for b in blocks] == [4, 4, 3]
    assert torch.cat(blocks, 1).tolist() == whole.tolist()
