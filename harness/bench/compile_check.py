"""Compile every chunk kernel and the decoding kernel for Hopper (sm_90) on a machine without a GPU.

Runs one small ``chunk_qdelta`` forward and backward and one decoding step under
``TRITON_INTERPRET=1`` at the given head sizes with the committed launch settings, records each
kernel launch (arguments,
compile-time values, warps, stages), and compiles each one with Triton's own compiler and ptxas
for ``GPUTarget("cuda", 90, 32)``. It reports the shared memory each kernel asks for against the
H100/H200 limit (227 KB), which is where a setting tuned for one dtype or head size fails first.
Triton on the CPU machine (3.9) is not the GPU machine's (3.6): a kernel that compiles here can
still fail there, but one that fails here needs a look before any device time is spent.

    python -m qdelta.harness.bench.compile_check [--heads 128x256 256x512] [--dtype bfloat16]

(the launches are recorded in a child process under TRITON_INTERPRET=1; this process compiles).
Each row also gives the registers per thread and the stack bytes (spills) that ptxas settled on
(``cuobjdump -res-usage``; this machine's ptxas, not necessarily the GPU machine's), and
``ptx_sha1``, a digest of the kernel's PTX without debug information, labels of inlined scopes, or
the kernel's own name: equal digests before and after an edit mean the GPU
runs the same code, which is how a refactor made after the last GPU run is shown to change nothing
(run both versions with the same Triton and settings and compare).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from typing import Dict, List

SHARED_LIMIT = 232448  # bytes of shared memory per block on sm_90 (H100 / H200)
_TRITON_TYPES = {
    "torch.float32": "fp32",
    "torch.bfloat16": "bf16",
    "torch.float16": "fp16",
    "torch.int32": "i32",
    "torch.int64": "i64",
}


def record_launches(K: int, V: int, dtype_name: str, variant: str = "paper") -> List[dict]:
    """The kernel launches of one chunk forward + backward with the launch.py settings (for float32 inputs
    also one with ``precision="ieee"``) and one decoding step (tiny T, real head sizes), recorded under the
    interpreter (this process must have TRITON_INTERPRET=1) as plain, JSON-able descriptions."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("record_launches runs under TRITON_INTERPRET=1 (the launches happen on the CPU)")
    import torch

    from qdelta.kernels import chunk_qdelta, fused_recurrent_qdelta
    from qdelta.kernels.testing import random_inputs
    from qdelta.kernels.triton import chunk, chunk_bwd, fused_recurrent, launch

    seen: List[dict] = []
    real = launch.launch

    def recording(kernel, grid, cfg, *args, **constexprs):
        cfg = dict(cfg)
        options = {"num_warps": cfg.pop("num_warps", 4), "num_stages": cfg.pop("num_stages", 2)}
        names = [n for n in kernel.arg_names if n not in constexprs and n not in cfg]
        signature, aligned = {}, []
        for name, arg in zip(names, args):
            if hasattr(arg, "dtype"):
                signature[name] = "*" + _TRITON_TYPES[str(arg.dtype)]
                if arg.data_ptr() % 16 == 0:
                    aligned.append(name)
            else:
                signature[name] = "fp32" if isinstance(arg, float) else "i32"
                if isinstance(arg, int) and arg % 16 == 0:
                    aligned.append(name)
        # ``aligned``: the arguments Triton's launcher would mark divisible by 16 (16-byte aligned
        # pointers, integers that are multiples of 16), which is what lets it vectorise loads and stores
        desc = {
            "module": kernel.fn.__module__,
            "name": kernel.fn.__name__,
            "signature": signature,
            "constexprs": {**constexprs, **cfg},
            "options": options,
            "aligned": aligned,
        }
        if desc not in seen:  # the backward reruns forward kernels: an identical launch compiles once
            seen.append(desc)
        return real(kernel, grid, {**cfg, **options}, *args, **constexprs)

    chunk.launch = chunk_bwd.launch = fused_recurrent._launch = recording
    try:
        x = random_inputs(1, 70, 1, K, V, dtype=getattr(torch, dtype_name), seed=0)
        leaves = {n: t.requires_grad_(True) for n, t in x.items() if n != "initial_state"}
        o, _ = chunk_qdelta(**leaves, use_qk_l2norm=True, variant=variant, precision="tf32")
        o.float().sum().backward()
        if dtype_name == "float32":  # fp32 dots in IEEE precision (chunk_qdelta's precision="ieee")
            again = {n: t.detach().requires_grad_(True) for n, t in leaves.items()}
            chunk_qdelta(**again, use_qk_l2norm=True, variant=variant, precision="ieee")[0].sum().backward()
        step = {n: t[:, :1].detach() for n, t in leaves.items()}
        with torch.no_grad():
            fused_recurrent_qdelta(
                **step, initial_state=x["initial_state"].float(), use_qk_l2norm=True, variant=variant
            )
    finally:
        chunk.launch = chunk_bwd.launch = fused_recurrent._launch = real
    return seen


def ptx_digest(ptx: str, name: str) -> str:
    """sha1 (12 hex digits) of PTX with debug info, inlined-scope labels and the kernel name removed."""
    ptx = re.sub(r"\.section\s+\.debug.*", "", ptx, flags=re.S)
    keep = [
        ln
        for ln in ptx.splitlines()
        if not ln.strip().startswith((".loc", ".file", "//")) and not re.fullmatch(r"\$L__tmp\d+:", ln.strip())
    ]
    return hashlib.sha1("\n".join(keep).replace(name, "KERNEL").encode()).hexdigest()[:12]


def register_usage(cubin: bytes) -> Dict[str, int]:
    """Registers per thread and stack bytes (register spills) of a compiled kernel, read from its cubin
    with the ``cuobjdump`` Triton ships; empty where that tool is missing. A kernel at 255 registers
    with a stack spills: the first thing to look at when a kernel is slower than its bytes and FLOPs say."""
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return {"registers": int(found.group(1)), "stack": int(found.group(2))} if found else {}


def compile_for_hopper(desc: dict) -> Dict[str, object]:
    """Compile one recorded launch for sm_90 (this process must NOT be interpreting)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit = getattr(importlib.import_module(desc["module"]), desc["name"])
    names = jit.arg_names
    signature = {n: desc["signature"].get(n, "constexpr") for n in names}
    values = {(names.index(n),): v for n, v in desc["constexprs"].items()}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in desc.get("aligned", [])}
    options = dict(desc["options"])
    while True:  # as launch.launch does at run time: fewer pipeline stages until it fits
        compiled = triton.compile(
            ASTSource(jit, signature, constexprs=values, attrs=attrs), target=GPUTarget("cuda", 90, 32), options=options
        )
        shared = compiled.metadata.shared
        if shared <= SHARED_LIMIT or options["num_stages"] <= 1:
            break
        options["num_stages"] -= 1
    return {
        "kernel": desc["name"],
        "shared": shared,
        "num_warps": options["num_warps"],
        "num_stages_asked": desc["options"]["num_stages"],
        "num_stages_used": options["num_stages"],
        "fits": shared <= SHARED_LIMIT,
        **register_usage(compiled.asm["cubin"]),
        "ptx_sha1": ptx_digest(compiled.asm["ptx"], desc["name"]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", nargs="+", default=["128x256", "256x512"], help="KxV head sizes")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--variant", default="paper", choices=["paper", "official"])
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)  # child: print the launches
    args = parser.parse_args(argv)
    if args.record:
        out = {h: record_launches(*(int(x) for x in h.split("x")), args.dtype, args.variant) for h in args.heads}
        print("LAUNCHES " + json.dumps(out))
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET (the recording runs in a child process that sets it)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "qdelta.harness.bench.compile_check",
            "--record",
            "--heads",
            *args.heads,
            "--dtype",
            args.dtype,
            "--variant",
            args.variant,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [ln for ln in child.stdout.splitlines() if ln.startswith("LAUNCHES ")]
    if child.returncode or not lines:
        raise SystemExit(f"recording the launches failed:\n{child.stderr[-3000:]}")
    ok = True
    for heads, launches in json.loads(lines[-1][len("LAUNCHES ") :]).items():
        for desc in launches:
            row = {"heads": heads, "dtype": args.dtype, **compile_for_hopper(desc)}
            ok &= row["fits"]
            print(json.dumps(row), flush=True)
    print("all fit" if ok else "SOME KERNELS ASK MORE SHARED MEMORY THAN sm_90 HAS")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
