"""The shared cache's bookkeeping and the forward's input checks."""

import pytest
import torch

from qdelta.cache import QDeltaCache
from qdelta.kernels import OfficialState
from qdelta.testing import tiny_config, tiny_model


def _cache(official=True):
    cache = QDeltaCache(1)
    gen = torch.Generator().manual_seed(0)
    s = lambda: torch.randn(3, 2, 4, 4, generator=gen)  # noqa: E731
    recurrent = OfficialState(s(), s(), s(), torch.tensor([1, 2, 3])) if official else s()
    cache.update(
        [{"conv_q": torch.randn(3, 8, 3, generator=gen), "recurrent": recurrent}], torch.tensor([5, 6, 7]), width=7
    )
    return cache


def test_clone_select_repeat_interleave_cover_every_tensor():
    cache = _cache()
    copy = cache.clone()
    copy.layers[0]["recurrent"].state.add_(1)
    copy.layers[0]["conv_q"].add_(1)
    assert not torch.equal(copy.layers[0]["recurrent"].state, cache.layers[0]["recurrent"].state)
    assert not torch.equal(copy.layers[0]["conv_q"], cache.layers[0]["conv_q"])
    picked = cache.select(torch.tensor([2, 2, 0]))
    assert picked.token_counts.tolist() == [7, 7, 5] and picked.seq_length == 7
    assert picked.layers[0]["recurrent"].offset.tolist() == [3, 3, 1]
    torch.testing.assert_close(picked.layers[0]["recurrent"].x_memory[2], cache.layers[0]["recurrent"].x_memory[0])
    grown = cache.repeat_interleave(2)
    assert grown.batch_size == 6 and grown.token_counts.tolist() == [5, 5, 6, 6, 7, 7]
    torch.testing.assert_close(grown.layers[0]["conv_q"][3], cache.layers[0]["conv_q"][1])
    plain = _cache(official=False)
    plain.reorder_cache(torch.tensor([1, 0, 2]))
    assert plain.token_counts.tolist() == [6, 5, 7]
    plain.batch_repeat_interleave(2)
    assert plain.batch_size == 6 and plain.get_seq_length() == 7 and len(plain) == 1
    plain.batch_select_indices(torch.tensor([0]))
    assert plain.batch_size == 1 and "batch=1" in repr(plain)


def test_cache_argument_errors():
    cache = _cache()
    with pytest.raises(ValueError, match="index must lie in"):
        cache.select(torch.tensor([3]))
    with pytest.raises(ValueError, match="1-D"):
        cache.select(torch.tensor([[0]]))
    with pytest.raises(ValueError, match="positive int"):
        cache.repeat_interleave(0)


def test_forward_input_errors():
    model = tiny_model("gated_deltanet")
    ids = torch.randint(3, 96, (2, 5))
    with pytest.raises(ValueError, match="no tokens"):
        model(ids, attention_mask=torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, attention_mask=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one of"):
        model()
    with pytest.raises(TypeError, match="QDeltaCache"):
        model(ids, past_key_values=(torch.zeros(1),), use_cache=True)
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(ids).logits)
    hidden = model(ids, output_hidden_states=True).hidden_states
    assert len(hidden) == 3 and hidden[0].shape == (2, 5, 32)


def test_config_errors_name_the_field():
    for model_type, field, value in [
        ("qdelta", "variant", "fast"),
        ("gated_deltanet", "num_v_heads", 3),
        ("gated_deltanet", "expand_v", 0.3),
        ("delta_net", "qk_norm", "sum"),
        ("transformer", "window_size", 512),
        ("linear_attn", "feature_map", "hedgehog"),
        ("qdelta", "attn", {"layers": [1]}),
        ("transformer", "num_kv_heads", 3),
    ]:
        with pytest.raises(ValueError, match=f"'{field}'"):
            tiny_config(model_type, **{field: value})
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        tiny_model("qdelta", tie_word_embeddings=True)
    with pytest.raises(ValueError, match="model_type must be one of"):
        tiny_config("mamba")


HOST_READS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.item.default", "aten.equal.default"}


@pytest.mark.parametrize("model_type", ["qdelta", "gated_deltanet", "delta_net", "linear_attn", "transformer"])
def test_decoding_step_reads_nothing_back_from_the_device(model_type, monkeypatch):
    """One generate-style step (a cache, the whole attention mask, one token a row) reads no tensor value
    on the host, so it never waits for the GPU (the Q-Delta decode op stands in: its
    own host work is tested in tests/kernels)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import qdelta.layers

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.found = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func) in HOST_READS:
                self.found.append(str(func))
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(
        qdelta.layers, "fused_recurrent_qdelta", lambda *a, initial_state, **kw: (a[2] * 2, initial_state)
    )
    model = tiny_model(model_type, seed=6).eval()
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(7))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # left padding, as generate pads a batch
    with torch.no_grad():
        cache = model(ids, attention_mask=mask[:, :9], use_cache=True).past_key_values
        with Reads() as reads:
            model(ids[:, :1], attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
    assert reads.found == []


@pytest.mark.parametrize("model_type", ["qdelta", "gated_deltanet", "delta_net", "linear_attn"])
def test_a_padded_prefill_gives_the_ops_their_bounds_on_the_host(model_type, monkeypatch):
    """The rows' lengths are read back once, in the packing; every layer's op gets the bounds as a CPU
    tensor, which it reads without a device sync (tests/models/test_sync_free.py counts the syncs on a GPU)."""
    import qdelta.layers
    from qdelta.packing import Packing

    packings, given = [], []
    real_from_mask = Packing.from_mask

    def recording_from_mask(*args, **kwargs):
        packings.append(real_from_mask(*args, **kwargs))
        return packings[-1]

    def recording(real):
        def op(*args, cu_seqlens=None, **kwargs):
            given.append(cu_seqlens)
            return real(*args, cu_seqlens=cu_seqlens, **kwargs)

        return op

    monkeypatch.setattr(Packing, "from_mask", recording_from_mask)
    for name in ("chunk_qdelta", "chunk_linear_attention"):
        monkeypatch.setattr(qdelta.layers, name, recording(getattr(qdelta.layers, name)))
    model = tiny_model(model_type, seed=8).eval()
    ids = torch.randint(3, 96, (3, 12), generator=torch.Generator().manual_seed(9))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :4], mask[2, :7] = 0, 0
    with torch.no_grad():
        model(ids, attention_mask=mask, use_cache=True)
    (packing,) = packings
    assert packing.cu_seqlens_host.tolist() == [0, 8, 20, 25]
    assert len(given) == model.config.num_hidden_layers
    assert all(cu is packing.cu_seqlens_host for cu in given)
