"""Every chunk kernel and the decoding kernel compile for Hopper (sm_90) at both real head sizes
with the committed launch settings, and each fits its shared memory (harness/bench/compile_check.py;
no GPU needed: Triton's own compiler and the ptxas it ships). Catches a kernel edit or a launch
setting that cannot build before any device time is spent."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # CPU-heavy: run by the full suite, skipped by -m 'not slow'


def _ptxas_available() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))


@pytest.mark.skipif(not _ptxas_available(), reason="this Triton has no bundled ptxas")
def test_chunk_kernels_compile_for_sm90_and_fit_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-m",
            "qdelta.harness.bench.compile_check",
            "--heads",
            "128x256",
            "256x512",
            "--dtype",
            "bfloat16",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for heads in ("128x256", "256x512"):
        kernels = {r["kernel"] for r in rows if r["heads"] == heads}
        assert kernels == {
            "_intra_kernel",
            "_state_kernel",
            "_output_kernel",
            "_reverse_state_kernel",
            "_intra_bwd_kernel",
            "_kq_bwd_kernel",
            "_recurrent_kernel",
        }, (heads, kernels)
        count = lambda name: sum(r["heads"] == heads and r["kernel"] == name for r in rows)  # noqa: E731
        # one launch each (one way to launch); the intra kernel twice: the forward's, and the backward's
        # recompute, which also stores T and P * Gam (STORE_T)
        assert all(count(name) == (2 if name == "_intra_kernel" else 1) for name in kernels), heads
    assert all(r["fits"] and 0 < r["shared"] <= 232448 for r in rows)
