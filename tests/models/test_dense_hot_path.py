"""A dense (unpadded, uncached) batch reaches the ops without ``cu_seqlens``, and the packing of a dense
batch reads no device tensor on the host: what a CUDA-graph capture of a training step needs."""

import pytest
import torch

import qdelta.layers as layers
from qdelta.packing import Packing


def test_dense_rows_equal_the_rows_of_the_lengths():
    dense = Packing.from_mask(None, 3, 5, "cpu")
    assert dense.dense
    expected = torch.repeat_interleave(torch.arange(3), torch.full((3,), 5))
    assert torch.equal(dense.rows(), expected)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    padded = Packing.from_mask(mask, 3, 5, "cpu")
    assert torch.equal(padded.rows(), torch.tensor([0] * 3 + [1] * 5 + [2] * 4))


@pytest.mark.parametrize("kind", ["qdelta", "linear_attn"])
def test_a_dense_batch_calls_the_op_by_rows_without_cu_seqlens(monkeypatch, kind):
    from qdelta import QDeltaConfig
    from qdelta.configuration import LinearAttentionConfig
    from qdelta.modeling import MODEL_CLASSES

    seen = []

    def recording(op):
        def wrapped(q, *args, **kwargs):
            seen.append((tuple(q.shape), kwargs["cu_seqlens"]))
            return op(q, *args, **kwargs)

        return wrapped

    name = "chunk_linear_attention" if kind == "linear_attn" else "chunk_qdelta"
    monkeypatch.setattr(layers, name, recording(getattr(layers, name)))
    config_class = LinearAttentionConfig if kind == "linear_attn" else QDeltaConfig
    config = config_class(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_heads=2)
    torch.manual_seed(0)
    model = MODEL_CLASSES[config.model_type][1](config).eval()
    ids = torch.randint(0, 32, (3, 10))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        mask = torch.ones(3, 10, dtype=torch.long)
        mask[0, :2] = 0  # left padding: the packed path with cu_seqlens
        padded = model(input_ids=ids, attention_mask=mask).logits
    (dense_shape, dense_cu), (packed_shape, packed_cu) = seen
    assert dense_cu is None and dense_shape[:2] == (3, 10)
    assert packed_cu is not None and packed_shape[:2] == (1, 28)
    # rows 1 and 2 carry no padding: the two paths agree on them
    torch.testing.assert_close(dense[1:], padded[1:], atol=1e-5, rtol=1e-5)
