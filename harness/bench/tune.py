"""Try launch settings of the chunk kernels on a GPU: one setting changed at a time, forward and
forward+backward timed (median of ``triton.testing.do_bench``), bf16, 32,768 tokens.

    python -m qdelta.harness.bench.tune [--configs 340M 1.3B] [--kernels state ...] [--trials JSON]
        [--T 2048] [--repeat N] [--out tune.json]

Each kernel's trials run in a fresh process (a launch that faults leaves the CUDA context
unusable), against that process's own baseline (best of three). Each trial changes single values
of the launch.py table, in-process (``launch.overridden``) and only while it is timed.
Prints one line per trial and, last, the best setting per kernel (forward kernels judged by the
forward time, backward kernels by forward+backward, the decoding kernel ``recurrent`` by its paper
variant's kernel time, its pair reading (paper, official) in ms) and the chunk time with all the best ones together.
The chosen values go into ``launch.py`` by hand, with the numbers in NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from triton.testing import do_bench

from qdelta.harness.bench.kernels import HEAD_CONFIGS, batch_size
from qdelta.kernels.triton import launch

TRIALS = {  # changes from the launch.py table; risky ones (faults, out of shared memory) last
    "intra": [{"BK": 32}, {"num_warps": 4}, {"BK": 32, "num_warps": 4}],
    "state": [{"BV": 32}, {"num_stages": 3}, {"num_warps": 4}, {"num_warps": 8}],
    "output": [{"BK": 32}, {"BV": 64}, {"num_warps": 4}, {"num_stages": 3}],
    "reverse": [{"num_stages": 2}, {"num_warps": 4}, {"num_warps": 8}, {"BV": 128, "num_warps": 8}],
    "intra_bwd": [{"num_warps": 8}, {"BV": 32}, {"num_stages": 1}],
    "kq_bwd": [{"BK": 32}, {"num_warps": 8}, {"BV": 32}, {"LOWP": False}, {"BK": 32, "BV": 32, "LOWP": False}],
    # decoding: judged by the paper variant's kernel time (a 64-sequence step), official beside it; the
    # default V tile is 64 columns at K <= 128 and 32 above, so one of BV 32 / 64 repeats the baseline
    "recurrent": [{"BV": 16}, {"BV": 32}, {"BV": 64}, {"num_warps": 2}, {"num_warps": 8}],
}
FORWARD_KERNELS = ("intra", "state", "output", "recurrent")


def _inputs(T, H, K, V, B):
    """The benchmark's inputs (``qdelta bench kernels``), leaves needing gradients, and an output gradient."""
    from qdelta.harness.bench.kernels import _inputs as bench_inputs

    leaves = bench_inputs(B, T, H, K, V, requires_grad=True)
    return leaves, torch.randn(B, T, H, V, device="cuda").bfloat16()


def time_call(leaves, do):
    from qdelta.kernels import chunk_qdelta

    with torch.no_grad():
        fwd = do_bench(lambda: chunk_qdelta(*leaves), warmup=25, rep=100, return_mode="median")
    fwdbwd = do_bench(
        lambda: chunk_qdelta(*leaves)[0].backward(do), warmup=25, rep=100, return_mode="median", grad_to_none=leaves
    )
    return fwd, fwdbwd


def time_decode(name):
    """Kernel time (ms) of one decoding step of 64 sequences: paper, official."""
    from qdelta.harness.bench.kernels import time_decode as bench_decode

    return tuple(bench_decode(name, variant, 1.0).kernel_us / 1e3 for variant in ("paper", "official"))


T_LEN = 2048  # --T: sequence length, batch_size(T) sequences (long T: few for the sequential passes)
REPEAT = 1  # --repeat: each trial timed this many times, the best kept (the 340M timings spread ~10 %)


def trial(leaves, do, overrides, decode_config=None):
    try:
        with launch.overridden(overrides):
            runs = [time_decode(decode_config) if decode_config else time_call(leaves, do) for _ in range(REPEAT)]
        return tuple(min(r[i] for r in runs) for i in range(2))
    except Exception as e:  # e.g. out of shared memory: report and go on
        return f"{type(e).__name__}: {str(e)[:120]}"


def run_group(name: str, kernel: str) -> dict:
    """Baseline (best of 3) and every trial of one kernel at one head config, in this process."""
    H, K, V = HEAD_CONFIGS[name]
    decode = name if kernel == "recurrent" else None
    leaves, do = (None, None) if decode else _inputs(T_LEN, H, K, V, batch_size(T_LEN))
    runs = [trial(leaves, do, {}, decode) for _ in range(3)]
    ok = [r for r in runs if not isinstance(r, str)]
    base = (min(r[0] for r in ok), min(r[1] for r in ok)) if ok else runs[0]
    rows = []
    for o in [] if isinstance(base, str) else TRIALS.get(kernel, []):
        res = trial(leaves, do, {kernel: o}, decode)
        rows.append({"overrides": o, "result": res})
        if isinstance(res, str) and "illegal" in res:
            break  # the CUDA context is gone; the driver starts a fresh process for the next group
    return {"base": base, "trials": rows}


def _pick(group: dict, kernel: str):
    col = 0 if kernel in FORWARD_KERNELS else 1
    if isinstance(group["base"], str):
        return None
    best_t, best_o = group["base"][col], None
    for row in group["trials"]:
        res = row["result"]
        if not isinstance(res, str) and res[col] < 0.95 * best_t:  # 5 %: above the run-to-run spread
            best_t, best_o = res[col], row["overrides"]
    return best_o


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(HEAD_CONFIGS))
    parser.add_argument("--kernels", nargs="+", default=list(TRIALS))
    parser.add_argument(
        "--trials", default=None, help="JSON {kernel: [overrides, ...]} replacing the built-in trials of those kernels"
    )
    parser.add_argument("--T", type=int, default=2048, help="sequence length; must divide 32,768 tokens")
    parser.add_argument("--repeat", type=int, default=1, help="time each trial this many times, keep the best")
    parser.add_argument("--out", default=None)
    parser.add_argument("--group", nargs=2, metavar=("CONFIG", "KERNEL"), help=argparse.SUPPRESS)
    parser.add_argument("--combined", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global REPEAT, T_LEN
    REPEAT = max(1, args.repeat)
    try:
        batch_size(args.T)
    except ValueError as e:
        parser.error(f"--T must divide the benchmark batch: {e}")
    T_LEN = args.T
    if args.trials:
        TRIALS.update(json.loads(args.trials))
    if args.group:  # child process: one group, JSON on the last line
        name, kernel = args.group
        if kernel == "combined":
            TRIALS["combined"] = []
            H, K, V = HEAD_CONFIGS[name]
            leaves, do = _inputs(T_LEN, H, K, V, batch_size(T_LEN))
            result = {"base": trial(leaves, do, json.loads(args.combined)), "trials": []}
        else:
            result = run_group(name, kernel)
        print("GROUP " + json.dumps(result), flush=True)
        return 0
    report = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "T": T_LEN, "results": {}}

    def child(name, kernel, combined=None):
        cmd = [sys.executable, "-m", "qdelta.harness.bench.tune", "--group", name, kernel]
        if args.trials:
            cmd += ["--trials", args.trials]
        cmd += ["--repeat", str(REPEAT), "--T", str(T_LEN)]
        if combined is not None:
            cmd += ["--combined", json.dumps(combined)]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("GROUP ")]
        out = json.loads(lines[-1][6:]) if lines else {"base": "crashed: " + proc.stderr[-300:], "trials": []}
        print(f"{name} {kernel}: base {out['base']} ({time.time() - t0:.0f} s)", flush=True)
        for row in out["trials"]:
            res = row["result"]
            what = ("decode paper", "official") if kernel == "recurrent" else ("fwd", "fwd+bwd")
            shown = res[:100] if isinstance(res, str) else f"{what[0]} {res[0]:.3f} {what[1]} {res[1]:.3f} ms"
            print(f"    {row['overrides']}: {shown}", flush=True)
        return out

    for name in args.configs:
        groups = {kernel: child(name, kernel) for kernel in args.kernels}
        best = {kernel: o for kernel in args.kernels if (o := _pick(groups[kernel], kernel)) is not None}
        combined = child(name, "combined", best)
        print(f"{name} BEST {json.dumps(best)}: {combined['base']}", flush=True)
        report["results"][name] = {"groups": groups, "best": best, "combined": combined["base"]}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
