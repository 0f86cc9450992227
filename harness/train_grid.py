"""Run a grid of small trainings at once on one machine (the MQAR protocol on one GPU).

A grid file is a base training config plus axes::

    base: {...a training config (see qdelta.harness.train_config)...}
    models:                      # model type -> config overrides given d_model (as Python format fields)
      qdelta: {num_heads: "{heads}", head_dim: 64, expand_v: 1}
      transformer: {num_heads: "{heads}", max_position_embeddings: 1024}
    d_models: [128, 64, 256]     # in priority order
    lrs: [1.0e-3, 3.0e-3]
    heads_per: 64                # heads = max(1, d_model // heads_per)

Jobs are ordered by priority: d_models in the given order, then learning rates, then model
types, so a wall-clock budget cuts whole (d_model, lr) cells, never the steps of a run. Each of
``--workers`` processes takes the next job, trains it to the end (same steps for every job), and
writes its run folder; jobs not started, or still running when ``--budget-s`` runs out, are
listed as cut in ``grid.json``. ``--records-tar`` packs the run records (no weights).
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import queue
import tarfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List

import yaml

log = logging.getLogger(__name__)

RECORD_FILES = ("metrics.json", "train_config.yaml", "train_log.jsonl")


def expand_grid(grid: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The job configs (plain dicts, not yet validated) of a grid, in priority order."""
    for key in ("base", "models", "d_models", "lrs"):
        if key not in grid:
            raise ValueError(f"grid: missing field {key!r}; a grid has base, models, d_models, lrs")
    heads_per = int(grid.get("heads_per", 64))
    jobs = []
    for d in grid["d_models"]:
        fields = {"d": d, "heads": max(1, d // heads_per)}
        for lr in grid["lrs"]:
            for model_type, overrides in grid["models"].items():
                if overrides is None:  # `name: null` drops a model type
                    continue
                model = {"type": model_type, "hidden_size": d, **grid["base"].get("model", {})}
                for key, value in (overrides or {}).items():
                    model[key] = int(value.format(**fields)) if isinstance(value, str) and "{" in value else value
                name = f"{model_type}-d{d}-lr{lr:g}"
                jobs.append({**grid["base"], "name": name, "model": model,
                             "optim": {**grid["base"].get("optim", {}), "lr": lr}})
    return jobs


def _worker(jobs, results, out_dir: str, index: int) -> None:
    import torch

    torch.set_num_threads(1)
    from .train import train
    from .train_config import load_config

    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            return
        run_dir = Path(out_dir) / job["name"]
        results.put(("start", job["name"], index, time.time()))
        try:
            config = load_config(data={**job, "output_dir": str(run_dir)})
            train(config, progress=False)
            results.put(("done", job["name"], index, time.time()))
        except Exception:  # one broken job must not stop the grid; the error goes into its folder
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            results.put(("error", job["name"], index, time.time()))


def _probe_worker(job, steps_per_setting: int, results) -> None:
    import torch

    torch.set_num_threads(1)
    from .train import _Run
    from .train_config import load_config

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


def probe_step_time(jobs: List[Dict[str, Any]], workers: int, steps_per_setting: int = 2) -> Dict[str, float]:
    """Mean seconds per training step (over the data settings) of the first ``workers`` jobs, all
    measured at once, so the number includes the contention of a full machine."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_probe_worker, args=(job, steps_per_setting, results), daemon=True)
             for job in jobs[:workers]]
    for p in procs:
        p.start()
    times = dict(results.get() for _ in procs)
    for p in procs:
        p.join()
    return times


def run_grid(grid: Dict[str, Any], out_dir: Path, *, workers: int, budget_s: float) -> Dict[str, Any]:
    """Run the grid's jobs on ``workers`` processes within ``budget_s`` seconds; returns the summary."""
    jobs = expand_grid(grid)
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = None
    if grid.get("auto_steps"):
        # steps from a probe, so that the first wave of jobs ends in auto_steps.wave_fraction of the budget
        auto = grid["auto_steps"]
        t0 = time.time()
        probe = probe_step_time(jobs, workers)
        slowest = max(t for t in probe.values() if t is not None)
        remaining = budget_s - (time.time() - t0)
        steps = int(auto.get("wave_fraction", 0.4) * remaining / slowest) // 100 * 100
        steps = max(int(auto.get("min_steps", 100)), min(int(auto.get("max_steps", 5000)), steps))
        budget_s = remaining
        log.info("probe: %s; slowest %.3f s/step -> %d steps per run", probe, slowest, steps)
        for job in jobs:
            job["train"] = {**job.get("train", {}), "steps": steps}
    ctx = mp.get_context("spawn")
    job_queue, results = ctx.Queue(), ctx.Queue()
    for job in jobs:
        job_queue.put(job)
    started = time.time()
    procs = [ctx.Process(target=_worker, args=(job_queue, results, str(out_dir), i), daemon=True)
             for i in range(workers)]
    for p in procs:
        p.start()
    status: Dict[str, Dict[str, Any]] = {job["name"]: {"state": "not started"} for job in jobs}
    while any(p.is_alive() for p in procs) and time.time() - started < budget_s:
        try:
            kind, name, worker, when = results.get(timeout=1.0)
        except queue.Empty:
            continue
        status[name] = {"state": {"start": "running", "done": "done", "error": "error"}[kind], "worker": worker,
                        "at_s": round(when - started, 1)}
        log.info("%s %s (worker %d, %.0f s)", kind, name, worker, when - started)
    while True:  # drain messages sent just before the deadline
        try:
            kind, name, worker, when = results.get_nowait()
        except queue.Empty:
            break
        status[name] = {"state": {"start": "running", "done": "done", "error": "error"}[kind], "worker": worker,
                        "at_s": round(when - started, 1)}
    for p in procs:
        if p.is_alive():
            p.terminate()
    for name, s in status.items():
        if s["state"] in ("not started", "running"):
            s["state"] = "cut: " + s["state"]
    summary = {"probe_s_per_step": probe, "steps": jobs[0].get("train", {}).get("steps"),
               "jobs": len(jobs), "done": sum(s["state"] == "done" for s in status.values()),
               "wall_s": round(time.time() - started, 1), "workers": workers, "budget_s": budget_s,
               "status": status}
    (out_dir / "grid.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def pack_records(out_dir: Path, tar_path: Path) -> None:
    """Tar the run records (and errors) of every run folder, never the weights."""
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(out_dir / "grid.json", arcname="grid.json")
        for run in sorted(p for p in out_dir.iterdir() if p.is_dir()):
            for name in RECORD_FILES + ("error.txt",):
                if (run / name).is_file():
                    tar.add(run / name, arcname=f"runs/{run.name}/{name}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="grid YAML file")
    parser.add_argument("out_dir")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--records-tar", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a grid field, e.g. base.train.steps=2000")
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
    summary = run_grid(grid, Path(args.out_dir), workers=args.workers, budget_s=args.budget_s)
    print(json.dumps({k: v for k, v in summary.items() if k != "status"}))
    if args.records_tar:
        pack_records(Path(args.out_dir), Path(args.records_tar))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
