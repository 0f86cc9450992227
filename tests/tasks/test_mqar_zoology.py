"""``zoology_multiquery_ar`` against arrays made by zoology's own ``multiquery_ar``.

Golden data (``data/zoology_mqar_golden.json``, its ``made_with`` field says the same): for each case,
HazyResearch/zoology at commit d88d6f5474f36998d82d5c3bd58a190248d0a669,
``zoology.data.multiquery_ar.multiquery_ar(**args)`` called after ``np.random.seed(args["seed"]);
torch.manual_seed(args["seed"])`` (numpy 2.4.6, torch 2.13.0+cpu, ``wandb`` stubbed out because
``zoology.utils`` imports it); stored are the sha256 of the int64 bytes of ``inputs`` then ``labels``
of all ``num_examples`` rows, rows 0-1 and the last row raw. ``prepare_data``: zoology's
``zoology.data.utils.prepare_data`` on a small ``DataConfig(seed=123)`` (its ``made_with`` field),
with the segment seeds it passed to ``DataSegment.from_config`` logged and each segment's sha256.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qdelta.tasks.mqar import IGNORE_INDEX, mqar_hash, zoology_multiquery_ar, zoology_segment_seeds

GOLDEN = json.loads((Path(__file__).parent / "data" / "zoology_mqar_golden.json").read_text())
CASES = GOLDEN["cases"]


def _case_id(case):
    a = case["args"]
    return f"V{a['vocab_size']}-L{a['input_seq_len']}-K{a['num_kv_pairs']}-s{a['seed']}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_equals_zoology_element_for_element(case):
    a = dict(case["args"])
    x, y = zoology_multiquery_ar(a.pop("vocab_size"), a.pop("num_examples"), a.pop("input_seq_len"), a.pop("seed"), **a)
    assert x.dtype == y.dtype == torch.int64 and list(x.shape) == list(y.shape) == case["shape"]
    assert torch.equal(x[:2], torch.tensor(case["first_inputs"]))
    assert torch.equal(y[:2], torch.tensor(case["first_labels"]))
    assert torch.equal(x[-1:], torch.tensor(case["last_inputs"]))
    assert torch.equal(y[-1:], torch.tensor(case["last_labels"]))
    assert mqar_hash(x, y) == case["sha256"]


def test_golden_covers_the_issue_settings():
    settings = {(c["args"]["vocab_size"], c["args"]["input_seq_len"], c["args"]["num_kv_pairs"]) for c in CASES}
    assert {(8192, 64, 4), (8192, 128, 8), (8192, 256, 16), (8192, 512, 64)} <= settings
    assert "d88d6f5474f36998d82d5c3bd58a190248d0a669" in GOLDEN["made_with"]


def test_leaves_the_global_generators_alone():
    np.random.seed(99)
    torch.manual_seed(99)
    expected_np, expected_torch = np.random.rand(3), torch.rand(3)
    np.random.seed(99)
    torch.manual_seed(99)
    zoology_multiquery_ar(8192, 5, 64, seed=3, num_kv_pairs=4)
    assert np.array_equal(np.random.rand(3), expected_np) and torch.equal(torch.rand(3), expected_torch)


def test_structure_and_seed_dependence():
    V, L, K = 512, 128, 8
    x, y = zoology_multiquery_ar(V, 50, L, seed=17, num_kv_pairs=K)
    mask = y != IGNORE_INDEX
    assert bool((mask.sum(1) == K).all())
    keys, values = x[:, 0 : 2 * K : 2], x[:, 1 : 2 * K : 2]
    for n in range(50):
        table = dict(zip(keys[n].tolist(), values[n].tolist()))
        assert len(table) == K and set(values[n].tolist()) == set(table.values())
        assert {int(x[n, t]): int(y[n, t]) for t in mask[n].nonzero()[:, 0].tolist()} == table
    other, _ = zoology_multiquery_ar(V, 50, L, seed=18, num_kv_pairs=K)
    assert not torch.equal(x, other)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(vocab_size=64, num_examples=2, input_seq_len=33, seed=0, num_kv_pairs=4), "odd"),
        (dict(vocab_size=64, num_examples=2, input_seq_len=64, seed=0, num_kv_pairs=4), "vocab_size > seq_len"),
        (dict(vocab_size=512, num_examples=2, input_seq_len=64, seed=0, num_kv_pairs=17), "4 K <= L"),
        (dict(vocab_size=512, num_examples=2, input_seq_len=64, seed=2**32, num_kv_pairs=4), "2**32"),
        (dict(vocab_size=512, num_examples=2, input_seq_len=64, seed=-1, num_kv_pairs=4), "2**32"),
        (dict(vocab_size=512, num_examples=0, input_seq_len=64, seed=0, num_kv_pairs=4), "num_examples"),
    ],
)
def test_refuses_what_zoology_refuses(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("*", r"\*")):
        zoology_multiquery_ar(**kwargs)


def test_segment_seeds_and_segments_equal_zoology_prepare_data():
    """Zoology's trainer seeds each segment from DataConfig.seed; without the noise fill (which
    prepare_data draws from the global torch stream) the segments equal ours for those seeds."""
    golden = GOLDEN["prepare_data"]
    train, test = zoology_segment_seeds(golden["data_seed"], len(golden["train"]), len(golden["test"]))
    assert train + test == golden["segment_seeds"]
    for (L, K, N), seed, digest in zip(golden["train"] + golden["test"], train + test, golden["sha256"]):
        x, y = zoology_multiquery_ar(8192, N, L, seed, num_kv_pairs=K, random_non_queries=False)
        assert mqar_hash(x, y) == digest
