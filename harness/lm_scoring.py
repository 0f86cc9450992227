"""Token-level scoring for the lm-eval adapter: batched log-likelihoods with prefix-state reuse.

Requests that share a context prefix (the queries of one MQAR sequence, the answer choices of a
multiple-choice item, the depths of one haystack) are scored by running every shared prefix once
with ``use_cache=True`` and continuing each request from a copy of that recurrent state
(``cache.clone()``; ``cache.repeat_interleave(n)`` for batched generation), instead of
recomputing the prefix for each request.

Shapes: ``input_ids`` (B, T) long; ``logits`` (B, T, vocab).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

log = logging.getLogger(__name__)

# forward(input_ids (B, T), past_key_values or None, use_cache) -> (logits (B, T, V), cache or None)
ForwardFn = Callable[[torch.Tensor, Optional[object], bool], Tuple[torch.Tensor, object]]


@dataclass
class PrefixGroup:
    """Requests whose contexts share their first ``prefix_len`` tokens."""

    prefix_len: int
    members: List[int]


@dataclass
class ReuseStats:
    """What prefix reuse saved: tokens not recomputed, groups (chains) formed."""

    groups: int = 0
    requests_in_groups: int = 0
    tokens_saved: int = 0
    tokens_run: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"prefix_groups": self.groups, "requests_in_groups": self.requests_in_groups,
                "prefix_tokens_saved": self.tokens_saved, "tokens_run": self.tokens_run}


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_prefix_groups(contexts: Sequence[Sequence[int]], min_fraction: float = 0.5) -> List[PrefixGroup]:
    """Group requests whose contexts share a long common prefix.

    Contexts are sorted lexicographically, so requests with a common prefix are neighbours; a
    neighbour joins the current group while the group's common prefix stays at least one token
    and at least ``min_fraction`` of the longest member context. Every index appears in exactly
    one group; a group of one member has ``prefix_len`` = its context length.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"prefix_min_fraction must be in (0, 1], got {min_fraction}; "
                         "pass e.g. prefix_min_fraction=0.5")
    order = sorted(range(len(contexts)), key=lambda i: list(contexts[i]))
    groups: List[PrefixGroup] = []
    for i in order:
        ctx = contexts[i]
        if groups:
            g = groups[-1]
            first = contexts[g.members[0]]
            shared = common_prefix_len(first[: g.prefix_len], ctx)
            longest = max(max(len(contexts[j]) for j in g.members), len(ctx))
            if shared >= 1 and shared >= min_fraction * longest:
                g.members.append(i)
                g.prefix_len = shared
                continue
        groups.append(PrefixGroup(prefix_len=len(ctx), members=[i]))
    return groups


def repeat_cache(cache, n: int):
    """An independent cache holding each batch row of ``cache`` ``n`` times.

    Our cache (``qdelta.cache``) has ``clone()`` and ``repeat_interleave(n)``; a transformers
    ``DynamicCache`` has ``batch_repeat_interleave`` (in place), so it is deep-copied first.
    """
    if hasattr(cache, "repeat_interleave") and hasattr(cache, "clone"):
        copied = cache.clone()
        out = copied.repeat_interleave(n)
        return copied if out is None else out
    if hasattr(cache, "batch_repeat_interleave"):
        copied = copy.deepcopy(cache)
        copied.batch_repeat_interleave(n)
        return copied
    raise TypeError(f"the model's cache ({type(cache).__name__}) has neither repeat_interleave/clone "
                    "nor batch_repeat_interleave; pass prefix_reuse=False in --model_args")


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            out[b, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out.to(device)


def _score_one(step_logits: torch.Tensor, cont: Sequence[int]) -> Tuple[float, bool]:
    """step_logits (len(cont), V): the logits that predict each continuation token."""
    dtype = torch.float64 if step_logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(step_logits.to(dtype), dim=-1)
    target = torch.tensor(list(cont), dtype=torch.long, device=logp.device)
    total = logp.gather(-1, target[:, None]).sum()
    greedy = bool((logp.argmax(-1) == target).all())
    return float(total), greedy


def score_plain(forward: ForwardFn, items: Sequence[Tuple[Sequence[int], Sequence[int]]],
                indices: Sequence[int], batch_size: int, pad_id: int, device,
                out: list, stats: ReuseStats) -> None:
    """Score ``items[i]`` (context, continuation) for ``i`` in ``indices`` in right-padded batches.

    Right padding needs no mask: in a causal model a pad only affects positions after it.
    Longest first, so the first batch shows the peak memory.
    """
    order = sorted(indices, key=lambda i: -(len(items[i][0]) + len(items[i][1])))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        rows = [(list(items[i][0]) + list(items[i][1]))[:-1] for i in batch]
        logits, _ = forward(_right_pad(rows, pad_id, device), None, False)
        stats.tokens_run += sum(len(r) for r in rows)
        for b, i in enumerate(batch):
            ctx, cont = items[i]
            first = len(ctx) - 1
            out[i] = _score_one(logits[b, first : first + len(cont)], cont)


def clone_cache(cache):
    """An independent copy: ``cache.clone()`` (ours) or a deep copy (a transformers cache)."""
    return cache.clone() if hasattr(cache, "clone") else copy.deepcopy(cache)


def plan_chains(sequences: Sequence[Sequence[int]], context_lens: Sequence[int],
                min_fraction: float = 0.5) -> List[List[int]]:
    """Split requests into chains of neighbours (in sorted order) that share long prefixes.

    ``sequences[i]`` is request i's model input (context + continuation[:-1]); request i joins the
    chain of its sorted predecessor when they share at least one token and at least
    ``min_fraction`` of request i's context. Nested contexts (the queries of one MQAR sequence)
    and identical contexts (answer choices) form chains.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"prefix_min_fraction must be in (0, 1], got {min_fraction}; "
                         "pass e.g. prefix_min_fraction=0.5")
    order = sorted(range(len(sequences)), key=lambda i: list(sequences[i]))
    chains: List[List[int]] = []
    for i in order:
        if chains:
            shared = common_prefix_len(sequences[chains[-1][-1]], sequences[i])
            if shared >= 1 and shared >= min_fraction * context_lens[i]:
                chains[-1].append(i)
                continue
        chains.append([i])
    return chains


def score_chain(forward: ForwardFn, items: Sequence[Tuple[Sequence[int], Sequence[int]]], chain: List[int],
                device, out: list, stats: ReuseStats) -> None:
    """Score a chain (sorted by input sequence) walking the prefix tree once.

    Every token position shared by several requests is computed once (batch 1). The recurrent
    state is kept (``clone``) at each position where a later request branches off: the running
    minima of the later common-prefix lengths. Logits are kept only at the positions some
    request scores. Request k continues from the state at ``l_k`` (its common prefix with
    request k-1), which the walk guarantees to be on top of the snapshot stack.
    """
    seqs = [list(items[i][0]) + list(items[i][1])[:-1] for i in chain]
    n = len(chain)
    shared = [0] + [common_prefix_len(seqs[k - 1], seqs[k]) for k in range(1, n)]
    scored_positions = set()
    for i, seq in zip(chain, seqs):
        scored_positions.update(range(len(items[i][0]) - 1, len(seq)))
    stack: List[Tuple[int, object]] = [(0, None)]  # (position, state after that many tokens)
    saved: dict = {}  # position -> logits (V,) along the current path
    stats.groups += 1
    stats.requests_in_groups += n
    for k, (i, seq) in enumerate(zip(chain, seqs)):
        while stack[-1][0] > shared[k]:
            stack.pop()
        start, snapshot = stack[-1]
        assert start == shared[k], "prefix walk lost its branch point"
        for position in [p for p in saved if p >= start]:
            del saved[position]
        splits, running = set(), len(seq) + 1
        for j in range(k + 1, n):
            running = min(running, shared[j])
            if running <= start:
                break
            if running <= len(seq):
                splits.add(running)
        bounds = sorted(splits | {len(seq)})
        cache = clone_cache(snapshot) if snapshot is not None else None
        for bound in bounds:
            if bound > start:
                logits, cache = forward(torch.tensor([seq[start:bound]], dtype=torch.long, device=device), cache, True)
                stats.tokens_run += bound - start
                for position in range(start, bound):
                    if position in scored_positions:
                        saved[position] = logits[0, position - start]
                start = bound
            if bound in splits:
                stack.append((bound, cache if bound == bounds[-1] else clone_cache(cache)))
        stats.tokens_saved += shared[k]
        ctx, cont = items[i]
        steps = [saved[p] for p in range(len(ctx) - 1, len(ctx) + len(cont) - 1)]
        out[i] = _score_one(torch.stack(steps), cont)


def score_requests(forward: ForwardFn, items: Sequence[Tuple[Sequence[int], Sequence[int]]],
                   batch_size: int, pad_id: int, device, prefix_reuse: bool = True,
                   min_fraction: float = 0.5, stats: Optional[ReuseStats] = None) -> List[Tuple[float, bool]]:
    """(log-probability, is-greedy) of each continuation given its context.

    items: (context token ids, continuation token ids); both non-empty. Requests sharing a
    prefix are walked as a prefix tree (:func:`score_chain`); the rest go in right-padded batches.
    """
    stats = stats if stats is not None else ReuseStats()
    out: list = [None] * len(items)
    if prefix_reuse:
        sequences = [list(ctx) + list(cont)[:-1] for ctx, cont in items]
        chains = plan_chains(sequences, [len(ctx) for ctx, _ in items], min_fraction)
    else:
        chains = [[i] for i in range(len(items))]
    score_plain(forward, items, [c[0] for c in chains if len(c) == 1], batch_size, pad_id, device, out, stats)
    for chain in chains:
        if len(chain) > 1:
            score_chain(forward, items, chain, device, out, stats)
    assert all(r is not None for r in out)
    return out
