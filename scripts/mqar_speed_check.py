"""GPU self-check and throughput of the MQAR training step, eager and as CUDA graphs (train.cuda_graphs).

Run from the repository root on one CUDA GPU (docs/mqar.md, "Plan for one H200")::

    python scripts/mqar_speed_check.py --out $OUT/mqar_speed.jsonl            # about 240 s
    python scripts/mqar_speed_check.py --out speed.jsonl --budget-s 480 --runs 1,4,8 --skip-check

(a) Agreement: the d_model-128 Gated DeltaNet and Q-Delta zoology models (configs/mqar_zoology.yaml,
lr 1e-3) train 50 steps (two epochs of small fixed sets at L = 64, 128, 256, each with a short last
batch: all six graph shapes, one lr change) from the same seed on the same batches: eager twice, as
graphs, and as graphs stopped at step 25, checkpointed and resumed. Prints the largest differences of
the loss curves and of the final weights; exits 1 if a curve is not finite, if graphs and eager differ by
more than 1e-2 relative in the loss, or if the resumed weights differ from the uninterrupted ones by more
than 1e-2 relative (the resume is expected to be exact; the line says whether it is).

(b) Throughput: N = 1, 2, 4, 8 separate processes train on the same GPU at once (as the grid's
``--workers N --gpus 1`` does), each in turn eager and graphed at batch 256, L = 64 and L = 256; every
phase starts together (a barrier), steps for a fixed window and counts tokens. The window is what the
budget leaves (``--budget-s``), at most 15 s. One JSON line per (mode, L, N) to ``--out``, then a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

ZOOLOGY = Path(__file__).resolve().parents[1] / "configs" / "mqar_zoology.yaml"
BATCH = 256
# two epochs of 25 batches: 10 + a short one at L 64, 6 + a short one at 128 and at 256
CHECK_SETS = [[64, 4, 10 * BATCH + 160], [128, 8, 6 * BATCH + 32], [256, 16, 6 * BATCH + 32]]
CHECK_EPOCHS, RESUME_AT = 2, 25
PHASE_OVERHEAD_S, START_OVERHEAD_S = 5.0, 20.0  # per phase (model, compile, capture) and per process group


def zoology_config(model: str, d_model: int, lr: float, train_sets, epochs: int, cache_dir, cuda_graphs: bool):
    """The zoology grid's job for (model, d_model, lr) with other fixed sets and no evaluation."""
    from qdelta.harness.train.config import load_config
    from qdelta.harness.train.grid import expand_grid

    grid = {**yaml.safe_load(ZOOLOGY.read_text()), "d_models": [d_model], "lrs": [lr], "seeds": [0]}
    (job,) = [j for j in expand_grid(grid) if j["model"]["type"] == model]
    job["data"] = {**job["data"], "train_sets": train_sets, "test_sets": [], "cache_dir": str(cache_dir)}
    job["train"] = {
        **job["train"],
        "epochs": epochs,
        "device": "cuda",
        "cuda_graphs": cuda_graphs,
        "eval_every_epochs": 0,
        "early_stop_accuracy": 0.0,
        "save_every": 0,
    }
    return load_config(data={**job, "output_dir": None})


def _new_run(config, out: Path, *, resume: bool = False, write: bool = False):
    from qdelta.harness.train.loop import _Run

    return _Run(config, config.lrs[0], out, resume=resume, progress=False, write=write)


def _train(run, first: int, last: int):
    """Steps first .. last-1; returns the losses (CPU, fp32) — read once at the end, no sync per step."""
    losses = [run.train_step(step)[0].clone() for step in range(first, last)]
    run.step = last
    return torch.stack(losses).float().cpu()


def _weights(run):
    return [p.detach().float().cpu() for p in run.model.parameters()]


def _free() -> None:
    """Release a deleted run's GPU memory (its graphs and the run refer to each other: a cycle)."""
    gc.collect()
    torch.cuda.empty_cache()


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def check(model: str, d_model: int, cache_dir: Path, work: Path) -> dict:
    """Part (a) for one model: eager twice, graphs, graphs resumed; the differences."""
    eager_cfg, graph_cfg = (
        zoology_config(model, d_model, 1e-3, CHECK_SETS, CHECK_EPOCHS, cache_dir, graphs) for graphs in (False, True)
    )
    steps = graph_cfg.train.steps
    t0 = time.perf_counter()
    curves, weights = {}, {}
    for name, config in (("eager", eager_cfg), ("eager_again", eager_cfg), ("graphs", graph_cfg)):
        run = _new_run(config, work / name)
        curves[name], weights[name] = _train(run, 0, steps), _weights(run)
        del run
        _free()
    out = work / f"{model}-resumed"
    run = _new_run(graph_cfg, out, write=True)
    first = _train(run, 0, RESUME_AT)
    run._save_checkpoint()
    del run
    _free()
    run = _new_run(graph_cfg, out, resume=True, write=True)
    assert run.step == RESUME_AT, run.step
    curves["resumed"] = torch.cat([first, _train(run, RESUME_AT, steps)])
    weights["resumed"] = _weights(run)
    del run
    _free()
    scale_loss = float(curves["eager"].abs().max())
    scale_w = max(float(w.abs().max()) for w in weights["eager"])
    result = {
        "check": "agreement",
        "model": model,
        "d_model": d_model,
        "steps": steps,
        "finite": all(bool(torch.isfinite(c).all()) for c in curves.values()),
        "loss_first_last": [float(curves["eager"][0]), float(curves["eager"][-1])],
        "eager_rerun_loss_max_abs": float((curves["eager"] - curves["eager_again"]).abs().max()),
        "eager_rerun_weight_max_abs": _max_diff(weights["eager"], weights["eager_again"]),
        "graphs_loss_max_abs": float((curves["graphs"] - curves["eager"]).abs().max()),
        "graphs_weight_max_abs": _max_diff(weights["graphs"], weights["eager"]),
        "resumed_loss_max_abs": float((curves["resumed"] - curves["graphs"]).abs().max()),
        "resumed_weight_max_abs": _max_diff(weights["resumed"], weights["graphs"]),
        "weight_max_abs": scale_w,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    result["graphs_loss_rel"] = result["graphs_loss_max_abs"] / scale_loss
    result["resumed_weight_rel"] = result["resumed_weight_max_abs"] / scale_w
    result["resume_exact"] = result["resumed_weight_max_abs"] == 0.0
    result["ok"] = result["finite"] and result["graphs_loss_rel"] <= 1e-2 and result["resumed_weight_rel"] <= 1e-2
    return result


def _speed_worker(index, phases, barrier, results, model, d_model, cache_dir, measure_s) -> None:
    torch.set_num_threads(1)
    try:
        for mode, L in phases:
            config = zoology_config(model, d_model, 1e-3, _speed_sets(L), 10_000, cache_dir, mode == "graphs")
            run = _new_run(config, Path("/nonexistent-speed"))
            for step in range(3):  # compile, build tables, capture
                run.train_step(step)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            barrier.wait(timeout=600)
            t0 = time.perf_counter()
            step = 3
            while time.perf_counter() - t0 < measure_s:
                run.train_step(step)
                step += 1
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            steps = step - 3
            memory = torch.cuda.max_memory_allocated() / 2**30
            results.put((index, mode, L, steps, elapsed, steps * BATCH * L / elapsed, memory, None))
            del run
            _free()
            barrier.wait(timeout=600)
    except Exception:
        barrier.abort()
        results.put((index, None, None, 0, 0.0, 0.0, 0.0, traceback.format_exc()))


def _collect(results, procs, count: int) -> list:
    """``count`` messages from the workers; a worker that dies without one (a crash) ends the wait."""
    import queue

    got = []
    while len(got) < count:
        try:
            got.append(results.get(timeout=5))
        except queue.Empty:
            codes = [p.exitcode for p in procs]
            if any(c not in (None, 0) for c in codes) or all(c is not None for c in codes):
                raise RuntimeError(f"speed workers exited (exit codes {codes}) after {len(got)} of {count} results")
    for p in procs:
        p.join(timeout=60)
    return got


def _speed_sets(L: int):
    return [[L, max(4, L // 16), 16 * BATCH]]  # 16 full batches, cycled


def speed(model, d_model, runs, lengths, cache_dir, measure_s, out_file) -> list:
    ctx = mp.get_context("spawn")
    phases = [(mode, L) for L in lengths for mode in ("eager", "graphs")]
    rows = []
    for n in runs:
        barrier, results = ctx.Barrier(n), ctx.Queue()
        args = (phases, barrier, results, model, d_model, str(cache_dir), measure_s)
        procs = [ctx.Process(target=_speed_worker, args=(i, *args), daemon=True) for i in range(n)]
        for p in procs:
            p.start()
        got = _collect(results, procs, n * len(phases))
        errors = [g[-1] for g in got if g[-1] is not None]
        if errors:
            raise RuntimeError(f"a speed worker failed (N = {n}):\n{errors[0]}")
        for mode, L in phases:
            mine = [g for g in got if g[1] == mode and g[2] == L]
            per_run = [g[5] for g in mine]
            row = {
                "check": "throughput",
                "model": model,
                "d_model": d_model,
                "batch": BATCH,
                "mode": mode,
                "L": L,
                "N": n,
                "tokens_per_s_per_run": [round(x) for x in per_run],
                "tokens_per_s_per_run_mean": round(sum(per_run) / n),
                "tokens_per_s_per_gpu": round(sum(per_run)),
                "steps_per_run": [g[3] for g in mine],
                "window_s": round(max(g[4] for g in mine), 2),
                "max_memory_gib_per_run": round(max(g[6] for g in mine), 2),
            }
            rows.append(row)
            out_file.write(json.dumps(row) + "\n")
            out_file.flush()
            print(
                f"  N={n} {mode:6s} L={L}: {row['tokens_per_s_per_run_mean'] / 1e6:.3f}M tokens/s per run, "
                f"{row['tokens_per_s_per_gpu'] / 1e6:.3f}M per GPU",
                flush=True,
            )
    return rows


def table(rows) -> str:
    lines = [
        f"{'L':>5} {'N':>3} {'eager/run':>11} {'graphs/run':>11} {'eager/GPU':>11} {'graphs/GPU':>11} {'speed-up':>8}"
    ]
    by = {(r["mode"], r["L"], r["N"]): r for r in rows}
    for L, n in sorted({(r["L"], r["N"]) for r in rows}):
        e, g = by.get(("eager", L, n)), by.get(("graphs", L, n))
        if e is None or g is None:
            continue
        lines.append(
            f"{L:>5} {n:>3} {e['tokens_per_s_per_run_mean'] / 1e6:>10.3f}M {g['tokens_per_s_per_run_mean'] / 1e6:>10.3f}M "
            f"{e['tokens_per_s_per_gpu'] / 1e6:>10.3f}M {g['tokens_per_s_per_gpu'] / 1e6:>10.3f}M "
            f"{g['tokens_per_s_per_gpu'] / e['tokens_per_s_per_gpu']:>7.2f}x"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON lines file (one line per check and per measurement)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="total wall time to plan for (default 240)")
    parser.add_argument("--runs", default="1,2,4,8", help="concurrent processes to measure (default 1,2,4,8)")
    parser.add_argument("--lengths", default="64,256", help="sequence lengths to measure (default 64,256)")
    parser.add_argument("--model", default="qdelta", help="model type of the throughput runs (default qdelta)")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--skip-check", action="store_true", help="only the throughput part (b)")
    parser.add_argument("--cache-dir", default=None, help="MQAR set cache (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("mqar_speed_check: needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    started = time.perf_counter()
    runs = [int(x) for x in args.runs.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ok = True
    with tempfile.TemporaryDirectory() as tmp, open(out_path, "w") as out_file:
        cache_dir = Path(args.cache_dir or Path(tmp) / "cache")
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        if not args.skip_check:
            for model in ("gated_deltanet", "qdelta"):
                result = check(model, args.d_model, cache_dir, Path(tmp) / "check")
                ok = ok and result["ok"]
                out_file.write(json.dumps(result) + "\n")
                out_file.flush()
                print(
                    f"(a) {model} d{args.d_model}, {result['steps']} steps ({result['seconds']} s): loss "
                    f"{result['loss_first_last'][0]:.3f} -> {result['loss_first_last'][1]:.3f}; graphs vs eager: "
                    f"loss max abs {result['graphs_loss_max_abs']:.2e} (rel {result['graphs_loss_rel']:.2e}), "
                    f"weights {result['graphs_weight_max_abs']:.2e} (max |w| {result['weight_max_abs']:.2f}); "
                    f"eager vs eager: loss {result['eager_rerun_loss_max_abs']:.2e}, weights "
                    f"{result['eager_rerun_weight_max_abs']:.2e}; graphs resumed at {RESUME_AT} vs uninterrupted: "
                    f"weights {result['resumed_weight_max_abs']:.2e} (exact: {result['resume_exact']}); "
                    f"{'ok' if result['ok'] else 'DIVERGED'}",
                    flush=True,
                )
        from qdelta.harness.train.mqar_sets import prepare

        prepare(
            [zoology_config(args.model, args.d_model, 1e-3, _speed_sets(L), 1, cache_dir, False) for L in lengths], 2
        )
        left = args.budget_s - (time.perf_counter() - started)
        phases = 2 * len(lengths)
        measure_s = (left - len(runs) * (START_OVERHEAD_S + phases * PHASE_OVERHEAD_S)) / (len(runs) * phases)
        measure_s = min(15.0, max(2.0, math.floor(measure_s * 10) / 10))
        print(f"(b) {args.model} d{args.d_model}, batch {BATCH}: {measure_s:.1f} s per phase", flush=True)
        rows = speed(args.model, args.d_model, runs, lengths, cache_dir, measure_s, out_file)
    print(table(rows))
    print(f"total {time.perf_counter() - started:.0f} s; {'all checks agree' if ok else 'A CHECK DIVERGED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
