"""Zoology's protocol in the training loop: fixed train/test sets, epochs, zoology's batch order and lr
schedule, early stopping, and the on-disk cache of the sets."""

import json

import numpy as np
import pytest
import torch

from qdelta.harness.train import mqar_sets
from qdelta.harness.train.config import batches_per_epoch, load_config
from qdelta.harness.train.data import make_source
from qdelta.harness.train.loop import _param_groups, build_model, epoch_cosine_factor, train
from qdelta.tasks.mqar import mqar_hash, zoology_multiquery_ar, zoology_segment_seeds

TRAIN_SETS = [[16, 2, 20], [28, 4, 12]]  # batches of 8: 3 + 2 per epoch (short last batches of 4)
TEST_SETS = [[16, 2, 16], [24, 3, 8]]


@pytest.fixture
def fixed(tiny_train_config):
    """``fixed(tmp_path, epochs=2, **train) -> dict``: the tiny training config on fixed sets."""

    def make(tmp_path, epochs=2, **train):
        return _fixed(tiny_train_config, tmp_path, epochs, **train)

    return make


def _fixed(tiny_train_config, tmp_path, epochs=2, **train):
    config = tiny_train_config(tmp_path / "run", batch_size=8, **train)
    del config["train"]["steps"]
    config["train"]["epochs"] = epochs
    config["data"].update(train_sets=TRAIN_SETS, test_sets=TEST_SETS, seed=123, cache_dir=str(tmp_path / "cache"))
    return config


def test_steps_come_from_epochs_and_batches(tmp_path, fixed):
    assert batches_per_epoch(TRAIN_SETS, 8) == 5 and batches_per_epoch([[64, 4, 100_000]], 256) == 391
    config = load_config(data=fixed(tmp_path, epochs=3))
    assert config.train.steps == 15
    data = fixed(tmp_path, epochs=3)
    data["train"]["steps"] = 15  # consistent: accepted (a dumped config reloads)
    assert load_config(data=data).train.steps == 15


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda c: c["train"].update(steps=14), "train.steps"),
        (lambda c: c["train"].update(epochs=0), "train.epochs"),
        (lambda c: c["data"].update(train_sets=[]), "data.test_sets"),
        (lambda c: c["data"].update(train_sets=[[16, 2]]), r"data.train_sets\[0\]"),
        (lambda c: c["data"].update(train_sets=[[64, 4, 10]]), r"data.train_sets\[0\]"),  # vocab 32 <= 64
        (lambda c: c["data"].update(test_sets=[[16, 2, 4], [16, 2, 8]]), "data.test_sets"),
        (lambda c: c["data"].update(seed=2**32), "data.seed"),
        (lambda c: c["data"].update(generator="numpy"), "data.generator"),
        (lambda c: c["optim"].update(schedule="epoch_cosine"), "optim.warmup_steps"),
        (lambda c: c["optim"].update(schedule="linear"), "optim.schedule"),
        (lambda c: c["optim"].update(weight_decay_on="some"), "optim.weight_decay_on"),
        (lambda c: c["train"].update(early_stop_accuracy=1.0), "train.early_stop_accuracy"),
    ],
)
def test_bad_protocol_fields_are_named(tmp_path, change, field, fixed):
    config = fixed(tmp_path)
    change(config)
    with pytest.raises(ValueError, match=field):
        load_config(data=config)


def test_epochs_and_eval_every_epochs_need_fixed_sets(tmp_path, tiny_train_config):
    for fields in ({"epochs": 2}, {"eval_every_epochs": 1}):
        config = tiny_train_config(tmp_path / "run")
        config["train"].update(fields)
        with pytest.raises(ValueError, match="train.e"):
            load_config(data=config)


def test_batches_are_zoology_sets_in_zoology_order(tmp_path, fixed):
    config = load_config(data=fixed(tmp_path))
    source = make_source(config.data, config.eval, config.seed)
    seeds, test_seeds = zoology_segment_seeds(123, 2, 2)
    sets = [zoology_multiquery_ar(32, n, L, s, num_kv_pairs=k) for (L, k, n), s in zip(TRAIN_SETS, seeds)]
    expected = [(0, 0, 8), (0, 8, 16), (0, 16, 20), (1, 0, 8), (1, 8, 12)]
    for step in range(10):  # two epochs, the same order in each
        i, a, b = expected[step % 5]
        batch = source.batch(step, 8)
        assert torch.equal(batch.input_ids, sets[i][0][a:b]) and torch.equal(batch.targets, sets[i][1][a:b])
    (L, k, n), s = TEST_SETS[1], test_seeds[1]
    key, x, y, digest = source.sets.test[1]
    assert key == "L24_K3" and digest == mqar_hash(x, y) == mqar_hash(
        *zoology_multiquery_ar(32, n, L, s, num_kv_pairs=k)
    )


def test_cache_is_written_once_read_back_and_regenerated_when_damaged(tmp_path, monkeypatch):
    spec = mqar_sets.SetSpec("zoology", 8192, 64, 4, 50, 7, 0.01)
    x, y, digest = mqar_sets.load_set(spec, tmp_path)
    path = tmp_path / spec.file_name()
    assert path.is_file() and digest == mqar_hash(*zoology_multiquery_ar(8192, 50, 64, 7, num_kv_pairs=4))
    with np.load(path) as f:
        assert f["inputs"].dtype == np.int16  # vocab 8192 fits
    monkeypatch.setattr(mqar_sets.SetSpec, "generate", lambda self: pytest.fail("regenerated a cached set"))
    x2, y2, digest2 = mqar_sets.load_set(spec, tmp_path)
    assert torch.equal(x, x2) and torch.equal(y, y2) and x2.dtype == torch.int64 and digest2 == digest
    monkeypatch.undo()
    with np.load(path) as f:  # one token changed: the stored sha256 no longer matches
        arrays = {k: f[k].copy() for k in ("inputs", "labels", "sha256")}
    arrays["inputs"][0, 0] += 1
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    x3, _, digest3 = mqar_sets.load_set(spec, tmp_path)
    assert torch.equal(x3, x) and digest3 == digest
    path.write_bytes(b"not an npz")
    assert mqar_sets.load_set(spec, tmp_path)[2] == digest
    assert not list(tmp_path.glob(".*tmp*"))
    x4, _, digest4 = mqar_sets.load_set(spec, None)  # no cache: generated in memory
    assert torch.equal(x4, x) and digest4 == digest


def test_epoch_cosine_is_torch_cosine_annealing_stepped_per_epoch():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6, eta_min=0.002)
    for epoch in range(6):
        for step in range(epoch * 7, epoch * 7 + 7):
            lr = 0.02 * epoch_cosine_factor(step, steps_per_epoch=7, epochs=6, min_lr_ratio=0.1)
            assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_weight_decay_on_all_parameters(tmp_path, tiny_train_config):
    config = load_config(data=tiny_train_config(tmp_path))
    model = build_model(config.model, 32, 0)
    groups = _param_groups(model, 0.1, "all")
    assert len(groups) == 1 and len(groups[0]["params"]) == len(list(model.parameters()))
    vectors = [p for p in model.parameters() if p.ndim < 2]
    assert vectors and _param_groups(model, 0.1)[1]["params"] == vectors


@pytest.mark.slow
def test_training_on_fixed_sets_with_early_stop(tmp_path, fixed):
    torch.set_num_threads(1)
    config = fixed(tmp_path, epochs=4, lr=3e-3)
    config["train"].update(eval_every_epochs=1, eval_every=0, log_every=1)
    config["optim"].update(schedule="epoch_cosine", warmup_steps=0, min_lr_ratio=0.0, weight_decay_on="all")
    result = train(load_config(data=config), progress=False)
    assert result["steps"] == result["planned_steps"] == 20 and not result["stopped_early"]
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" in r] == [5, 10, 15, 20]
    assert set(result["eval"]) == {"L16_K2", "L24_K3", "mean", "all"}
    assert [r["lr"] for r in records if "lr" in r and r["step"] in (1, 5, 6)] == pytest.approx(
        [3e-3, 3e-3, 3e-3 * 0.5 * (1 + np.cos(np.pi / 4))]
    )
    sets = make_source(load_config(data=config).data, load_config(data=config).eval, 0).sets
    assert result["data_sha256"] == sets.digests()
    # tokens: every batch counted with its own rows (short last batches)
    assert [r["tokens"] for r in records if "tokens" in r and r["step"] == 5] == [
        8 * 16 + 8 * 16 + 4 * 16 + 8 * 28 + 4 * 28
    ]
    # early stop: a threshold below the first epoch's accuracy stops there, one above it does not
    first = [r["eval"]["mean"] for r in records if r.get("step") == 5 and "eval" in r][0]
    assert first > 0
    config["train"]["early_stop_accuracy"] = first / 2
    config["output_dir"] = str(tmp_path / "early")
    early = train(load_config(data=config), progress=False)
    assert early["stopped_early"] and early["steps"] == 5 and early["planned_steps"] == 20
    assert early["eval"]["mean"] == first


def test_prepare_generates_each_distinct_set_once_for_a_grid(tmp_path, fixed, tiny_train_config):
    configs = []
    for seed in (0, 1):  # the run seed differs, data.seed fixes the sets: one copy of each
        config = fixed(tmp_path)
        config["seed"] = seed
        configs.append(load_config(data=config))
    assert mqar_sets.prepare(configs, processes=2) == len(TRAIN_SETS) + len(TEST_SETS)
    files = sorted(p.name for p in (tmp_path / "cache").glob("*.npz"))
    assert len(files) == 4 and all(name.startswith("zoology-V32-") for name in files)
    streaming = load_config(data=tiny_train_config(tmp_path / "s"))
    assert mqar_sets.prepare([streaming], processes=2) == 0
