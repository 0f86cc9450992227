"""Training test support, as fixtures: tiny training configs (vocab 32, sequences of 16 tokens,
d 32) and the folders of the committed MQAR results the tests read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

MQAR_RESULTS = Path(__file__).resolve().parents[2] / "results" / "mqar"
# The vocab-32 CPU comparison of Q-Delta and Gated DeltaNet without the output gate, over seeds:
# seed 0 is the ablation run, seeds 1-4 are cpu_small_seeds/seed<N>/ (same config, base.seed=N).
CPU_SEED_FOLDERS = {
    0: MQAR_RESULTS / "cpu_small_ablation" / "no_output_gate",
    **{s: MQAR_RESULTS / "cpu_small_seeds" / f"seed{s}" for s in (1, 2, 3, 4)},
}

MODEL = {
    "qdelta": dict(num_heads=2, head_dim=16, expand_v=1),
    "gated_deltanet": dict(num_heads=2, head_dim=16, expand_v=1),
    "transformer": dict(num_heads=2, max_position_embeddings=64),
}


def _tiny_train_config(
    output_dir: Path,
    model_type: str = "qdelta",
    *,
    steps: int = 40,
    lr=3e-3,
    save_every: int = 0,
    eval_every: int = 0,
    batch_size: int = 16,
    **train,
) -> dict:
    return {
        "name": f"tiny-{model_type}",
        "output_dir": str(output_dir),
        "seed": 0,
        "model": {
            "type": model_type,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "intermediate_size": 64,
            **MODEL[model_type],
        },
        "data": {"kind": "mqar", "vocab_size": 32, "configs": [[16, 2]]},
        "optim": {"lr": lr, "warmup_steps": 10},
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "log_every": 5,
            "save_every": save_every,
            "eval_every": eval_every,
            "device": "cpu",
            **train,
        },
        "eval": {"num_examples": 64},
    }


def _write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def pytest_generate_tests(metafunc):
    """Tests taking ``cpu_seed`` run once per seed of ``CPU_SEED_FOLDERS``."""
    if "cpu_seed" in metafunc.fixturenames:
        metafunc.parametrize("cpu_seed", sorted(CPU_SEED_FOLDERS), ids=lambda s: f"seed{s}")


@pytest.fixture
def cpu_seed_folders():
    """{seed: folder} of the committed vocab-32 CPU comparison (seed 0 is the ablation run)."""
    return dict(CPU_SEED_FOLDERS)


@pytest.fixture
def mqar_results():
    """The committed MQAR results folder, results/mqar/."""
    return MQAR_RESULTS


@pytest.fixture
def tiny_train_config():
    """``tiny_train_config(output_dir, model_type="qdelta", *, steps=40, lr=3e-3, ...) -> dict``."""
    return _tiny_train_config


@pytest.fixture
def write_config():
    """``write_config(path, data) -> path``: the config as YAML."""
    return _write_config
