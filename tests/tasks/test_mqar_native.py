"""The native MQAR generator: zoology's construction, seeded, and its accuracy evaluator."""

import numpy as np
import pytest
import torch

from qdelta.tasks.mqar import IGNORE_INDEX, evaluate_mqar, make_mqar, mqar_hash, query_gap_probabilities


def test_same_seed_same_bytes_different_seed_differs():
    a = make_mqar(128, 64, 8, 50, seed=7)
    b = make_mqar(128, 64, 8, 50, seed=7)
    c = make_mqar(128, 64, 8, 50, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert mqar_hash(*a) == mqar_hash(*b) != mqar_hash(*c)
    # the same bytes in another process: tests/tasks/test_task_generators.py::test_same_data_in_another_process


def test_structure_matches_zoology():
    V, L, K, N = 256, 64, 8, 400
    x, y = make_mqar(V, L, K, N, seed=3)
    assert x.shape == y.shape == (N, L) and x.dtype == y.dtype == torch.int64
    keys, values = x[:, 0 : 2 * K : 2], x[:, 1 : 2 * K : 2]
    assert bool(((keys >= 1) & (keys < V // 2)).all()) and bool(((values >= V // 2) & (values < V)).all())
    for row_k, row_v in zip(keys, values):  # distinct within an example
        assert len(set(row_k.tolist())) == K and len(set(row_v.tolist())) == K
    assert bool((x >= 0).all()) and bool((x < V).all())
    # exactly K scored positions, all in the query region at even offsets
    mask = y != IGNORE_INDEX
    assert bool((mask.sum(1) == K).all())
    pos = mask.nonzero()[:, 1]
    assert bool((pos >= 2 * K).all()) and bool(((pos - 2 * K) % 2 == 0).all())
    # the token at a scored position is a key and its label is that key's value
    for n in range(N):
        table = dict(zip(keys[n].tolist(), values[n].tolist()))
        for t in mask[n].nonzero()[:, 0].tolist():
            assert table[int(x[n, t])] == int(y[n, t])
        assert sorted(x[n, mask[n]].tolist()) == sorted(table)  # each key queried once


def test_noise_fill_is_uniform_and_optional():
    V, L, K = 64, 128, 4
    x, y = make_mqar(V, L, K, 300, seed=1)
    filler = torch.ones_like(x, dtype=torch.bool)
    filler[:, : 2 * K] = False
    filler &= y == IGNORE_INDEX
    counts = torch.bincount(x[filler], minlength=V).double()
    expected = counts.sum() / V
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < V + 5 * (2 * V) ** 0.5  # dof 63: mean 63, sd ~11
    x0, _ = make_mqar(V, L, K, 30, seed=1, random_non_queries=False)
    f0 = torch.ones_like(x0, dtype=torch.bool)
    f0[:, : 2 * K] = False
    assert int((x0[f0] != 0).sum()) == 30 * K  # only the K queries are non-zero


def test_query_slot_law_matches_zoology_sampling():
    """Occupancy of each query slot equals numpy's choice(replace=False, p) (zoology's call)."""
    V, L, K, N = 64, 48, 4, 6000
    space = (L - 2 * K) // 2
    p = query_gap_probabilities(space, 0.01).numpy()
    ref = 0.01 * np.arange(1, space + 1) ** (0.01 - 1)
    np.testing.assert_allclose(p, ref / ref.sum(), rtol=1e-12)
    x, y = make_mqar(V, L, K, N, seed=11)
    gaps = ((y != IGNORE_INDEX).nonzero()[:, 1] - 2 * K) // 2
    ours = np.bincount(gaps.numpy(), minlength=space) / N
    rng = np.random.default_rng(0)
    theirs = np.zeros(space)
    for _ in range(N):
        theirs[rng.choice(space, size=K, replace=False, p=p)] += 1
    theirs /= N
    # binomial standard error per slot; 5 sigma
    se = np.sqrt(theirs * (1 - theirs) / N) * np.sqrt(2) + 1e-3
    assert np.all(np.abs(ours - theirs) < 5 * se), (ours, theirs)
    assert ours[0] > 2 * ours[-1]  # the law favours small gaps


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(vocab_size=8, seq_len=64, num_kv_pairs=4), "vocab_size"),
        (dict(vocab_size=256, seq_len=16, num_kv_pairs=8), "seq_len"),
        (dict(vocab_size=256, seq_len=64, num_kv_pairs=0), "num_kv_pairs"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_mqar(num_examples=2, seed=0, **kwargs)
    with pytest.raises(TypeError, match="seq_len"):
        make_mqar(64, 32.0, 4, 2, 0)


class _TableOracle(torch.nn.Module):
    """Reads the K pairs at the start and predicts each key's value (exact recall)."""

    def __init__(self, vocab_size, num_pairs_seen):
        super().__init__()
        self.v, self.k = vocab_size, num_pairs_seen
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.randn(*x.shape, self.v, generator=torch.Generator().manual_seed(0))
        for b in range(x.shape[0]):
            table = {int(x[b, t]): int(x[b, t + 1]) for t in range(0, 2 * self.k, 2)}
            for t in range(x.shape[1]):
                if int(x[b, t]) in table:
                    out[b, t, table[int(x[b, t])]] = 1e3
        return out


def test_evaluate_mqar_oracle_and_chance():
    V = 64
    acc = evaluate_mqar(_TableOracle(V, 4), V, settings=[(32, 4)], num_examples=40, seed=5, batch_size=16)
    assert acc["L32_K4"] == 1.0 and acc["all"] == 1.0
    # seeing only 2 of 4 pairs: half the queries answered, the rest at chance (~1/V)
    acc = evaluate_mqar(_TableOracle(V, 2), V, settings=[(32, 4)], num_examples=200, seed=5)
    assert 0.45 < acc["L32_K4"] < 0.6
    rand = evaluate_mqar(
        lambda x: torch.randn(*x.shape, V, generator=torch.Generator().manual_seed(1)),
        V,
        settings=[(32, 4), (48, 8)],
        num_examples=100,
        seed=5,
    )
    assert rand["L32_K4"] < 0.06 and rand["L48_K8"] < 0.06 and set(rand) == {"L32_K4", "L48_K8", "mean", "all"}


def test_evaluate_mqar_generators():
    """zoology's draws by default; the qdelta generator also where zoology refuses (V <= L)."""
    V = 32
    oracle = _TableOracle(V, 4)
    with pytest.raises(ValueError, match="vocab_size > seq_len"):
        evaluate_mqar(oracle, V, settings=[(64, 4)], num_examples=4, seed=5)
    assert evaluate_mqar(oracle, V, settings=[(64, 4)], num_examples=4, seed=5, generator="qdelta")["all"] == 1.0
    with pytest.raises(ValueError, match="generator"):
        evaluate_mqar(oracle, V, settings=[(16, 2)], num_examples=4, seed=5, generator="zoo")
