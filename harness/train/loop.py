"""The training loop of ``qdelta train``: generic over our Hugging Face causal LMs.

AdamW (weight decay on matrices only), linear warmup then cosine decay to
``min_lr_ratio * lr``, global grad-norm clipping, bf16 autocast on CUDA, optionally the whole step
as CUDA graphs (``train.cuda_graphs``, :mod:`qdelta.harness.train.cuda_graphs`), a tqdm progress bar,
a JSONL log, evaluation on held-out data, and checkpoints that are our HF folders
(``model.safetensors`` + ``config.json`` + tokenizer) plus ``trainer_state.pt`` (optimizer,
scheduler, step, RNG states). Data are a pure function of (seed, step), so a run killed at any
point and started again with the same command resumes from its last checkpoint and ends with
exactly the weights an uninterrupted run ends with (same device and thread count, and the same
``train.cuda_graphs``: a checkpoint does not resume in the other mode). Fixed MQAR sets are moved to
the GPU once, so a CUDA step copies nothing from the host.

Output folder (``output_dir``)::

    train_config.yaml        the resolved config
    train_log.jsonl          {"step", "loss", "lr", "grad_norm", "tokens", "elapsed_s"} and {"step", "eval": {...}}
    checkpoints/step-000500/ HF folder + trainer_state.pt (the last ``keep_checkpoints``)
    config.json, model.safetensors, tokenizer.json, ...   the final model
    metrics.json             written last: final eval, steps, lr, parameter count, device, versions

Several GPUs: ``torchrun --nproc_per_node N -m qdelta.harness.cli train --config FILE``; each
rank takes its rows of the same global batch (``batch_size`` must divide by N).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
import yaml

from .config import ModelSpec, TrainConfig, dump_config, from_dict
from .data import IGNORE_INDEX, make_source

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
METRICS = "metrics.json"
LOG = "train_log.jsonl"


# ----------------------------------------------------------------------------- helpers


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def epoch_cosine_factor(step: int, *, steps_per_epoch: int, epochs: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr in the epoch of ``step``: zoology's ``CosineAnnealingLR(T_max=epochs,
    eta_min=min_lr_ratio * lr)`` stepped once an epoch, no warmup."""
    epoch = step // steps_per_epoch
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr after ``step`` optimizer steps: linear warmup, then cosine."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_kind: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(requested: str, dist: _Dist) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but CUDA is not available; use 'auto' or 'cpu'")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    torch.cuda.set_device(dist.local_rank)
    return torch.device("cuda", dist.local_rank)


def build_model(spec: ModelSpec, vocab_size: int, seed: int):
    """A freshly initialised model of ``spec.type`` (init drawn from ``seed``, fp32, on CPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import qdelta  # noqa: F401  registers our model types with transformers

    try:
        defaults = AutoConfig.for_model(spec.type).to_dict()
    except ValueError:
        raise ValueError(
            f"model.type: {spec.type!r} is not registered with transformers; "
            f"is the qdelta package installed? (pip install -e .)"
        ) from None
    unknown = sorted(set(spec.overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"model: unknown field(s) {unknown} for model type {spec.type!r}; "
            f"known fields include {sorted(k for k in defaults if not k.startswith('_'))[:40]}"
        )
    config = AutoConfig.for_model(spec.type, **{**spec.overrides, "vocab_size": vocab_size})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.float()


def _param_groups(model, weight_decay: float, decay_on: str = "matrices") -> List[Dict[str, Any]]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if decay_on == "all":
        return [{"params": trainable, "weight_decay": weight_decay}]
    decay = [p for p in trainable if p.ndim >= 2]
    rest = [p for p in trainable if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _checkpoint_dirs(out: Path) -> List[Path]:
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / TRAINER_STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _read_log(path: Path, up_to_step: int) -> List[str]:
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if record.get("step", 0) <= up_to_step:
            kept.append(line)
    return kept


def _versions() -> Dict[str, str]:
    import transformers

    import qdelta

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "qdelta": qdelta.__version__,
    }


# ----------------------------------------------------------------------------- one run


class _Run:
    """One training run (one learning rate) writing into ``out``."""

    def __init__(self, config: TrainConfig, lr: float, out: Path, *, resume: bool, progress: bool, write: bool = True):
        self.config, self.lr, self.out, self.progress = config, lr, out, progress
        self.dist = _setup_distributed("cuda" if config.train.device != "cpu" and torch.cuda.is_available() else "cpu")
        self.device = _resolve_device(config.train.device, self.dist)
        t = config.train
        if t.batch_size % self.dist.world:
            raise ValueError(
                f"train.batch_size: {t.batch_size} does not split over {self.dist.world} ranks; "
                f"use a multiple of {self.dist.world}"
            )
        if t.cuda_graphs:
            from .cuda_graphs import refuse_unless_capturable

            refuse_unless_capturable(self.device, self.dist.world)
        self.use_bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        if write:
            out.mkdir(parents=True, exist_ok=True)
        checkpoints = _checkpoint_dirs(out) if resume else []
        self.resume_from = checkpoints[-1] if checkpoints else None
        if self.resume_from is not None:
            # through the dataclasses, so a field added since the checkpoint was written compares at its default
            saved = from_dict(TrainConfig, yaml.safe_load((self.resume_from / "train_config.yaml").read_text()))
            saved = saved.to_dict()
            if {**saved, "output_dir": None} != {**config.to_dict(), "output_dir": None}:
                raise ValueError(
                    f"{self.resume_from} was written by a different training config; "
                    f"train into another output_dir or pass --no-resume"
                )
        self.source = make_source(config.data, config.eval, config.seed, tokenizer_dir=self.resume_from)
        if self.device.type == "cuda" and getattr(self.source, "sets", None) is not None:
            self.source.sets.to(self.device)  # batches are then device slices: no host copy per step
        if self.resume_from is not None:
            import qdelta

            self.model = qdelta.load_model(str(self.resume_from), dtype=torch.float32)
        else:
            self.model = build_model(config.model, self.source.vocab_size, config.seed)
        self.model.to(self.device).train()
        o = config.optim
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, o.weight_decay, o.weight_decay_on),
            lr=lr,
            betas=tuple(o.betas),
            eps=o.eps,
            **({"capturable": True} if t.cuda_graphs else {}),
        )
        self.steps_per_epoch = t.steps // t.epochs if t.epochs else 0
        if o.schedule == "epoch_cosine":
            epoch_schedule = dict(steps_per_epoch=self.steps_per_epoch, epochs=t.epochs, min_lr_ratio=o.min_lr_ratio)
            factor = lambda s: epoch_cosine_factor(s, **epoch_schedule)  # noqa: E731
        else:
            schedule = dict(warmup_steps=o.warmup_steps, total_steps=t.steps, min_lr_ratio=o.min_lr_ratio)
            factor = lambda s: lr_factor(s, **schedule)  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.step = self.tokens = 0
        self.stopped_early = False
        if self.resume_from is not None:
            state = torch.load(self.resume_from / TRAINER_STATE, map_location="cpu", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step, self.tokens = int(state["step"]), int(state["tokens"])
            torch.set_rng_state(state["rng_cpu"])
            if self.device.type == "cuda" and state.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(state["rng_cuda"])
            log.info("resuming %s from step %d (%s)", out, self.step, self.resume_from)
        self.ddp_model = self.model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)
        self.graphs = None
        if t.cuda_graphs:  # after the resume: the graphs capture the loaded optimizer state
            from .cuda_graphs import GraphStep

            self.graphs = GraphStep(self.model, self.optimizer, self._graph_loss, self._clip(), self.device)

    # -- pieces

    def _autocast(self, cache_enabled: bool = True):
        if self.use_bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
        return nullcontext()

    def _clip(self) -> float:
        return self.config.optim.grad_clip if self.config.optim.grad_clip > 0 else float("inf")

    def _loss(self, batch) -> torch.Tensor:
        with self._autocast():
            out = self.ddp_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        logits = out.logits.float()
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX)

    def _graph_loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """:meth:`_loss` of a dense batch, as a CUDA graph captures it (no autocast weight cache)."""
        with self._autocast(cache_enabled=False):
            logits = self.model(input_ids=input_ids).logits.float()
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    def train_step(self, step: int):
        """One optimizer step on the global batch of ``step``; returns (loss, grad_norm, lr, tokens)."""
        t = self.config.train
        batch = self.source.batch(step, t.batch_size)
        rows = batch.input_ids.shape[0]  # batch_size, or fewer for the last batch of a fixed set
        if rows % self.dist.world:
            raise ValueError(
                f"step {step}: a batch of {rows} rows does not split over {self.dist.world} ranks; "
                f"use sets whose sizes leave a multiple of {self.dist.world} in their last batch"
            )
        per_rank = rows // self.dist.world
        batch = batch.rows(self.dist.rank * per_rank, (self.dist.rank + 1) * per_rank).to(self.device)
        tokens = batch.input_ids.numel() * self.dist.world
        lr_now = self.scheduler.get_last_lr()[0]
        if self.graphs is not None:  # the same step replayed; loss and grad_norm valid until the next step
            assert batch.attention_mask is None, "train.cuda_graphs is validated for dense MQAR batches"
            loss, grad_norm = self.graphs.step(batch.input_ids, batch.targets, self.scheduler.get_last_lr())
            self.scheduler.step()
            return loss, grad_norm, lr_now, tokens
        loss = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self._clip())
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), grad_norm, lr_now, tokens

    def _evaluate(self) -> Dict[str, float]:
        self.model.eval()
        with torch.no_grad(), self._autocast():
            metrics = self.source.evaluate(self.model, self.device)
        self.model.train()
        return metrics

    def _save_checkpoint(self) -> None:
        root = self.out / CHECKPOINTS
        root.mkdir(exist_ok=True)
        final = root / f"step-{self.step:07d}"
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self._save_model(tmp)
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
            "world_size": self.dist.world,
        }
        torch.save(state, tmp / TRAINER_STATE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoint_dirs(self.out)[: -max(1, self.config.train.keep_checkpoints)]:
            shutil.rmtree(old)

    def _save_model(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.source.tokenizer.save_pretrained(folder)
        (folder / "train_config.yaml").write_text(dump_config(self.config))

    def _barrier(self) -> None:
        if self.dist.world > 1:
            torch.distributed.barrier()

    # -- the loop

    def run(self) -> Dict[str, Any]:
        t = self.config.train
        log_path = self.out / LOG
        lines = _read_log(log_path, self.step) if self.dist.main else []
        if self.dist.main:
            _write_atomic(log_path, "".join(line + "\n" for line in lines))
            _write_atomic(self.out / "train_config.yaml", dump_config(self.config))
        bar = None
        if self.progress and self.dist.main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=t.steps,
                initial=self.step,
                desc=f"train {self.config.name} lr={self.lr:g}",
                unit="step",
                dynamic_ncols=True,
            )
        started = time.perf_counter()
        eval_metrics: Dict[str, float] = {}
        with open(log_path, "a") if self.dist.main else nullcontext() as log_file:
            while self.step < t.steps:
                loss, grad_norm, lr_now, batch_tokens = self.train_step(self.step)
                self.step += 1
                self.tokens += batch_tokens
                last = self.step == t.steps
                records = []
                if (t.log_every and self.step % t.log_every == 0) or last or self.step == 1:
                    loss_value = loss.clone()
                    if self.dist.world > 1:
                        torch.distributed.all_reduce(loss_value)
                        loss_value /= self.dist.world
                    records.append(
                        {
                            "step": self.step,
                            "loss": float(loss_value),
                            "lr": lr_now,
                            "grad_norm": float(grad_norm),
                            "tokens": self.tokens,
                            "elapsed_s": round(time.perf_counter() - started, 3),
                        }
                    )
                epoch_end = bool(self.steps_per_epoch) and self.step % self.steps_per_epoch == 0
                if (
                    (t.eval_every and self.step % t.eval_every == 0)
                    or (
                        t.eval_every_epochs
                        and epoch_end
                        and (self.step // self.steps_per_epoch) % t.eval_every_epochs == 0
                    )
                    or last
                ):
                    if self.dist.main:
                        eval_metrics = self._evaluate()
                        records.append({"step": self.step, "eval": eval_metrics})
                    self._barrier()
                    if not last and self._should_stop(eval_metrics):
                        self.stopped_early = True
                if self.dist.main:
                    for record in records:
                        log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if bar is not None:
                    bar.update(1)
                    if records and "loss" in records[0]:
                        bar.set_postfix(loss=f"{records[0]['loss']:.3f}")
                if self.stopped_early:
                    log.info(
                        "%s: held-out mean accuracy > %g at step %d; stopping",
                        self.out,
                        t.early_stop_accuracy,
                        self.step,
                    )
                    break
                if t.save_every and self.step % t.save_every == 0 and not last:
                    if self.dist.main:
                        self._save_checkpoint()
                    self._barrier()
        if bar is not None:
            bar.close()
        return self._finish(eval_metrics, time.perf_counter() - started)

    def _should_stop(self, eval_metrics: Dict[str, float]) -> bool:
        """Zoology's early stop: the held-out mean accuracy above ``train.early_stop_accuracy``
        (the decision of rank 0, shared with the other ranks)."""
        threshold = self.config.train.early_stop_accuracy
        if not threshold:
            return False
        stop = torch.tensor([float(self.dist.main and eval_metrics.get("mean", 0.0) > threshold)])
        if self.dist.world > 1:
            stop = stop.to(self.device)
            torch.distributed.broadcast(stop, src=0)
        return bool(stop.item())

    def _finish(self, eval_metrics: Dict[str, float], elapsed: float) -> Dict[str, Any]:
        result = {
            "name": self.config.name,
            "model_type": self.config.model.type,
            "lr": self.lr,
            "steps": self.step,
            "planned_steps": self.config.train.steps,
            "stopped_early": self.stopped_early,
            "seed": self.config.seed,
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "eval": eval_metrics or self._final_eval_from_log(),
            "final_loss": self._final_loss_from_log(),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "world_size": self.dist.world,
            "precision": "bf16" if self.use_bf16 else "fp32",
            "versions": _versions(),
            "last_session_s": round(elapsed, 3),
        }
        sets = getattr(self.source, "sets", None)
        if sets is not None:
            result["data_sha256"] = sets.digests()
        if self.dist.main:
            self._save_model(self.out)
            _write_atomic(self.out / METRICS, json.dumps(result, indent=2) + "\n")
            if self.config.train.keep_checkpoints == 0:
                shutil.rmtree(self.out / CHECKPOINTS, ignore_errors=True)
        self._barrier()
        return result

    def _log_records(self) -> List[dict]:
        path = self.out / LOG
        return [json.loads(line) for line in _read_log(path, self.config.train.steps)]

    def _final_eval_from_log(self) -> Dict[str, float]:
        evals = [r["eval"] for r in self._log_records() if "eval" in r]
        return evals[-1] if evals else {}

    def _final_loss_from_log(self) -> Optional[float]:
        losses = [r["loss"] for r in self._log_records() if "loss" in r]
        return losses[-1] if losses else None


# ----------------------------------------------------------------------------- public API


def primary_metric(metrics: Dict[str, float]) -> Optional[float]:
    """The number a learning-rate sweep maximises: ``mean`` accuracy over slices."""
    return metrics.get("mean")


def train(config: TrainConfig, *, resume: bool = True, progress: bool = True) -> Dict[str, Any]:
    """Train ``config`` (every lr of a sweep in turn); returns the result of the best lr.

    One lr writes into ``config.resolved_output_dir()``; a sweep writes each lr into
    ``<output_dir>/lr-<lr>/`` and a ``sweep.json`` naming the best (highest held-out mean
    accuracy, then lowest final loss). A run whose ``metrics.json`` exists is not retrained.
    """
    out = config.resolved_output_dir()
    results = []
    for lr in config.lrs:
        run_out = out / f"lr-{lr:g}" if len(config.lrs) > 1 else out
        single = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=lr))
        done = run_out / METRICS
        if resume and done.is_file():
            log.info("%s is already trained (%s); skipping", run_out, done)
            results.append(json.loads(done.read_text()))
            continue
        results.append(_Run(single, lr, run_out, resume=resume, progress=progress).run())
    if len(results) == 1:
        return results[0]

    def rank(r):
        score = primary_metric(r["eval"])
        loss = r["final_loss"] if r["final_loss"] is not None else float("inf")
        return (-(score if score is not None else -1.0), loss)

    best = min(results, key=rank)
    summary = {
        "best_lr": best["lr"],
        "runs": [{"lr": r["lr"], "eval": r["eval"], "final_loss": r["final_loss"]} for r in results],
    }
    if int(os.environ.get("RANK", "0")) == 0:
        _write_atomic(out / "sweep.json", json.dumps(summary, indent=2) + "\n")
    return {**best, "sweep": summary}
