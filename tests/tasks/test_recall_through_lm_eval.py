"""Every recall task through lm-eval (offline, include path, small sizes): the exact-recall oracle
scores 100 % on every task and slice; the random model scores at its computed chance level."""

import math
import os

import lm_eval
import pytest

from qdelta.tasks import TASKS_DIR, oracle_models  # oracle_models registers qd_oracle, qd_random

pytestmark = pytest.mark.slow  # CPU-heavy: run by the full suite, skipped by -m 'not slow'

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

QUICK = [
    "qd_mqar_quick",
    "qd_mqar_gen_quick",
    "qd_ar_quick",
    "qd_passkey_quick",
    "qd_niah_single_1_quick",
    "qd_niah_single_2_quick",
    "qd_niah_single_3_quick",
    "qd_kv_recall_quick",
]


def _evaluate(model, tasks, **kw):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return lm_eval.simple_evaluate(
        model=model, tasks=tasks, task_manager=manager, log_samples=True, bootstrap_iters=0, **kw
    )


@pytest.fixture(scope="module")
def oracle():
    return _evaluate("qd_oracle", ["qd_recall_quick"])


@pytest.fixture(scope="module")
def random_model():
    return _evaluate("qd_random", ["qd_recall_quick"])


def test_group_lists_every_recall_task(oracle):
    assert set(QUICK) <= set(oracle["results"]) and "qd_recall_quick" in oracle["results"]


@pytest.mark.parametrize("task", QUICK)
def test_oracle_scores_100_on_every_task_and_slice(oracle, task):
    res = oracle["results"][task]
    samples = oracle["samples"][task]
    slices = {s["doc"]["slice"] for s in samples}
    assert res["acc,none"] == 1.0 and len(samples) >= 2
    for sl in slices:
        assert res[f"acc_{sl},none"] == 1.0
    assert len({s["doc"]["data_hash"] for s in samples}) == 1


def test_oracle_group_score(oracle):
    assert oracle["results"]["qd_recall_quick"]["acc,none"] == 1.0


@pytest.mark.parametrize("task", QUICK)
def test_random_model_is_at_chance(random_model, task):
    samples = random_model["samples"][task]
    chances = [oracle_models.chance_of(s["doc"], s["arguments"][0][0]) for s in samples]
    n = len(chances)
    expected = sum(chances) / n
    spread = math.sqrt(sum(p * (1 - p) for p in chances)) / n
    observed = random_model["results"][task]["acc,none"]
    assert expected < 0.3
    assert abs(observed - expected) <= 4 * spread + 1e-9, (observed, expected, spread)


def test_random_model_hits_when_chance_is_high():
    """The chance check can fail: with 2 pairs of 1 key the answer is a large share of the words."""
    from qdelta.tasks.synthetic import build_ar

    docs = build_ar(settings=[[2, 1]], num_examples=200, seed=1)["test"].to_list()
    model = oracle_models.RandomLM(seed=0)
    hits = [model.guess(d["context"]) == d["answer"] for d in docs]
    expected = sum(oracle_models.chance_of(d, d["context"]) for d in docs) / len(docs)
    assert expected == pytest.approx(2 / 5) and abs(sum(hits) / len(hits) - expected) < 0.12


def test_offline_perplexity_task_runs():
    res = _evaluate("qd_random", ["qd_kjv_ruth_ppl"])
    assert res["results"]["qd_kjv_ruth_ppl"]["byte_perplexity,none"] == pytest.approx(256.0)
    assert len(res["samples"]["qd_kjv_ruth_ppl"]) == 4


def test_full_suite_yaml_runs_with_metadata_overrides():
    """qd_recall's own YAML files, shrunk through --metadata (it reaches every task), oracle at 100 %."""
    from lm_eval.tasks import TaskManager

    small = {"num_examples": 1, "settings": [[16, 2]], "num_pairs": [2], "context_lengths": [320], "num_depths": 1}
    small["num_samples"] = 1  # the RULER needle tasks
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=small)
    res = lm_eval.simple_evaluate(
        model="qd_oracle", tasks=["qd_recall"], task_manager=manager, log_samples=True, bootstrap_iters=0
    )
    leaves = [t for t in res["results"] if t != "qd_recall"]
    ruler_only = [f"qd_niah_{n}" for n in ("multikey_1", "multikey_2", "multikey_3", "multivalue", "multiquery")]
    assert sorted(leaves) == sorted([q.replace("_quick", "") for q in QUICK] + ruler_only)
    assert all(res["results"][t]["acc,none"] == 1.0 for t in leaves) and res["results"]["qd_recall"]["acc,none"] == 1.0
    docs = [s["doc"] for t in leaves for s in res["samples"][t]]
    assert {d["slice"] for d in docs} >= {"L16_K2", "P16_K2", "pairs2", "len320_depth50", "len320"}
