"""A decoding step of the whole model, captured in a CUDA graph and replayed token after token, gives
the logits of eager decoding (GPU only). It can only be captured if the step reads nothing back from
the device; the recurrent state, updated in place, keeps its address from step to step, and the
small conv states the step writes anew are copied back into the captured inputs after each replay."""

import pytest
import torch

from qdelta.generation import GreedyDecoder, _copy_states
from qdelta.kernels import OfficialState
from qdelta.testing import MODEL_TYPES, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_decode_step_replays_in_a_cuda_graph(variant):
    fields = dict(hidden_size=128, num_heads=2, head_dim=64, expand_v=2, intermediate_size=256, variant=variant)
    model = tiny_model("qdelta", seed=3, **fields).cuda().eval()
    B, P, steps = 4, 58, 10  # the official variant's 64-token chunk boundary falls inside the decoded tokens
    ids = torch.randint(3, 96, (B, P + steps), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        cache = model(ids[:, :P], use_cache=True).past_key_values
        eager_cache = cache.clone()
        eager = [
            model(ids[:, t : t + 1], past_key_values=eager_cache, use_cache=True).logits for t in range(P, P + steps)
        ]

        static_ids = ids[:, P : P + 1].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and warm up outside the capture, on a copy
            warm = cache.clone()
            for _ in range(2):
                model(static_ids, past_key_values=warm, use_cache=True)
        torch.cuda.current_stream().wait_stream(side)
        inputs = [dict(layer) for layer in cache.layers]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(static_ids, past_key_values=cache, use_cache=True)
        outputs = cache.layers

        for before, after in zip(inputs, outputs):  # the recurrent state was updated in place
            a, b = before["recurrent"], after["recurrent"]
            assert all(x is y for x, y in zip(a, b)) if isinstance(a, OfficialState) else a is b
        graphed = []
        for t in range(P, P + steps):
            static_ids.copy_(ids[:, t : t + 1])
            graph.replay()
            graphed.append(out.logits.clone())
            _copy_states(inputs, outputs)  # the conv states, written anew by each step
    for t, (a, b) in enumerate(zip(graphed, eager)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"decoded token {t}: {m}")


@pytest.mark.parametrize("model_type", [m for m in MODEL_TYPES if m != "transformer"])
def test_greedy_generate_with_graphs_equals_the_eager_loop(model_type):
    extra = {"variant": "official"} if model_type == "qdelta" else {}
    model = tiny_model(model_type, seed=4, **extra).cuda().eval()
    graphed, eager = GreedyDecoder(model, cuda_graph=True), GreedyDecoder(model, cuda_graph=False)
    for seed in (1, 2):  # the second batch replays the graph the first one captured
        ids = torch.randint(3, 96, (5, 50), generator=torch.Generator().manual_seed(seed)).cuda()
        mask = torch.ones_like(ids)
        mask[1, : 5 + seed] = 0  # left padding
        assert graphed(ids, 20, attention_mask=mask).tolist() == eager(ids, 20, attention_mask=mask).tolist()
    assert len(graphed._steps) == 1
    with torch.inference_mode():  # in blocks, as the lm-eval adapter reads them
        out = model(ids, attention_mask=mask, use_cache=True)
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        blocks = torch.cat(list(graphed.continue_from(out.past_key_values, first, 20, block=6)), 1)
    assert blocks.tolist() == eager(ids, 20, attention_mask=mask)[:, 50:].tolist()
