"""CUDA-graph training steps (``train.cuda_graphs: true``): one captured graph per batch shape.

Small MQAR models are launch-bound: a step of a 2-layer d_model-128 model is a few hundred kernel
launches of a few microseconds of work each, so the GPU waits for the host. A CUDA graph records a
whole step once (forward under bf16 autocast, loss, backward, grad-norm clipping, AdamW) and replays
it with one launch. What changes against the eager step (``_Run.train_step``):

- **Static tensors.** A graph reads and writes fixed addresses: each batch shape ``(B, T)`` has its
  own input and target buffers, filled by a device copy before every replay; the loss and the
  grad norm land in two tensors shared by all graphs, valid until the next step. Gradients live in
  the graphs' shared memory pool (written, not accumulated, on every replay). The graphs share one
  pool because they never run at once and nothing a replay leaves in the pool is read by another
  graph (parameters, optimizer state, lr and the outputs are allocated outside it).
- **Shapes.** Every distinct ``(B, T)``, the short last batch of a fixed set included, gets its own
  graph, captured the first time that shape comes (zoology's five sets: six graphs).
- **Learning rate.** AdamW is built with ``capturable=True`` (its step count and bias corrections on
  the device); during capture each param group's ``lr`` is a one-element device tensor, so the
  schedule changes it with ``fill_`` and no re-capture. Outside capture the groups hold the
  scheduler's floats, so the scheduler and the checkpoints are those of the eager loop.
- **Capture.** As PyTorch's CUDA-graph notes ask: a few eager warm-up steps on a side stream on the
  shape's first batch (they compile the Triton kernels, build the chunk tables and create the
  optimizer state), then capture with gradients set to None. The warm-up steps change the weights
  and the optimizer state, so both are copied before and written back after: capturing leaves the
  run exactly where it was. Autocast runs with ``cache_enabled=False`` (its weight-cast cache
  cannot live across a capture); the casts are the same numbers.
- **Host reads.** Nothing in a captured step reads a device tensor on the host: dense batches go to
  the kernels without ``cu_seqlens``, and the chunk tables the graphs read are kept alive with them
  (:func:`qdelta.kernels.triton.chunk.keep_tables`). The loop reads the loss every ``log_every``
  steps, as in eager mode.

Numbers: the graphs run the eager step's kernels except AdamW's capturable form (lr / bias correction
in fp32 device tensors instead of Python floats), so a graphed run follows an eager one to fp32/bf16
rounding, not bit for bit. A graphed run resumed from its checkpoint ends with the weights of an
uninterrupted graphed run (same device); a checkpoint never moves between modes (the config
differs, and resuming refuses it).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps on a side stream before each capture (PyTorch's examples use 3)


def refuse_unless_capturable(device: torch.device, world_size: int) -> None:
    """Raise ``ValueError`` naming ``train.cuda_graphs`` where graphs cannot run: not on CUDA, or several
    DDP ranks (whose all-reduce the graph would have to capture)."""
    if device.type != "cuda":
        raise ValueError(
            f"train.cuda_graphs: true needs a CUDA device, but this run is on {device.type}; set "
            "train.cuda_graphs: false (--set train.cuda_graphs=false) or run on a GPU"
        )
    if world_size > 1:
        raise ValueError(
            f"train.cuda_graphs: true runs one process per run, got {world_size} DDP ranks; set "
            "train.cuda_graphs: false for torchrun, or run single-GPU jobs (the grid runs one per process)"
        )


def snapshot(params: List[torch.Tensor], optimizer: torch.optim.Optimizer) -> Tuple[list, list]:
    """Copies of ``params`` and of their optimizer state (None for a parameter without state yet)."""
    weights = [p.detach().clone() for p in params]
    states = []
    for p in params:
        state = optimizer.state.get(p)
        states.append({k: v.clone() for k, v in state.items() if torch.is_tensor(v)} if state else None)
    return weights, states


def restore(params: List[torch.Tensor], optimizer: torch.optim.Optimizer, saved: Tuple[list, list]) -> None:
    """Write a :func:`snapshot` back in place (tensor identities kept, as a captured graph needs them).
    State created since the snapshot is zeroed: Adam's fresh state (step 0, zero moments)."""
    weights, states = saved
    with torch.no_grad():
        for p, w, before in zip(params, weights, states):
            p.copy_(w)
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if not torch.is_tensor(value):
                    continue
                if before is None:
                    value.zero_()
                else:
                    value.copy_(before[key])


class LRTensors:
    """Each param group's learning rate in a device tensor, filled from the scheduler's floats."""

    def __init__(self, optimizer: torch.optim.Optimizer, device):
        self.optimizer = optimizer
        self.tensors = [torch.zeros((), dtype=torch.float32, device=device) for _ in optimizer.param_groups]
        self.values: List[Optional[float]] = [None] * len(self.tensors)

    def set(self, lrs: List[float]) -> None:
        """Fill the tensors with ``lrs`` (one per group); a value that did not change is not written."""
        for i, (tensor, value) in enumerate(zip(self.tensors, lrs)):
            if value != self.values[i]:
                tensor.fill_(value)
                self.values[i] = value

    @contextmanager
    def in_groups(self) -> Iterator[None]:
        """The tensors stand in the param groups' ``lr`` for the block (warm-up and capture)."""
        floats = [group["lr"] for group in self.optimizer.param_groups]
        for group, tensor in zip(self.optimizer.param_groups, self.tensors):
            group["lr"] = tensor
        try:
            yield
        finally:
            for group, value in zip(self.optimizer.param_groups, floats):
                group["lr"] = value


class GraphStep:
    """The training step of one run as CUDA graphs, one per ``(B, T)`` of the batches it sees.

    ``loss_fn(input_ids, targets) -> scalar loss`` runs the model (autocast inside, built by the
    caller with ``cache_enabled=False``); ``clip`` is the max grad norm (``inf``: measured, not
    clipped, as the eager step does). :meth:`step` returns ``(loss, grad_norm)`` device tensors.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        clip: float,
        device: torch.device,
    ):
        if not all(group.get("capturable") for group in optimizer.param_groups):
            raise ValueError("GraphStep needs an optimizer built with capturable=True")  # internal: _Run builds it
        self.model, self.optimizer, self.loss_fn, self.clip, self.device = model, optimizer, loss_fn, clip, device
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.lr = LRTensors(optimizer, device)
        self.loss = torch.zeros((), dtype=torch.float32, device=device)
        self.grad_norm = torch.zeros((), dtype=torch.float32, device=device)
        self.graphs: Dict[Tuple[int, int], Tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, list]] = {}
        self.pool = None

    def _body(self, input_ids: torch.Tensor, targets: torch.Tensor) -> None:
        loss = self.loss_fn(input_ids, targets)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)  # no host sync (foreach, no checks)
        self.optimizer.step()
        self.loss.copy_(loss.detach())
        self.grad_norm.copy_(grad_norm)

    def _capture(self, input_ids: torch.Tensor, targets: torch.Tensor):
        from qdelta.kernels.triton.chunk import keep_tables

        static_ids, static_targets = input_ids.clone(), targets.clone()
        saved = snapshot(self.params, self.optimizer)
        graph = torch.cuda.CUDAGraph()
        with self.lr.in_groups(), keep_tables() as tables:
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), warnings.catch_warnings():
                # AdamW warns once that a capturable instance steps uncaptured: these steps are meant so
                warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
                for _ in range(WARMUP_STEPS):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._body(static_ids, static_targets)
            torch.cuda.current_stream(self.device).wait_stream(side)
            restore(self.params, self.optimizer, saved)
            self.optimizer.zero_grad(set_to_none=True)  # backward allocates the grads in the graph's pool
            with torch.cuda.graph(graph, pool=self.pool):
                self._body(static_ids, static_targets)
        self.pool = graph.pool() if self.pool is None else self.pool
        log.info("captured a CUDA graph for batches of shape %s", tuple(input_ids.shape))
        return graph, static_ids, static_targets, tables

    def step(self, input_ids: torch.Tensor, targets: torch.Tensor, lrs: List[float]):
        """One optimizer step on a batch (device tensors (B, T)) at learning rates ``lrs`` (one per group)."""
        self.lr.set(lrs)
        shape = tuple(input_ids.shape)
        if shape not in self.graphs:
            self.graphs[shape] = self._capture(input_ids, targets)
        graph, static_ids, static_targets, _ = self.graphs[shape]
        static_ids.copy_(input_ids, non_blocking=True)
        static_targets.copy_(targets, non_blocking=True)
        graph.replay()
        return self.loss, self.grad_norm
