"""Greedy decoding of the recurrent models with the decoding step replayed as a CUDA graph.

A decoding step of a 24-layer model is a few thousand kernel launches of little work each (B rows, one
token), so the GPU waits for the host. :func:`greedy_generate` runs the prompt once, then captures one
step (embedding, every layer, head and argmax) in a CUDA graph and replays it for each new token. The
step is capturable because it reads nothing back from the device (``tests/models/test_model_cache.py``),
and the recurrent state, updated in place, keeps its addresses; the small conv states a step writes
anew are copied back over the captured ones inside the graph. Same tokens as ``model.generate`` with
``do_sample=False`` and ``min_new_tokens = max_new_tokens`` (no early stop at an end token); the
Transformer baseline (its attention reads lengths on the host) and CPU tensors take the eager loop.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from .kernels import OfficialState

WARMUP_STEPS = 2  # eager steps on a copy of the cache before the capture (compiles, autotunes)


def graph_capable(model) -> bool:
    """Whether :func:`greedy_generate` can replay ``model``'s decoding step as a CUDA graph."""
    return model.config.model_type != "transformer" and next(model.parameters()).is_cuda


def _copy_states(inputs: List[dict], outputs: List[dict]) -> None:
    """Write a step's new layer states over the step's input states (a tensor the step updated in
    place is the same object in both and is skipped)."""
    for before, after in zip(inputs, outputs):
        for name, dst in before.items():
            src = after[name]
            for d, s in zip(dst, src) if isinstance(dst, OfficialState) else [(dst, src)]:
                if d is not s:
                    d.copy_(s)


def _eager_step(model, cache) -> Callable[[torch.Tensor], torch.Tensor]:
    def step(ids: torch.Tensor) -> torch.Tensor:
        return model(ids, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)

    return step


def _graph_step(model, cache, ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decoding step captured on ``cache`` (its states become the graph's inputs and outputs)."""
    static_ids = ids.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        warm = cache.clone()
        for _ in range(WARMUP_STEPS):
            _run(model, warm, static_ids)
    torch.cuda.current_stream().wait_stream(side)
    inputs = [dict(layer) for layer in cache.layers]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        next_ids, outputs = _run(model, cache, static_ids)
        _copy_states(inputs, outputs)
    cache.layers = inputs  # what every replay reads and updates

    def step(ids: torch.Tensor) -> torch.Tensor:
        static_ids.copy_(ids)
        graph.replay()
        return next_ids

    return step


def _run(model, cache, ids):
    next_ids = model(ids, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
    return next_ids, cache.layers


@torch.no_grad()
def greedy_generate(
    model,
    input_ids: torch.LongTensor,
    max_new_tokens: int,
    attention_mask: Optional[torch.Tensor] = None,
    cuda_graph: Optional[bool] = None,
) -> torch.LongTensor:
    """``input_ids`` (B, T) prompts (left-padded under ``attention_mask``) -> (B, T + max_new_tokens):
    the prompts and the greedy tokens after them.

    ``cuda_graph``: replay the decoding step as a CUDA graph (default: where :func:`graph_capable`);
    True where it is not raises ``ValueError``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    capable = graph_capable(model)
    if cuda_graph and not capable:
        raise ValueError(
            "cuda_graph=True needs a recurrent model (not the Transformer baseline) on a CUDA device; "
            "pass cuda_graph=False or None"
        )
    use_graph = capable if cuda_graph is None else cuda_graph
    B = input_ids.shape[0]
    out = model(input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
    tokens = torch.empty(B, max_new_tokens, dtype=torch.long, device=input_ids.device)
    tokens[:, :1] = out.logits[:, -1].argmax(-1, keepdim=True)
    if max_new_tokens > 1:
        cache = out.past_key_values
        step = _graph_step(model, cache, tokens[:, :1]) if use_graph else _eager_step(model, cache)
        for i in range(1, max_new_tokens):
            tokens[:, i : i + 1] = step(tokens[:, i - 1 : i])
    return torch.cat([input_ids, tokens], 1)
