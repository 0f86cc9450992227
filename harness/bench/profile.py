"""Where one forward+backward goes, kernel by kernel (torch profiler, CUDA time), for ours and, when
``fla-core`` is importable, for flash-linear-attention's ``chunk_gated_delta_rule`` on the same inputs
(its Hopper/Triton < 3.7.1 backward guard lifted for timing only, as in ``qdelta bench kernels``).

    python -m qdelta.harness.bench.profile [--configs 340M 1.3B] [--T 2048] [--no-fla]

Prints one table per (config, implementation): each kernel's CUDA time in one call (B x T = 32,768
tokens, bf16), largest first, and the total. Needs a GPU.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from qdelta.harness.bench.kernels import HEAD_CONFIGS, _inputs, batch_size, fla_backward_guard_lifted, fla_version


def kernel_table(step, rows: int = 14) -> str:
    """Warm ``step`` up twice, then profile one call: CUDA time per kernel (ms, calls), largest first."""
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.self_device_time_total for e in events) / 1e3
    lines = [f"  {e.device_time_total / 1e3:7.3f} ms  x{e.count:<3d} {e.key[:70]}" for e in events[:rows]]
    return "\n".join(lines + [f"  {total:7.3f} ms  total CUDA time"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["1.3B", "340M"], choices=list(HEAD_CONFIGS))
    parser.add_argument("--T", type=int, default=2048, help="sequence length; must divide 32,768 tokens")
    parser.add_argument("--no-fla", action="store_true", help="ours only")
    args = parser.parse_args(argv)
    try:
        B = batch_size(args.T)
    except ValueError as e:
        parser.error(f"--T must divide the benchmark batch: {e}")
    from qdelta.kernels import chunk_qdelta

    for name in args.configs:
        H, K, V = HEAD_CONFIGS[name]
        q, k, v, g, beta, lam = _inputs(B, args.T, H, K, V, requires_grad=True)
        do = torch.randn(B, args.T, H, V, device="cuda").bfloat16()
        print(f"== {name} (H{H} K{K} V{V}), B={B} T={args.T}: qdelta chunk_qdelta fwd+bwd")
        print(kernel_table(lambda: chunk_qdelta(q, k, v, g, beta, lam)[0].backward(do)))
        if not args.no_fla and fla_version() is not None:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule

            print(f"== {name}: fla {fla_version()} chunk_gated_delta_rule fwd+bwd (backward guard lifted)")
            with fla_backward_guard_lifted():
                print(kernel_table(lambda: chunk_gated_delta_rule(q, k, v, g, beta)[0].backward(do)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
