"""harness/bench/profile.py on a GPU (marked ``gpu``; skipped without CUDA): the table lists our
kernels with their CUDA time and a total that is at least their sum."""

import re

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_kernel_table_lists_the_chunk_kernels_of_one_call():
    from qdelta.harness.bench.kernels import _inputs
    from qdelta.harness.bench.profile import kernel_table
    from qdelta.kernels import chunk_qdelta

    q, k, v, g, beta, lam = _inputs(2, 256, 2, 64, 64, requires_grad=True, seed=3)
    do = torch.randn_like(v)
    table = kernel_table(lambda: chunk_qdelta(q, k, v, g, beta, lam)[0].backward(do))
    times = {m.group(2): float(m.group(1)) for m in re.finditer(r"^\s+([0-9.]+) ms\s+x\d+\s+(\S+)", table, re.M)}
    for name in ("_intra_kernel", "_state_kernel", "_reverse_state_kernel", "_intra_bwd_kernel", "_kq_bwd_kernel"):
        assert times.get(name, 0) > 0, (name, table)
    total = float(re.search(r"([0-9.]+) ms\s+total CUDA time", table).group(1))
    assert total >= sum(t for n, t in times.items() if n.startswith("_")) - 1e-3
