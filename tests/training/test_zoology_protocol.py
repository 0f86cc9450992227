"""configs/mqar_zoology.yaml: zoology's original MQAR sweep, expanded by the grid runner into valid runs.

The expected numbers restate zoology's ``original_mqar_configs.py`` and ``models_repo.py``
(HazyResearch/zoology at d88d6f5) and its Trainer defaults (``zoology/config.py``: weight decay 0.1,
early stop at valid/accuracy > 0.99, DataConfig.seed 123).
"""

from pathlib import Path

import numpy as np
import pytest
import yaml

from qdelta.harness.train.config import load_config
from qdelta.harness.train.grid import expand_grid
from qdelta.harness.train.loop import build_model

GRID = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "mqar_zoology.yaml").read_text())


def test_data_budget_and_optimiser_are_zoologys():
    jobs = expand_grid(GRID)
    assert len(jobs) == 4 * 3 * 4  # Transformer, DeltaNet, Gated DeltaNet, Q-Delta x d_model x lr
    configs = [load_config(data=job) for job in jobs]
    d = configs[0].data
    assert d.generator == "zoology" and d.vocab_size == 8192 and d.power_a == 0.01 and d.seed == 123
    assert d.train_sets == [[64, 4, 100_000], [128, 8, 20_000], [256, 16, 20_000], [256, 32, 20_000], [256, 64, 20_000]]
    tests = [[64, 4], [64, 8], [64, 16], [128, 32], [256, 64], [512, 128], [1024, 256]]
    assert d.test_sets == [[L, K, 1000] for L, K in tests]
    t, o = configs[0].train, configs[0].optim
    assert (t.epochs, t.batch_size, t.steps) == (32, 256, 32 * (391 + 4 * 79))
    assert t.eval_every_epochs == 1 and t.early_stop_accuracy == 0.99
    assert (o.weight_decay, o.weight_decay_on, o.betas, o.grad_clip) == (0.1, "all", [0.9, 0.999], 0.0)
    assert (o.schedule, o.warmup_steps, o.min_lr_ratio) == ("epoch_cosine", 0, 0.0)
    assert sorted({c.lrs[0] for c in configs}) == pytest.approx(list(np.logspace(-3, -1.5, 4)), rel=1e-15)
    assert sorted({c.model.overrides["hidden_size"] for c in configs}) == [64, 128, 256]
    assert {c.model.overrides["num_hidden_layers"] for c in configs} == {2}


@pytest.mark.parametrize("d_model", [64, 256])
def test_mixer_settings_are_zoologys(d_model):
    jobs = {(j["model"]["type"]): j for j in expand_grid(GRID) if j["model"]["hidden_size"] == d_model}
    assert sorted(jobs) == ["delta_net", "gated_deltanet", "qdelta", "transformer"]
    models = {}
    for name, job in jobs.items():
        config = load_config(data=job)
        models[name] = build_model(config.model, 8192, 0).config
    for name in ("delta_net", "gated_deltanet", "qdelta"):
        c = models[name]
        assert (c.num_heads, c.head_k_dim, c.use_gate, c.use_short_conv, c.conv_size) == (
            2,
            d_model // 2,
            False,
            True,
            4,
        )
    assert models["delta_net"].head_v_dim == d_model // 2 and models["delta_net"].use_beta
    assert models["gated_deltanet"].head_v_dim == models["qdelta"].head_v_dim == d_model  # expand_v 2
    assert models["transformer"].num_heads == 2 and models["transformer"].max_position_embeddings >= 1024
