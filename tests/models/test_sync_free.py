"""How often a model call waits for the GPU (torch's CUDA sync debug mode counts each wait; GPU only): a
padded prefill reads the rows' lengths back in the packing, a fixed number of times however deep the
model is; a dense prefill and a decoding step never wait."""

import pytest
import torch

from qdelta.harness.bench.model import count_syncs
from qdelta.testing import tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _counts(variant: str, layers: int):
    model = tiny_model("qdelta", seed=5, num_hidden_layers=layers, variant=variant).cuda().eval()
    ids = torch.randint(3, 96, (3, 80), generator=torch.Generator().manual_seed(1)).cuda()
    mask = torch.ones_like(ids)
    mask[0, :9], mask[2, :30] = 0, 0
    with torch.no_grad():
        for _ in range(2):  # the first call fills the caches (chunk tables, compiled kernels)
            padded = count_syncs(lambda: model(ids, attention_mask=mask, use_cache=True))
            dense = count_syncs(lambda: model(ids))
        cache = model(ids, use_cache=True).past_key_values
        step = count_syncs(lambda: model(ids[:, :1], past_key_values=cache, use_cache=True))
    return padded, dense, step


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_waits_for_the_gpu_do_not_grow_with_depth(variant):
    (padded2, dense2, step2), (padded4, dense4, step4) = _counts(variant, 2), _counts(variant, 4)
    assert padded2 == padded4 and 1 <= padded4 <= 2, (padded2, padded4)  # lengths; fla's conv bookkeeping
    assert (dense2, dense4, step2, step4) == (0, 0, 0, 0)
