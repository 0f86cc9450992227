"""Try launch settings of the chunk kernels on a GPU: one setting changed at a time, forward and
forward+backward timed (median of ``triton.testing.do_bench``), bf16, 32,768 tokens.

    python -m qdelta.kernels.triton.tune [--configs 340M 1.3B] [--out tune.json]

Prints one line per trial and, last, the best setting per kernel (forward kernels judged by the
forward time, backward kernels by forward+backward) and the time with all the best ones together.
The chosen values go into ``launch.py`` by hand, with the numbers in NOTES.md.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from triton.testing import do_bench

from . import launch

HEADS = {"340M": (6, 128, 256), "1.3B": (6, 256, 512)}
TRIALS = {
    "intra": [{"num_warps": 2}, {"num_warps": 8}, {"BK": 32}, {"BK": 128}, {"BV": 32}, {"BV": 128}],
    "state": [{"BV": 16}, {"BV": 32}, {"BV": 64}, {"num_warps": 4}, {"num_warps": 8}, {"num_stages": 2},
              {"FUSE_OUTPUT": True}, {"FUSE_OUTPUT": True, "BV": 16}, {"FUSE_OUTPUT": True, "BV": 64},
              {"FUSE_OUTPUT": True, "num_warps": 8}, {"FUSE_OUTPUT": True, "num_warps": 4}],
    "output": [{"BK": 32}, {"BK": 128}, {"BV": 32}, {"BV": 128}, {"num_warps": 8}, {"num_stages": 3}],
    "reverse": [{"BV": 16}, {"BV": 32}, {"BV": 64}, {"num_warps": 4}, {"num_warps": 8}, {"num_stages": 2},
                {"BV": 64, "num_warps": 8}, {"BV": 16, "num_warps": 4}],
    "intra_bwd": [{"BV": 32}, {"BV": 128}, {"BK": 32}, {"BK": 128}, {"num_warps": 8}, {"num_warps": 2},
                  {"num_stages": 3}],
    "kq_bwd": [{"BK": 32}, {"BK": 128}, {"BV": 32}, {"BV": 128}, {"num_warps": 8}, {"num_stages": 1},
               {"num_stages": 3}, {"BK": 32, "BV": 128}],
}
FORWARD_KERNELS = ("intra", "state", "output")


def _inputs(T, H, K, V, B):
    from qdelta.kernels._inputs import l2norm
    gen = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=gen)  # noqa: E731
    q, k = l2norm(r(B, T, H, K)).bfloat16(), l2norm(r(B, T, H, K)).bfloat16()
    v = r(B, T, H, V).bfloat16()
    g = torch.nn.functional.logsigmoid(r(B, T, H)).bfloat16()
    beta, lam = torch.rand(B, T, H, device="cuda").bfloat16(), torch.rand(B, T, H, device="cuda").bfloat16()
    leaves = [t.requires_grad_(True) for t in (q, k, v, g, beta, lam)]
    return leaves, r(B, T, H, V).bfloat16()


def time_call(leaves, do):
    from qdelta.kernels import chunk_qdelta
    with torch.no_grad():
        fwd = do_bench(lambda: chunk_qdelta(*leaves), warmup=25, rep=100, return_mode="median")
    fwdbwd = do_bench(lambda: chunk_qdelta(*leaves)[0].backward(do), warmup=25, rep=100, return_mode="median",
                      grad_to_none=leaves)
    return fwd, fwdbwd


def trial(leaves, do, overrides):
    launch.OVERRIDES.clear()
    launch.OVERRIDES.update(overrides)
    try:
        return time_call(leaves, do)
    except Exception as e:  # e.g. out of shared memory: report and go on
        return f"{type(e).__name__}: {str(e)[:120]}"
    finally:
        launch.OVERRIDES.clear()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(HEADS))
    parser.add_argument("--kernels", nargs="+", default=list(TRIALS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    report = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "results": {}}
    for name in args.configs:
        H, K, V = HEADS[name]
        leaves, do = _inputs(2048, H, K, V, 16)
        base = trial(leaves, do, {})
        print(f"{name} defaults {launch.settings('state', K, V)} ...: fwd {base[0]:.3f} fwd+bwd {base[1]:.3f} ms",
              flush=True)
        rows, best = [], {}
        for kernel in args.kernels:
            col = 0 if kernel in FORWARD_KERNELS else 1
            best_t, best_o = base[col], None
            for o in TRIALS[kernel]:
                t0 = time.time()
                res = trial(leaves, do, {kernel: o})
                rows.append({"kernel": kernel, "overrides": o, "result": res})
                shown = res if isinstance(res, str) else f"fwd {res[0]:.3f} fwd+bwd {res[1]:.3f} ms"
                print(f"{name} {kernel} {o}: {shown} ({time.time() - t0:.0f} s)", flush=True)
                if not isinstance(res, str) and res[col] < 0.97 * best_t:
                    best_t, best_o = res[col], o
            if best_o is not None:
                best[kernel] = best_o
        combined = trial(leaves, do, best)
        print(f"{name} BEST {json.dumps(best)}: {combined}", flush=True)
        report["results"][name] = {"defaults": base, "trials": rows, "best": best, "combined": combined}
        del leaves, do
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
