"""The typed training config: YAML in, validated dataclass out, errors naming the field."""

import pytest

from qdelta.harness.train.config import TrainConfig, dump_config, load_config
from qdelta.harness.train.loop import lr_factor


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_round_trip_and_overrides(tmp_path):
    path = _write(
        tmp_path,
        """
name: t
seed: 3
model: {type: gated_deltanet, hidden_size: 64, num_heads: 1}
data: {kind: mqar, vocab_size: 128, configs: [[32, 4], [64, 8]]}
optim: {lr: 1e-3, warmup_steps: 5}
train: {steps: 20, batch_size: 8}
""",
    )
    cfg = load_config(path, ["optim.lr=[1e-3, 3e-3]", "train.steps=30"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.type == "gated_deltanet" and cfg.model.overrides == {"hidden_size": 64, "num_heads": 1}
    assert cfg.optim.lr == [1e-3, 3e-3] and cfg.lrs == [1e-3, 3e-3]  # "1e-3" (a YAML string) became a float
    assert cfg.train.steps == 30 and cfg.seed == 3
    again = load_config(data=__import__("yaml").safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "text, field, exc",
    [
        ("model: {type: mamba}", "model.type", ValueError),
        ("model: {type: qdelta, vocab_size: 10}", "model.vocab_size", ValueError),
        ("optim: {lr: fast}", "optim.lr", TypeError),
        ("optim: {lr: -1}", "optim.lr", ValueError),
        ("optim: {betas: [0.9]}", "optim.betas", ValueError),
        ("train: {steps: 0}", "train.steps", ValueError),
        ("train: {steps: 1.5}", "train.steps", TypeError),
        ("train: {batchsize: 4}", "batchsize", ValueError),
        ("train: {precision: fp8}", "train.precision", ValueError),
        ("data: {kind: mqar, configs: [[16, 8]]}", "data.configs[0]", ValueError),
        ("data: {kind: text}", "data.tasks", ValueError),
        ("data: {kind: mqar, configs: 64}", "data.configs", TypeError),
        ("seed: 5\neval: {seed: 5}", "eval.seed", ValueError),
        ("[1, 2]", "config", TypeError),
    ],
)
def test_bad_fields_are_named(tmp_path, text, field, exc):
    with pytest.raises(exc, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_config(_write(tmp_path, text))


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_config(_write(tmp_path, "seed: 1"), ["optim.lr"])


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, warmup_steps=10, total_steps=110, min_lr_ratio=0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))  # rising during warmup
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # falling afterwards
    assert f[60] == pytest.approx(0.55) and f[110] == pytest.approx(0.1)
