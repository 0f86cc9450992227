"""Greedy decoding of the recurrent models with the decoding step replayed as a CUDA graph.

A decoding step of a 24-layer model is a few thousand kernel launches of little work each (B rows, one
token), so the GPU waits for the host. :class:`GreedyDecoder` runs the prompt once, then replays one
step (embedding, every layer, head and argmax) captured in a CUDA graph for each new token, capturing
it once per batch size and copying each new prompt's states into the captured ones. The
step is capturable because it reads nothing back from the device (``tests/models/test_model_cache.py``),
and the recurrent state, updated in place, keeps its addresses; the small conv states a step writes
anew are copied back over the captured ones inside the graph. Same tokens as ``model.generate`` with
``do_sample=False`` and ``min_new_tokens = max_new_tokens`` (no early stop at an end token); the
Transformer baseline (its attention reads lengths on the host) and CPU tensors take the eager loop.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .kernels import OfficialState

WARMUP_STEPS = 2  # eager steps on a copy of the cache before the capture (compiles, autotunes)


def graph_capable(model) -> bool:
    """Whether :class:`GreedyDecoder` can replay ``model``'s decoding step as a CUDA graph: one of our
    recurrent models (not the Transformer baseline) on a CUDA device."""
    from .modeling import QDeltaPreTrainedModel

    ours = isinstance(model, QDeltaPreTrainedModel) and model.config.model_type != "transformer"
    return ours and next(model.parameters()).is_cuda


def _copy_states(inputs: List[dict], outputs: List[dict]) -> None:
    """Write a step's new layer states over the step's input states (a tensor the step updated in
    place is the same object in both and is skipped)."""
    for before, after in zip(inputs, outputs):
        for name, dst in before.items():
            src = after[name]
            for d, s in zip(dst, src) if isinstance(dst, OfficialState) else [(dst, src)]:
                if d is not s:
                    d.copy_(s)


def _next_ids(model, cache, ids: torch.Tensor) -> torch.Tensor:
    """One decoding step on ``cache`` (updated): the greedy next token of each row, (B, 1)."""
    return model(ids, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)


class _CapturedStep:
    """The decoding step captured for one batch size; the captured cache's states are its inputs."""

    def __init__(self, model, cache, ids: torch.Tensor):
        self.ids = ids.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and autotune outside the capture, on a copy
            warm = cache.clone()
            for _ in range(WARMUP_STEPS):
                _next_ids(model, warm, self.ids)
        torch.cuda.current_stream().wait_stream(side)
        self.states = [dict(layer) for layer in cache.layers]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.next = _next_ids(model, cache, self.ids)
            _copy_states(self.states, cache.layers)

    def load(self, cache) -> None:
        """Start from ``cache``'s states (a new prompt batch of the same shape)."""
        _copy_states(self.states, cache.layers)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(ids)
        self.graph.replay()
        return self.next


class GreedyDecoder:
    """Greedy generation for one model, keeping a captured decoding step per batch size across calls
    (the first call of a batch size captures it; later calls copy their prompt's states in and replay).

    ``cuda_graph``: replay the step as a CUDA graph (default: where :func:`graph_capable`); True where
    it is not raises ``ValueError``.
    """

    def __init__(self, model, cuda_graph: Optional[bool] = None):
        capable = graph_capable(model)
        if cuda_graph and not capable:
            raise ValueError(
                "cuda_graph=True needs a recurrent model (not the Transformer baseline) on a CUDA device; "
                "pass cuda_graph=False or None"
            )
        self.model, self.cuda_graph = model, capable if cuda_graph is None else cuda_graph
        self._steps: Dict[Tuple[int, torch.device], _CapturedStep] = {}

    @torch.inference_mode()
    def __call__(
        self, input_ids: torch.LongTensor, max_new_tokens: int, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.LongTensor:
        """``input_ids`` (B, T) prompts (left-padded under ``attention_mask``) -> (B, T + max_new_tokens):
        the prompts and the greedy tokens after them."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        out = self.model(input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        blocks = self.continue_from(out.past_key_values, first, max_new_tokens, block=max_new_tokens)
        return torch.cat([input_ids, *blocks], 1)

    @torch.inference_mode()
    def continue_from(self, cache, first: torch.Tensor, max_new_tokens: int, block: int = 16) -> Iterator[torch.Tensor]:
        """The greedy tokens after a forward that left ``cache`` and chose ``first`` (B, 1), ``first``
        included, as (B, n) blocks of at most ``block`` tokens (``max_new_tokens`` in all); stop iterating
        to stop decoding (the caller reads each block on the host, e.g. for stop strings). ``cache`` is
        consumed (with graphs, a new cache's states are copied into the captured ones)."""
        model, B = self.model, first.shape[0]
        if max_new_tokens > 1 and self.cuda_graph:
            key = (B, first.device)
            if key in self._steps:
                self._steps[key].load(cache)
            else:
                self._steps[key] = _CapturedStep(model, cache, first)
            step = self._steps[key]
        else:
            step = lambda ids: _next_ids(model, cache, ids)  # noqa: E731
        tokens = torch.empty(B, max_new_tokens, dtype=torch.long, device=first.device)
        tokens[:, :1] = first
        for start in range(0, max_new_tokens, block):
            stop = min(start + block, max_new_tokens)
            for i in range(max(start, 1), stop):
                tokens[:, i : i + 1] = step(tokens[:, i - 1 : i])
            yield tokens[:, start:stop]


def greedy_generate(
    model,
    input_ids: torch.LongTensor,
    max_new_tokens: int,
    attention_mask: Optional[torch.Tensor] = None,
    cuda_graph: Optional[bool] = None,
) -> torch.LongTensor:
    """One call of a :class:`GreedyDecoder` (a graph captured for it alone; keep a decoder to reuse it)."""
    return GreedyDecoder(model, cuda_graph)(input_ids, max_new_tokens, attention_mask)
