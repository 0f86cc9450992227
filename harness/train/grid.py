"""Run a grid of small trainings at once on one machine (the MQAR protocol on one or more GPUs).

A grid file is a base training config plus axes::

    base: {...a training config (see qdelta.harness.train.config)...}
    models:                      # model type -> config overrides given d_model (as Python format fields)
      qdelta: {num_heads: "{heads}", head_dim: 64, expand_v: 1}
      transformer: {num_heads: "{heads}", max_position_embeddings: 1024}
    d_models: [128, 64, 256]     # in priority order
    lrs: [1.0e-3, 3.0e-3]
    heads_per: 64                # heads = max(1, d_model // heads_per)
    num_heads: 2                 # optional: a fixed head count instead ({head_dim} = d_model // heads)
    seeds: [0, 1, 2]             # optional: replicate every job once per training seed

Jobs are ordered by priority: d_models in the given order, then learning rates, then model
types, so a wall-clock budget cuts whole (d_model, lr) cells, never the steps of a run. With
``seeds`` (two or more distinct integers) the seed is the outermost axis: all of the first
seed's jobs in that order, then the second seed's, and so on, so a budget cuts whole replicates,
the last seed first. Each job's base ``seed`` is set and its name gets ``-s{seed}``
(``qdelta-d128-lr0.001-s1``). Without ``seeds``, names and order are as above and the base
``seed`` is used; a one-seed list sets the base ``seed`` and keeps the names unchanged. Each of
``--workers`` processes takes the next job, trains it to the end (same steps for every job), and
writes its run folder; jobs not started, or still running when ``--budget-s`` runs out, are
listed as cut in ``grid.json``. ``--records-tar`` packs the run records (no weights), the
partial ``train_log.jsonl`` of a cut run included.

Fixed MQAR sets (``data.train_sets``, zoology's protocol) are generated once before the workers
start, several sets at once, into the cache every run then reads
(:func:`qdelta.harness.train.mqar_sets.prepare`); that time comes out of ``--budget-s``. Started
again on the same ``out_dir``, a grid skips finished runs (their ``metrics.json``) and resumes cut
ones from their last checkpoint (``train.save_every``), so a grid too long for one call finishes
over several.

With ``--gpus N`` (N >= 2; default: every visible GPU) worker ``i`` (and probe ``i``) runs on GPU
``i % N``: it is started with ``CUDA_VISIBLE_DEVICES`` naming that one GPU, so ``train.device:
auto`` lands there. N = 0 or 1 leaves the environment as it is. ``grid.json`` records ``gpus``
and, per job, the worker's ``gpu`` and the ``CUDA_VISIBLE_DEVICES`` the worker saw.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import queue
import tarfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import yaml

from ..eval.records import atomic_write_text

log = logging.getLogger(__name__)

RECORD_FILES = ("metrics.json", "train_config.yaml", "train_log.jsonl")


def grid_seeds(grid: Dict[str, Any]) -> Optional[List[int]]:
    """The grid's ``seeds`` field checked: None where it is absent, else a non-empty list of
    distinct integers (in the given order)."""
    if "seeds" not in grid or grid["seeds"] is None:
        return None
    seeds = grid["seeds"]
    fix = "give a non-empty list of distinct integer seeds, e.g. seeds: [0, 1, 2], or leave the field out"
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ValueError(f"grid: field 'seeds' expected a non-empty list of integers, got {seeds!r}; {fix}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int)]
    if bad:
        raise ValueError(f"grid: field 'seeds' expected integers, got {seeds!r} (not integers: {bad!r}); {fix}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"grid: field 'seeds' has duplicates {repeated!r} in {seeds!r}; {fix}")
    return list(seeds)


def expand_grid(grid: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The job configs (plain dicts, not yet validated) of a grid, in priority order (seed
    outermost where ``seeds`` lists two or more; see the module docstring)."""
    for key in ("base", "models", "d_models", "lrs"):
        if key not in grid:
            raise ValueError(f"grid: missing field {key!r}; a grid has base, models, d_models, lrs")
    seeds = grid_seeds(grid)
    if seeds is None:
        return _expand_one_seed(grid, grid["base"], suffix="")
    if len(seeds) == 1:
        return _expand_one_seed(grid, {**grid["base"], "seed": seeds[0]}, suffix="")
    jobs = []
    for seed in seeds:
        jobs += _expand_one_seed(grid, {**grid["base"], "seed": seed}, suffix=f"-s{seed}")
    return jobs


def _expand_one_seed(grid: Dict[str, Any], base: Dict[str, Any], suffix: str) -> List[Dict[str, Any]]:
    """The jobs of one replicate: d_models, then lrs, then model types; names end in ``suffix``."""
    heads_per = int(grid.get("heads_per", 64))
    jobs = []
    for d in grid["d_models"]:
        heads = int(grid["num_heads"]) if grid.get("num_heads") else max(1, d // heads_per)
        fields = {"d": d, "heads": heads, "head_dim": d // heads}
        for lr in grid["lrs"]:
            for model_type, overrides in grid["models"].items():
                if overrides is None:  # `name: null` drops a model type
                    continue
                model = {"type": model_type, "hidden_size": d, **base.get("model", {})}
                for key, value in (overrides or {}).items():
                    model[key] = int(value.format(**fields)) if isinstance(value, str) and "{" in value else value
                name = f"{model_type}-d{d}-lr{lr:g}{suffix}"
                jobs.append({**base, "name": name, "model": model, "optim": {**base.get("optim", {}), "lr": lr}})
    return jobs


def gpu_for_worker(index: int, gpus: int) -> Optional[int]:
    """The GPU (0 .. gpus-1) that worker or probe ``index`` runs on; None where the grid leaves
    device choice alone (gpus 0 or 1)."""
    if gpus < 0:
        raise ValueError(f"gpus: expected >= 0, got {gpus}; pass 0 for CPU or the number of GPUs to use")
    return index % gpus if gpus >= 2 else None


def visible_devices_for(gpu: Optional[int], parent: Optional[str] = None) -> Optional[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value that puts a worker on grid GPU ``gpu`` (None: unchanged).

    Where the parent already restricts the GPUs (``parent`` = its CUDA_VISIBLE_DEVICES, e.g.
    "2,3"), grid GPU i is the i-th of those, so the grid never escapes the parent's choice.
    """
    if gpu is None:
        return None
    if parent:
        entries = [e.strip() for e in parent.split(",") if e.strip()]
        if gpu >= len(entries):
            raise ValueError(
                f"--gpus: GPU {gpu} asked for, but CUDA_VISIBLE_DEVICES={parent!r} names only "
                f"{len(entries)}; pass --gpus {len(entries)} or less"
            )
        return entries[gpu]
    return str(gpu)


@contextlib.contextmanager
def _child_environment(gpu: Optional[int]) -> Iterator[None]:
    """Set CUDA_VISIBLE_DEVICES while a spawn child starts: the child inherits it from birth, so it
    is in place before the child imports torch (importing this module imports torch)."""
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    value = visible_devices_for(gpu, parent)
    if value is None:
        yield
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = value
    try:
        yield
    finally:
        if parent is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = parent


def _start(ctx, target, args, gpu: Optional[int]):
    proc = ctx.Process(target=target, args=args, daemon=True)
    with _child_environment(gpu):
        proc.start()
    return proc


def _worker(jobs, results, out_dir: str, index: int, gpu: Optional[int] = None) -> None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # set by the parent at spawn (see _start)
    import torch

    torch.set_num_threads(1)
    from .config import load_config
    from .loop import train

    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            return
        run_dir = Path(out_dir) / job["name"]
        where = {"gpu": gpu, "cuda_visible_devices": visible}
        results.put(("start", job["name"], index, time.time(), where))
        try:
            config = load_config(data={**job, "output_dir": str(run_dir)})
            train(config, progress=False)
            results.put(("done", job["name"], index, time.time(), where))
        except Exception:  # one broken job must not stop the grid; the error goes into its folder
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            results.put(("error", job["name"], index, time.time(), where))


def _probe_worker(job, steps_per_setting: int, results) -> None:
    import torch

    torch.set_num_threads(1)
    from .config import load_config
    from .loop import _Run

    try:
        config = load_config(data={**job, "output_dir": None})
        run = _Run(config, config.lrs[0], Path("/nonexistent-probe"), resume=False, progress=False, write=False)
        per_setting = []
        for i in range(len(config.data.configs)):
            times = []
            for repeat in range(steps_per_setting + 1):  # the first call of each shape warms up
                if run.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                run.train_step(i + repeat * len(config.data.configs))
                if run.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            per_setting.append(sorted(times[1:])[len(times[1:]) // 2])
        results.put((job["name"], sum(per_setting) / len(per_setting)))
    except Exception:
        results.put((job["name"], None))
        log.error("probe of %s failed:\n%s", job["name"], traceback.format_exc())


def probe_step_time(
    jobs: List[Dict[str, Any]], workers: int, steps_per_setting: int = 2, gpus: int = 0
) -> Dict[str, float]:
    """Mean seconds per training step (over the data settings) of the first ``workers`` jobs, all
    measured at once (probe i on GPU i % gpus, as the workers), so the number includes the
    contention of a full machine."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        _start(ctx, _probe_worker, (job, steps_per_setting, results), gpu_for_worker(i, gpus))
        for i, job in enumerate(jobs[:workers])
    ]
    times = dict(results.get() for _ in procs)
    for p in procs:
        p.join()
    return times


def _record(status: Dict[str, Dict[str, Any]], message, started: float) -> None:
    kind, name, worker, when, where = message
    entry = status[name]
    if kind == "start":
        entry["started_s"] = round(when - started, 1)
    entry.update(
        state={"start": "running", "done": "done", "error": "error"}[kind],
        worker=worker,
        at_s=round(when - started, 1),
        **where,
    )


def run_grid(grid: Dict[str, Any], out_dir: Path, *, workers: int, budget_s: float, gpus: int = 0) -> Dict[str, Any]:
    """Run the grid's jobs on ``workers`` processes within ``budget_s`` seconds, worker i on GPU
    i % gpus where gpus >= 2; returns the summary (also written to ``out_dir/grid.json``)."""
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    gpu_for_worker(0, gpus)  # checks gpus >= 0
    for i in range(min(workers, gpus)):  # fail here, not in a child, on a bad --gpus
        visible_devices_for(gpu_for_worker(i, gpus), os.environ.get("CUDA_VISIBLE_DEVICES"))
    jobs = expand_grid(grid)
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = None
    if grid.get("auto_steps") and grid["base"].get("data", {}).get("train_sets"):
        raise ValueError(
            "grid: auto_steps sizes step counts, but base.data.train_sets trains by epochs; remove auto_steps"
        )
    if grid.get("auto_steps"):
        # steps from a probe, so that the first wave of jobs ends in auto_steps.wave_fraction of the budget
        auto = grid["auto_steps"]
        t0 = time.time()
        probe = probe_step_time(jobs, workers, gpus=gpus)
        slowest = max(t for t in probe.values() if t is not None)
        remaining = budget_s - (time.time() - t0)
        steps = int(auto.get("wave_fraction", 0.4) * remaining / slowest) // 100 * 100
        steps = max(int(auto.get("min_steps", 100)), min(int(auto.get("max_steps", 5000)), steps))
        budget_s = remaining
        log.info("probe: %s; slowest %.3f s/step -> %d steps per run", probe, slowest, steps)
        for job in jobs:
            job["train"] = {**job.get("train", {}), "steps": steps}
    from .config import load_config
    from .mqar_sets import prepare

    prepared_at = time.time()
    configs = []
    for job in jobs:
        try:
            configs.append(load_config(data={**job, "output_dir": None}))
        except (ValueError, TypeError):
            pass  # its worker writes the error into the job's folder
    sets = prepare(configs, processes=workers)
    if sets:  # generated once, in parallel, before any worker starts; the budget pays for it
        budget_s -= time.time() - prepared_at
        log.info("fixed MQAR sets: %d ready in the cache (%.0f s)", sets, time.time() - prepared_at)
    ctx = mp.get_context("spawn")
    job_queue, results = ctx.Queue(), ctx.Queue()
    for job in jobs:
        job_queue.put(job)
    started = time.time()
    procs = [
        _start(ctx, _worker, (job_queue, results, str(out_dir), i, gpu_for_worker(i, gpus)), gpu_for_worker(i, gpus))
        for i in range(workers)
    ]
    status: Dict[str, Dict[str, Any]] = {job["name"]: {"state": "not started"} for job in jobs}
    while any(p.is_alive() for p in procs) and time.time() - started < budget_s:
        try:
            message = results.get(timeout=1.0)
        except queue.Empty:
            continue
        _record(status, message, started)
        kind, name, worker, when, where = message
        log.info("%s %s (worker %d, gpu %s, %.0f s)", kind, name, worker, where["gpu"], when - started)
    while True:  # drain messages sent just before the deadline
        try:
            _record(status, results.get_nowait(), started)
        except queue.Empty:
            break
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.time() + 15
    for p in procs:  # a cut run's log is flushed line by line; wait for the processes to be gone
        p.join(timeout=max(0.1, deadline - time.time()))
    for name, s in status.items():
        if s["state"] in ("not started", "running"):
            s["state"] = "cut: " + s["state"]
    summary = {
        "probe_s_per_step": probe,
        "steps": jobs[0].get("train", {}).get("steps"),
        "jobs": len(jobs),
        "done": sum(s["state"] == "done" for s in status.values()),
        "wall_s": round(time.time() - started, 1),
        "workers": workers,
        "budget_s": budget_s,
        "gpus": gpus,
        "status": status,
    }
    atomic_write_text(out_dir / "grid.json", json.dumps(summary, indent=2) + "\n")
    return summary


def pack_records(out_dir: Path, tar_path: Path) -> None:
    """Tar the run records (and errors) of every run folder, never the weights; a run cut by the
    budget contributes what it has (its config and the partial ``train_log.jsonl``)."""
    with tarfile.open(tar_path, "w:gz") as tar:
        if (out_dir / "grid.json").is_file():
            tar.add(out_dir / "grid.json", arcname="grid.json")
        for run in sorted(p for p in out_dir.iterdir() if p.is_dir()):
            for name in RECORD_FILES + ("error.txt",):
                if (run / name).is_file():
                    tar.add(run / name, arcname=f"runs/{run.name}/{name}")


def default_gpus() -> int:
    """Every visible GPU, or 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="grid YAML file")
    parser.add_argument("out_dir")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--records-tar", default=None)
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="spread workers over this many GPUs, worker i on GPU i %% N (default: every "
        "visible GPU; 0 or 1 leaves CUDA_VISIBLE_DEVICES alone)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a grid field, e.g. base.train.steps=2000",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    grid = yaml.safe_load(Path(args.grid).read_text())
    for assignment in args.overrides:
        key, raw = assignment.split("=", 1)
        node = grid
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    visible = default_gpus()
    gpus = visible if args.gpus is None else args.gpus
    if gpus > max(visible, 1):
        raise ValueError(
            f"--gpus: {gpus} asked for, but {visible} GPU(s) are visible; pass --gpus {visible} "
            "or leave it out to use every visible GPU"
        )
    summary = run_grid(grid, Path(args.out_dir), workers=args.workers, budget_s=args.budget_s, gpus=gpus)
    print(json.dumps({k: v for k, v in summary.items() if k != "status"}))
    if args.records_tar:
        pack_records(Path(args.out_dir), Path(args.records_tar))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
