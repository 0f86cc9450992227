"""The three Q-Delta ops against the float64 token loop (issue 2), on the CPU."""

import pytest
import torch

from qdelta.kernels import OfficialState, chunk_qdelta, fused_recurrent_qdelta, naive_recurrent_qdelta
from qdelta.kernels.testing import random_inputs

F64 = torch.float64
EXACT = 1e-10
K, V, H = 5, 7, 2  # not powers of two


def max_diff(a, b):
    if isinstance(a, OfficialState):
        return max(max_diff(x, y) for x, y in zip(a[:3], b[:3]))
    return (a - b).abs().max().item()


def run(op, inputs, **kw):
    return op(**inputs, use_qk_l2norm=True, output_final_state=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("T", [1, 63, 64, 100, 257])
@pytest.mark.parametrize("chunk_size", [1, 16, 64])
def test_chunk_equals_token_loop(T, chunk_size):
    x = random_inputs(2, T, H, K, V, dtype=F64, seed=T * 100 + chunk_size)
    o_ref, s_ref = run(naive_recurrent_qdelta, x)
    o, s = run(chunk_qdelta, x, chunk_size=chunk_size)
    assert o.dtype == F64 and s.dtype == F64
    assert max_diff(o, o_ref) <= EXACT
    assert max_diff(s, s_ref) <= EXACT
    assert o_ref.abs().mean() > 1e-2  # a meaningful signal, not near-zero outputs


@pytest.mark.parametrize("T", [1, 63, 100])
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_fused_recurrent_equals_token_loop(T, variant):
    x = random_inputs(2, T, H, K, V, dtype=F64, seed=T)
    o_ref, s_ref = run(naive_recurrent_qdelta, x, variant=variant)
    o, s = run(fused_recurrent_qdelta, x, variant=variant)
    assert max_diff(o, o_ref) <= EXACT and max_diff(s, s_ref) <= EXACT


def _split(inputs, at):
    first = {n: t[:, :at] for n, t in inputs.items() if n != "initial_state"}
    second = {n: t[:, at:] for n, t in inputs.items() if n != "initial_state"}
    return first, second


OPS = [naive_recurrent_qdelta, fused_recurrent_qdelta, chunk_qdelta]


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("at", [1, 37, 64, 99])
def test_split_equals_one_call(op, variant, at):
    x = random_inputs(2, 140, H, K, V, dtype=F64, seed=at)
    o_ref, s_ref = run(naive_recurrent_qdelta, x, variant=variant)
    first, second = _split(x, at)
    o1, s1 = run(op, first, initial_state=x["initial_state"], variant=variant)
    o2, s2 = run(op, second, initial_state=s1, variant=variant)
    assert max_diff(torch.cat([o1, o2], 1), o_ref) <= EXACT
    assert max_diff(s2, s_ref) <= EXACT


def test_official_decode_after_prefill_equals_one_chunked_call():
    x = random_inputs(1, 150, H, K, V, dtype=F64, seed=5)
    o_ref, s_ref = run(chunk_qdelta, x, variant="official")
    prefill, rest = _split(x, 70)
    o, state = run(chunk_qdelta, prefill, initial_state=x["initial_state"], variant="official")
    outs = [o]
    for t in range(rest["q"].shape[1]):
        step = {n: v[:, t : t + 1] for n, v in rest.items()}
        o, state = run(fused_recurrent_qdelta, step, initial_state=state, variant="official")
        outs.append(o)
    assert max_diff(torch.cat(outs, 1), o_ref) <= EXACT
    assert max_diff(state, s_ref) <= EXACT
    assert state.offset.tolist() == [150 % 64]


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_packed_equals_loop_over_sequences(op, variant):
    lengths = [5, 70, 1, 33]
    cu = torch.tensor([0, 5, 75, 76, 109])
    x = random_inputs(1, 109, H, K, V, dtype=F64, seed=11, num_sequences=4)
    o, s = run(op, x, cu_seqlens=cu, variant=variant)
    for n, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        assert end - start == lengths[n]
        one = {name: t[:, start:end] for name, t in x.items() if name != "initial_state"}
        o_n, s_n = run(naive_recurrent_qdelta, one, initial_state=x["initial_state"][n : n + 1], variant=variant)
        assert max_diff(o[:, start:end], o_n) <= EXACT
        s_packed = s.select(n) if variant == "official" else s[n : n + 1]
        assert max_diff(s_packed, s_n) <= EXACT


def gated_delta_rule_loop(q, k, v, g, beta, S, scale):
    """An independent statement of the (gated) delta rule, written without Q-Delta's helpers."""
    B, T, H, _ = q.shape
    out = torch.empty(B, T, H, v.shape[-1], dtype=q.dtype)
    S = S.clone()
    for b in range(B):
        for h in range(H):
            M = S[b, h]
            for t in range(T):
                kt = k[b, t, h] / (k[b, t, h].norm() ** 2 + 1e-6).sqrt()
                qt = q[b, t, h] / (q[b, t, h].norm() ** 2 + 1e-6).sqrt()
                M = torch.exp(g[b, t, h]) * M
                M = M + beta[b, t, h] * torch.outer(kt, v[b, t, h] - M.T @ kt)
                out[b, t, h] = scale * M.T @ qt
            S[b, h] = M
    return out, S


def test_lam_zero_is_gated_delta_rule_and_no_decay_is_deltanet():
    x = random_inputs(2, 50, H, K, V, dtype=F64, seed=3, with_lam=False)
    o_ref, s_ref = gated_delta_rule_loop(x["q"], x["k"], x["v"], x["g"], x["beta"], x["initial_state"], K**-0.5)
    for op in OPS:
        o, s = run(op, x)
        assert max_diff(o, o_ref) <= EXACT and max_diff(s, s_ref) <= EXACT
        o0, _ = run(op, x, lam=torch.zeros_like(x["beta"]))
        assert max_diff(o0, o_ref) <= EXACT
    no_decay = {n: t for n, t in x.items() if n != "g"}
    o_ref, _ = gated_delta_rule_loop(
        x["q"], x["k"], x["v"], torch.zeros_like(x["g"]), x["beta"], x["initial_state"], K**-0.5
    )
    for op in OPS:
        o, _ = run(op, no_decay)
        assert max_diff(o, o_ref) <= EXACT


def official_token_statement(q, k, v, g, beta, lam, S0, scale, chunk=64):
    """DESIGN §2's token-level statement of the authors' hybrid, written out literally (one sequence, one head)."""
    q = q / (q.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
    k = k / (k.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
    x = k + lam[:, None] * q
    out = []
    for start in range(0, q.shape[0], chunk):
        G = torch.cumsum(g[start : start + chunk], 0)
        us = []
        for i in range(G.shape[0]):
            t = start + i
            inner = sum(
                (torch.exp(G[i] - G[j]) * (k[t] @ x[start + j]) * us[j] for j in range(i)), torch.zeros_like(v[t])
            )
            us.append(beta[t] * (v[t] - torch.exp(G[i]) * x[t] @ S0 - inner))
            S_i = torch.exp(G[i]) * S0 + sum(
                torch.exp(G[i] - G[j]) * torch.outer(k[start + j], us[j]) for j in range(i + 1)
            )
            out.append(scale * S_i.T @ q[t])
        S0 = S_i
    return torch.stack(out), S0


@pytest.mark.slow
def test_official_variant_equals_its_token_level_statement_and_differs_from_paper():
    x = random_inputs(1, 150, 1, K, V, dtype=F64, seed=21)
    o, s = run(chunk_qdelta, x, variant="official")
    o_stmt, s_stmt = official_token_statement(
        *(x[n][0, :, 0] for n in ("q", "k", "v", "g", "beta", "lam")), x["initial_state"][0, 0], K**-0.5
    )
    assert max_diff(o[0, :, 0], o_stmt) <= EXACT and max_diff(s.state[0, 0], s_stmt) <= EXACT
    o_paper, _ = run(chunk_qdelta, x, variant="paper")
    rel = ((o - o_paper).norm() / o_paper.norm()).item()
    # With lam ~ U(0.05, 0.95) the transposed intra-chunk pairing moves the outputs by ~20-35 %
    # relative L2 (measured 0.235 for this seed, 0.25-0.32 for seeds 1-3): a different function.
    assert 0.05 < rel < 0.5
    # With lam = 0 the two pairings coincide (x = k).
    lam0 = dict(x, lam=torch.zeros_like(x["lam"]))
    assert max_diff(run(chunk_qdelta, lam0, variant="official")[0], run(chunk_qdelta, lam0)[0]) <= EXACT
