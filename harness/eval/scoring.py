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
from collections import defaultdict
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
        return {
            "prefix_groups": self.groups,
            "requests_in_groups": self.requests_in_groups,
            "prefix_tokens_saved": self.tokens_saved,
            "tokens_run": self.tokens_run,
        }


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
        raise ValueError(
            f"prefix_min_fraction must be in (0, 1], got {min_fraction}; pass e.g. prefix_min_fraction=0.5"
        )
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
    raise TypeError(
        f"the model's cache ({type(cache).__name__}) has neither repeat_interleave/clone "
        "nor batch_repeat_interleave; pass prefix_reuse=False in --model_args"
    )


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


def score_plain(
    forward: ForwardFn,
    items: Sequence[Tuple[Sequence[int], Sequence[int]]],
    indices: Sequence[int],
    batch_size: int,
    pad_id: int,
    device,
    out: list,
    stats: ReuseStats,
) -> None:
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


def plan_chains(
    sequences: Sequence[Sequence[int]], context_lens: Sequence[int], min_fraction: float = 0.5
) -> List[List[int]]:
    """Split requests into chains of neighbours (in sorted order) that share long prefixes.

    ``sequences[i]`` is request i's model input (context + continuation[:-1]); request i joins the
    chain of its sorted predecessor when they share at least one token and at least
    ``min_fraction`` of request i's context. Nested contexts (the queries of one MQAR sequence)
    and identical contexts (answer choices) form chains.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(
            f"prefix_min_fraction must be in (0, 1], got {min_fraction}; pass e.g. prefix_min_fraction=0.5"
        )
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


def _branch_points(shared: Sequence[int], k: int, start: int, length: int) -> set:
    """Positions in (start, length] of chain member ``k`` where a later member branches off.

    ``shared[j]`` is the common prefix of members j-1 and j; the prefix member ``k`` shares with
    member j is the running minimum of ``shared[k+1..j]``. The walk stops once that falls to
    ``start`` (later members branch before the current piece).
    """
    splits, running = set(), length + 1
    for j in range(k + 1, len(shared)):
        running = min(running, shared[j])
        if running <= start:
            break
        if running <= length:
            splits.add(running)
    return splits


def score_chain(
    forward: ForwardFn,
    items: Sequence[Tuple[Sequence[int], Sequence[int]]],
    chain: List[int],
    device,
    out: list,
    stats: ReuseStats,
) -> None:
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
        splits = _branch_points(shared, k, start, len(seq))
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


def _plan_pieces(items, chain: List[int]):
    """The walk of :func:`score_chain` without running the model.

    Returns ``pieces`` as (request index, start, end, parent piece or -1): the tokens
    ``s[start:end]`` continue from the state at the end of the parent piece; and, per request,
    the piece whose end state is its full input (-1 for none: an input of zero new tokens).
    """
    seqs = [list(items[i][0]) + list(items[i][1])[:-1] for i in chain]
    n = len(chain)
    shared = [0] + [common_prefix_len(seqs[k - 1], seqs[k]) for k in range(1, n)]
    pieces: List[Tuple[int, int, int, int]] = []
    last: dict = {}
    stack: List[Tuple[int, int]] = [(0, -1)]
    for k, (i, seq) in enumerate(zip(chain, seqs)):
        while stack[-1][0] > shared[k]:
            stack.pop()
        start, parent = stack[-1]
        splits = _branch_points(shared, k, start, len(seq))
        for bound in sorted(splits | {len(seq)}):
            if bound > start:
                pieces.append((i, start, bound, parent))
                parent, start = len(pieces) - 1, bound
            if bound in splits:
                stack.append((bound, parent))
        last[i] = parent
    return pieces, last


def score_chains_batched(
    forward_masked, items, chains: List[List[int]], batch_size: int, pad_id: int, device, out: list, stats: ReuseStats
) -> None:
    """The prefix-tree walk of every chain at once, level by level, in right-padded masked batches.

    A piece of level d continues from its parent's row of level d-1 (``cache.select(rows)``); pads
    carry mask 0, so they enter no state. Needs a cache with ``select`` and per-row token counts
    (``qdelta.cache``). ``forward_masked(ids, mask, past) -> (logits, cache)``; mask covers past + new.
    """
    pieces: List[Tuple[int, int, int, int]] = []
    last: dict = {}
    for chain in chains:
        chain_pieces, chain_last = _plan_pieces(items, chain)
        offset = len(pieces)
        pieces += [(i, a, b, p + offset if p >= 0 else -1) for i, a, b, p in chain_pieces]
        last.update({i: (p + offset if p >= 0 else -1) for i, p in chain_last.items()})
        stats.groups += 1
        stats.requests_in_groups += len(chain)
        stats.tokens_saved += sum(len(items[i][0]) + len(items[i][1]) - 1 for i in chain)
    # which piece holds each scored position of each request
    need: dict = {}  # (piece, position) -> logits
    wanted: List[List[Tuple[int, int]]] = []
    for i in range(len(items)):
        if i not in last:
            wanted.append([])
            continue
        ctx, cont = items[i]
        path, node = [], last[i]
        while node >= 0:
            path.append(node)
            node = pieces[node][3]
        keys = []
        for p in range(len(ctx) - 1, len(ctx) + len(cont) - 1):
            piece = next(q for q in path if pieces[q][1] <= p < pieces[q][2])
            keys.append((piece, p))
            need[(piece, p)] = None
        wanted.append(keys)
    depth = []
    for i, a, b, parent in pieces:
        depth.append(0 if parent < 0 else depth[parent] + 1)
    level_of: dict = defaultdict(list)
    for q, d in enumerate(depth):
        level_of[d].append(q)
    where: dict = {}  # piece -> (chunk id, row) of the level just run
    chunk_state: dict = {}  # chunk id -> (cache, mask)
    for d in sorted(level_of):
        by_parent_chunk: dict = defaultdict(list)
        for q in level_of[d]:
            parent = pieces[q][3]
            by_parent_chunk[where[parent][0] if parent >= 0 else -1].append(q)
        new_where, new_state = {}, {}
        for parent_chunk, members in by_parent_chunk.items():
            for begin in range(0, len(members), batch_size):
                batch = members[begin : begin + batch_size]
                rows = [list(items[pieces[q][0]][0]) + list(items[pieces[q][0]][1]) for q in batch]
                segments = [row[pieces[q][1] : pieces[q][2]] for row, q in zip(rows, batch)]
                ids = _right_pad(segments, pad_id, device)
                new_mask = torch.arange(ids.shape[1])[None, :] < torch.tensor([len(x) for x in segments])[:, None]
                new_mask = new_mask.long().to(device)
                if parent_chunk >= 0:
                    cache, past_mask = chunk_state[parent_chunk]
                    index = torch.tensor([where[pieces[q][3]][1] for q in batch], dtype=torch.long, device=device)
                    cache = cache.select(index)
                    mask = torch.cat([past_mask[index], new_mask], dim=1)
                else:
                    cache, mask = None, new_mask
                logits, cache = forward_masked(ids, mask, cache)
                stats.tokens_run += sum(len(x) for x in segments)
                chunk_id = len(new_state)
                new_state[chunk_id] = (cache, mask)
                for row, q in enumerate(batch):
                    new_where[q] = (chunk_id, row)
                    for p in range(pieces[q][1], pieces[q][2]):
                        if (q, p) in need:
                            need[(q, p)] = logits[row, p - pieces[q][1]]
        where, chunk_state = new_where, new_state
    stats.tokens_saved -= sum(b - a for _, a, b, _ in pieces)
    for i, keys in enumerate(wanted):
        if keys:
            out[i] = _score_one(torch.stack([need[k] for k in keys]), items[i][1])


def score_requests(
    forward: ForwardFn,
    items: Sequence[Tuple[Sequence[int], Sequence[int]]],
    batch_size: int,
    pad_id: int,
    device,
    prefix_reuse: bool = True,
    min_fraction: float = 0.5,
    stats: Optional[ReuseStats] = None,
    forward_masked=None,
) -> List[Tuple[float, bool]]:
    """(log-probability, is-greedy) of each continuation given its context.

    items: (context token ids, continuation token ids); both non-empty. Requests sharing a
    prefix are walked as a prefix tree: batched level by level when ``forward_masked`` is given
    (:func:`score_chains_batched`, our caches), else one chain at a time (:func:`score_chain`,
    any cache with ``clone``). The rest go in right-padded batches.
    """
    stats = stats if stats is not None else ReuseStats()
    out: list = [None] * len(items)
    if prefix_reuse:
        sequences = [list(ctx) + list(cont)[:-1] for ctx, cont in items]
        chains = plan_chains(sequences, [len(ctx) for ctx, _ in items], min_fraction)
    else:
        chains = [[i] for i in range(len(items))]
    score_plain(forward, items, [c[0] for c in chains if len(c) == 1], batch_size, pad_id, device, out, stats)
    shared_chains = [c for c in chains if len(c) > 1]
    if shared_chains and forward_masked is not None:
        score_chains_batched(forward_masked, items, shared_chains, batch_size, pad_id, device, out, stats)
    else:
        for chain in shared_chains:
            score_chain(forward, items, chain, device, out, stats)
    assert all(r is not None for r in out)
    return out
