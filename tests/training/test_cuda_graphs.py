"""``train.cuda_graphs`` on the CPU: the field, its refusals, the lr held in tensors, and the warm-up
undo that capture relies on. The captured step itself runs on a GPU: scripts/mqar_speed_check.py."""

import pytest
import torch
import yaml

from qdelta.harness.train.config import load_config
from qdelta.harness.train.cuda_graphs import LRTensors, restore, snapshot
from qdelta.harness.train.loop import _Run, epoch_cosine_factor, train


def test_the_field_parses_and_defaults_off(tmp_path, tiny_train_config):
    data = tiny_train_config(tmp_path / "r")
    assert load_config(data=data).train.cuda_graphs is False
    data["train"].update(device="auto", cuda_graphs=True)
    assert load_config(data=data).train.cuda_graphs is True
    data["train"]["cuda_graphs"] = "yes"
    with pytest.raises(TypeError, match="train.cuda_graphs: expected true or false"):
        load_config(data=data)


def test_refused_for_a_cpu_device_and_for_text_data(tmp_path, tiny_train_config):
    data = tiny_train_config(tmp_path / "r", cuda_graphs=True)  # device: cpu
    with pytest.raises(ValueError, match=r"train.cuda_graphs: CUDA graphs need a GPU.*train.cuda_graphs: false"):
        load_config(data=data)
    data["train"]["device"] = "auto"
    data["data"] = {"kind": "text", "tasks": [{"task": "qd_niah_single_1"}]}
    with pytest.raises(ValueError, match="train.cuda_graphs: needs dense batches"):
        load_config(data=data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_run_refuses_graphs_without_cuda(tmp_path, tiny_train_config):
    config = load_config(data=tiny_train_config(tmp_path / "r", device="auto", cuda_graphs=True))
    with pytest.raises(ValueError, match=r"^train.cuda_graphs: true needs a CUDA device, but this run is on cpu; set"):
        _Run(config, config.lrs[0], tmp_path / "r", resume=False, progress=False, write=False)


def test_lr_tensors_follow_the_scheduler(tmp_path):
    """Zoology's per-epoch cosine over 4 epochs of 3 steps: the tensors hold the scheduler's lr each step,
    and stand in the param groups only inside ``in_groups``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    groups = [{"params": [model.weight], "weight_decay": 0.1}, {"params": [model.bias], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    schedule = dict(steps_per_epoch=3, epochs=4, min_lr_ratio=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: epoch_cosine_factor(s, **schedule))
    lrs = LRTensors(optimizer, "cpu")
    for step in range(12):
        lrs.set(scheduler.get_last_lr())
        want = 1e-2 * epoch_cosine_factor(step, **schedule)
        for tensor in lrs.tensors:
            assert tensor.item() == torch.tensor(want, dtype=torch.float32).item()
        with lrs.in_groups():
            assert all(group["lr"] is tensor for group, tensor in zip(optimizer.param_groups, lrs.tensors))
        assert all(isinstance(group["lr"], float) for group in optimizer.param_groups)
        optimizer.step()
        scheduler.step()


def _steps(model, optimizer, n, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        optimizer.zero_grad(set_to_none=True)
        model(torch.randn(8, 4, generator=generator)).square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize("done_before", [0, 2])
def test_warmup_steps_are_undone_exactly(done_before):
    """snapshot, three warm-up steps, restore: the next steps are those of a run that never warmed up
    (fresh optimizer state zeroed, existing state copied back, tensors kept in place)."""

    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

    reference, ref_opt = fresh()
    _steps(reference, ref_opt, done_before + 2, seed=1)
    model, optimizer = fresh()
    _steps(model, optimizer, done_before, seed=1)
    params = list(model.parameters())
    saved = snapshot(params, optimizer)
    _steps(model, optimizer, 3, seed=99)  # warm-up on other data
    state_tensors = [v for p in params for v in optimizer.state[p].values()]
    restore(params, optimizer, saved)
    assert all(a is b for a, b in zip(state_tensors, [v for p in params for v in optimizer.state[p].values()]))
    generator_state = torch.Generator().manual_seed(1)
    for _ in range(done_before):  # the data the first steps used
        torch.randn(8, 4, generator=generator_state)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        model(torch.randn(8, 4, generator=generator_state)).square().mean().backward()
        optimizer.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_without_the_new_field_still_resumes(tmp_path, tiny_train_config):
    """A train_config.yaml written before train.cuda_graphs existed compares at the field's default."""
    torch.set_num_threads(1)
    data = tiny_train_config(tmp_path / "r", steps=4, save_every=2, log_every=1)
    train(load_config(data=data), progress=False)
    (tmp_path / "r" / "metrics.json").unlink()
    (checkpoint,) = (tmp_path / "r" / "checkpoints").iterdir()
    saved = yaml.safe_load((checkpoint / "train_config.yaml").read_text())
    del saved["train"]["cuda_graphs"]
    (checkpoint / "train_config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    run = _Run(load_config(data=data), 3e-3, tmp_path / "r", resume=True, progress=False)
    assert run.step == 2


class _StandInGraph:
    """A CUDA graph stand-in for the CPU: capture records the step's call, replay calls it again
    (with gradients reset, as a real replay writes them afresh)."""

    capturing = None

    def __init__(self):
        self.call = None

    def pool(self):
        return "pool"

    def replay(self):
        step, ids, targets = self.call
        step.optimizer.zero_grad(set_to_none=True)
        _StandInGraph.body(step, ids, targets)


def test_graph_step_bookkeeping_with_stand_in_graphs(tmp_path, monkeypatch, tiny_train_config):
    """GraphStep's plumbing on the CPU, with stand-ins for the CUDA objects (a captured step runs once
    and is undone, as a real capture runs nothing): one graph per batch shape (the short last batch
    included), static inputs refilled, lr from the schedule, warm-up undone. It follows the eager
    run to rounding, and a run checkpointed and resumed ends exactly like an uninterrupted one."""
    import contextlib
    import importlib

    import qdelta.harness.train.cuda_graphs as cg

    @contextlib.contextmanager
    def capture(graph, pool=None):
        _StandInGraph.capturing = graph
        yield
        _StandInGraph.capturing = None

    def body(step, ids, targets):
        graph = _StandInGraph.capturing
        if graph is None:
            return _StandInGraph.body(step, ids, targets)
        graph.call = (step, ids, targets)
        saved = cg.snapshot(step.params, step.optimizer)
        _StandInGraph.body(step, ids, targets)
        cg.restore(step.params, step.optimizer, saved)

    class Stream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            pass

    monkeypatch.setattr(_StandInGraph, "body", cg.GraphStep._body, raising=False)
    monkeypatch.setattr(cg.GraphStep, "_body", body)
    monkeypatch.setattr(cg, "refuse_unless_capturable", lambda device, world: None)
    adam = importlib.import_module("torch.optim.adam")  # torch.optim does not keep the submodule's name
    monkeypatch.setattr(adam, "_get_capturable_supported_devices", lambda supports_xla=True: ["cpu"])
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _StandInGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    torch.set_num_threads(1)

    def config(graphs, out):
        data = tiny_train_config(out, device="auto" if graphs else "cpu", cuda_graphs=graphs, batch_size=8)
        data["data"] = {**data["data"], "train_sets": [[16, 2, 2 * 8 + 5], [32, 4, 8 + 3]], "vocab_size": 64}
        data["data"].update(generator="qdelta", cache_dir=str(tmp_path / "cache"))
        data["optim"] = {"lr": 3e-3, "schedule": "epoch_cosine", "warmup_steps": 0, "min_lr_ratio": 0.0}
        data["train"].update(steps=None, epochs=2)
        return load_config(data=data)

    def train_steps(graphs, out, last=None, resume=False, write=False):
        c = config(graphs, out)
        run = _Run(c, c.lrs[0], out, resume=resume, progress=False, write=write)
        last = c.train.steps if last is None else last
        losses = [float(run.train_step(s)[0]) for s in range(run.step, last)]
        run.step = last
        return run, losses

    eager, eager_losses = train_steps(False, tmp_path / "e")
    graphed, graphed_losses = train_steps(True, tmp_path / "g")
    assert sorted(graphed.graphs.graphs) == [(3, 32), (5, 16), (8, 16), (8, 32)]
    assert len(graphed_losses) == 10
    torch.testing.assert_close(graphed_losses, eager_losses, rtol=1e-4, atol=1e-5)
    first, losses = train_steps(True, tmp_path / "r", last=4, write=True)
    first._save_checkpoint()
    resumed, rest = train_steps(True, tmp_path / "r", resume=True, write=True)
    assert losses + rest == graphed_losses
    for a, b in zip(resumed.model.parameters(), graphed.model.parameters()):
        assert torch.equal(a, b)
