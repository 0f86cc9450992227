"""Triton kernels under TRITON_INTERPRET=1 on the CPU against the float64 token loop.

Triton reads TRITON_INTERPRET when the kernels are decorated, and setting it here would switch
every other CPU test in this pytest process onto the interpreter. So the checks run once, in a
subprocess started with TRITON_INTERPRET=1 (this file run as a script); the tests assert on the
errors it reports. fp32 inputs; sizes small (T up to 130, several chunk boundaries, varlen,
initial states); tolerances from the ``tol`` fixture (tests/conftest.py). Cases named ``-prenorm`` pass q, k l2-normalised
beforehand with ``use_qk_l2norm=False``; the others leave the norm to the kernels
(``use_qk_l2norm=True``, its gradient included).
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # CPU-heavy: run by the full suite, skipped by -m 'not slow'

VARLEN = [0, 50, 61, 130]  # three sequences: chunk boundaries at 64 inside the first and last
CASES = {
    # name: (variant, K, V, chunk_size, batch/varlen, with g/lam/initial state)
    "paper-varlen": ("paper", 20, 24, 64, "varlen", True),
    "official-varlen": ("official", 20, 24, 64, "varlen", True),
    "paper-batch-chunk16-no-gates": ("paper", 32, 16, 16, "batch", False),
    "official-batch-no-gates-prenorm": ("official", 17, 33, 64, "batch", False),
    "official-batch": ("official", 17, 33, 64, "batch", True),
    "paper-batch-chunk16-prenorm": ("paper", 24, 40, 16, "batch", True),
    "paper-varlen-fp16": ("paper", 20, 24, 64, "varlen", True),  # fp16 inputs: INTERPRET_FP16 tolerances
    # 16-bit dot operands in the state passes, the output kernel and the K-block backward (launch.py LOWP),
    # with W and the kept states / state gradients stored in 16 bits (W_LOWP, H_LOWP; official keeps fp32
    # states); the other cases run with LOWP off
    "official-varlen-fp16-lowp": ("official", 20, 24, 64, "varlen", True),
    "paper-varlen-fp16-lowp": ("paper", 20, 24, 64, "varlen", True),
    # no final state asked for (training): the final-state gradients arrive as None
    "paper-batch-chunk16-no-final-state": ("paper", 24, 40, 16, "batch", True),
}
NO_GRAD_TOO = ("paper-varlen", "official-batch")  # also run without gradients (nothing kept for a backward)


def _check_chunk(name, torch, ops, rel):
    variant, K, V, chunk, layout, gated = CASES[name]
    from qdelta.kernels.testing import random_inputs

    B, T, cu = (1, VARLEN[-1], torch.tensor(VARLEN)) if layout == "varlen" else (2, 100, None)
    x = random_inputs(
        B,
        T,
        2,
        K,
        V,
        dtype=torch.float64,
        seed=len(name),
        with_decay=gated,
        with_lam=gated,
        with_initial_state=gated,
        num_sequences=3 if cu is not None else B,
    )
    norm = not name.endswith("-prenorm")
    if not norm:
        x["q"], x["k"] = ops.l2norm(x["q"]), ops.l2norm(x["k"])
    gen = torch.Generator().manual_seed(1)
    w_o = torch.randn(B, T, 2, V, generator=gen, dtype=torch.float64)
    w_s = [torch.randn(3 if cu is not None else B, 2, K, V, generator=gen, dtype=torch.float64) for _ in range(3)]

    def run(op, dtype, **kw):
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        leaves = {n: t.to(state_dtype if n == "initial_state" else dtype).requires_grad_(True) for n, t in x.items()}
        final = not name.endswith("no-final-state")
        o, s = op(**leaves, use_qk_l2norm=norm, output_final_state=final, cu_seqlens=cu, variant=variant, **kw)
        parts = [] if not final else list(s[:3]) if variant == "official" else [s]
        loss = (o.double() * w_o).sum() + sum((p.double() * w).sum() for p, w in zip(parts, w_s))
        loss.backward()
        return [o] + parts, {n: t.grad for n, t in leaves.items()}

    dtype = torch.float16 if "fp16" in name else torch.float32
    from qdelta.kernels.triton import launch

    lowp = "-lowp" in name
    settings = dict(
        state={"LOWP": lowp, "H_LOWP": lowp},
        output={"LOWP": lowp},
        reverse={"LOWP": lowp, "H_LOWP": lowp},
        kq_bwd={"LOWP": lowp},
        intra={"W_LOWP": lowp},
    )
    with launch.overridden(settings):
        outs, grads = run(ops.chunk_qdelta, dtype, chunk_size=chunk)
        if name in NO_GRAD_TOO:
            with torch.no_grad():
                o_nograd, _ = ops.chunk_qdelta(
                    **{n: t.to(torch.float32) for n, t in x.items()},
                    use_qk_l2norm=norm,
                    cu_seqlens=cu,
                    variant=variant,
                    chunk_size=chunk,
                )
    ref_outs, ref_grads = run(ops.naive_recurrent_qdelta, torch.float64)
    errors = {f"forward:{i}": rel(a, b) for i, (a, b) in enumerate(zip(outs, ref_outs))}
    errors.update({f"grad:{n}": rel(grads[n], ref_grads[n]) for n in x})
    if name in NO_GRAD_TOO:
        errors["forward:no-grad"] = rel(o_nograd, ref_outs[0])
    return errors


def _check_precision(torch, ops, rel):
    """``precision`` reaches every chunk kernel as DOT_PRECISION: "ieee" for fp32 inputs when asked for,
    "tf32" otherwise (16-bit inputs keep their kernels); None as torch's fp32 matmul precision says
    ("highest": ieee, "high": tf32). The interpreter multiplies in fp32 either way, so the ieee call is
    also checked against the fp64 token loop."""
    from qdelta.kernels.testing import random_inputs
    from qdelta.kernels.triton import chunk, chunk_bwd

    seen, real = [], chunk.launch

    def recording(kernel, grid, cfg, *args, **constexprs):
        seen.append((kernel.fn.__name__, constexprs["DOT_PRECISION"]))
        return real(kernel, grid, cfg, *args, **constexprs)

    x = random_inputs(1, 70, 2, 20, 24, dtype=torch.float64, seed=6)
    ref, _ = ops.naive_recurrent_qdelta(**x, use_qk_l2norm=True)
    result = {}
    chunk.launch = chunk_bwd.launch = recording
    try:
        cases = [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, "ieee")]
        cases += [(torch.float32, None, "highest"), (torch.float32, None, "high")]
        for dtype, precision, *matmul in cases:
            torch.set_float32_matmul_precision(matmul[0] if matmul else "highest")
            seen.clear()
            leaves = {
                n: t.to(dtype if n != "initial_state" else torch.float32).requires_grad_(True) for n, t in x.items()
            }
            o, _ = ops.chunk_qdelta(**leaves, use_qk_l2norm=True, precision=precision)
            o.float().sum().backward()
            key = f"{str(dtype).split('.')[-1]}-{precision or 'default-' + matmul[0]}"
            result[key] = sorted(set(seen))
            if dtype == torch.float32:
                result[key + "-error"] = rel(o, ref)
    finally:
        chunk.launch = chunk_bwd.launch = real
        torch.set_float32_matmul_precision("highest")
    return result


def _check_decode(variant, torch, ops, rel):
    """Triton chunk prefill (70 tokens), then Triton decode over a chunk boundary, in place."""
    from qdelta.kernels.testing import random_inputs

    x = random_inputs(2, 90, 2, 20, 24, dtype=torch.float64, seed=5)
    o_ref, s_ref = ops.naive_recurrent_qdelta(**x, use_qk_l2norm=True, output_final_state=True, variant=variant)
    x32 = {n: t.float() for n, t in x.items()}
    first = {n: t[:, :70] for n, t in x32.items() if n != "initial_state"}
    o1, state = ops.chunk_qdelta(
        **first, initial_state=x32["initial_state"], use_qk_l2norm=True, output_final_state=True, variant=variant
    )
    outs = [o1]
    for t0, t1 in ((70, 71), (71, 75), (75, 90)):  # one token, then a few per call
        step = {n: t[:, t0:t1] for n, t in x32.items() if n != "initial_state"}
        o, state = ops.fused_recurrent_qdelta(
            **step, initial_state=state, use_qk_l2norm=True, output_final_state=True, variant=variant, inplace=True
        )
        outs.append(o)
    parts = list(zip(state[:3], s_ref[:3])) if variant == "official" else [(state, s_ref)]
    errors = {"forward:o": rel(torch.cat(outs, 1), o_ref)}
    errors.update({f"forward:state{i}": rel(a, b) for i, (a, b) in enumerate(parts)})
    if variant == "official":
        errors["offset"] = float((state.offset != s_ref.offset).any())
    return errors


def _check_recurrent_varlen(variant, torch, ops, rel, norm=True):
    """The recurrent kernel on packed sequences (several tokens each) from an initial state; without
    ``norm``, q and k come l2-normalised."""
    from qdelta.kernels.testing import random_inputs

    x = random_inputs(1, 40, 2, 20, 24, dtype=torch.float64, seed=9, num_sequences=3)
    if not norm:
        x["q"], x["k"] = ops.l2norm(x["q"]), ops.l2norm(x["k"])
    cu = torch.tensor([0, 7, 8, 40])
    o_ref, s_ref = ops.naive_recurrent_qdelta(
        **x, use_qk_l2norm=norm, output_final_state=True, cu_seqlens=cu, variant=variant
    )
    x32 = {n: t.float() for n, t in x.items()}
    o, s = ops.fused_recurrent_qdelta(
        **x32, use_qk_l2norm=norm, output_final_state=True, cu_seqlens=cu, variant=variant
    )
    parts = list(zip(s[:3], s_ref[:3])) if variant == "official" else [(s, s_ref)]
    errors = {"forward:o": rel(o, o_ref)}
    errors.update({f"forward:state{i}": rel(a, b) for i, (a, b) in enumerate(parts)})
    return errors


def _check_saved_for_backward(variant, torch, ops):
    """Bytes the chunk op keeps for its backward (distinct storages, via saved-tensor hooks) against the
    bytes of its inputs: the backward recomputes the forward's intermediates, so only the inputs are kept."""
    from qdelta.kernels.testing import random_inputs

    x = random_inputs(2, 130, 2, 20, 24, dtype=torch.float32, seed=4)
    leaves = {n: t.requires_grad_(True) for n, t in x.items()}
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o, _ = ops.chunk_qdelta(**leaves, use_qk_l2norm=True, variant=variant)
    o.sum().backward()
    return {"saved": sum(storages.values()), "inputs": sum(t.untyped_storage().nbytes() for t in leaves.values())}


def _main():
    """Run every check under the interpreter and print one JSON object."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch

    import qdelta.kernels as ops
    import qdelta.kernels.triton as tk

    calls = {"chunk": 0, "recurrent": 0}
    chunk_fn, rec_fn = tk.chunk_qdelta_triton, tk.fused_recurrent_qdelta_triton

    def count(key, fn):
        def wrapped(*a, **kw):
            calls[key] += 1
            return fn(*a, **kw)

        return wrapped

    tk.chunk_qdelta_triton = count("chunk", chunk_fn)
    tk.fused_recurrent_qdelta_triton = count("recurrent", rec_fn)
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
    result = {name: _check_chunk(name, torch, ops, rel) for name in CASES}
    for variant in ("paper", "official"):
        result[f"decode-{variant}"] = _check_decode(variant, torch, ops, rel)
        result[f"recurrent-varlen-{variant}"] = _check_recurrent_varlen(variant, torch, ops, rel)
    result["recurrent-varlen-paper-prenorm"] = _check_recurrent_varlen("paper", torch, ops, rel, norm=False)
    result["precision"] = _check_precision(torch, ops, rel)
    result["saved"] = {variant: _check_saved_for_backward(variant, torch, ops) for variant in ("paper", "official")}
    result["chunk_calls"] = calls["chunk"]
    result["recurrent_calls"] = calls["recurrent"]
    print("RESULT " + json.dumps(result))


@pytest.fixture(scope="module")
def interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize(
    "name",
    list(CASES)
    + ["decode-paper", "decode-official", "recurrent-varlen-paper", "recurrent-varlen-official"]
    + ["recurrent-varlen-paper-prenorm"],
)
def test_matches_fp64_reference(interpreted, name, tol):
    errors = interpreted[name]
    assert errors, "no checks ran"
    for key, err in errors.items():
        kind = key.split(":")[0]
        table = tol["INTERPRET_FP16"] if "fp16" in name else tol["INTERPRET_FP32"]
        limit = 0.0 if kind == "offset" else table[kind]
        assert err <= limit, f"{name} {key}: relative error {err:.3e} > {limit}"


def test_triton_path_was_used(interpreted):
    """The chunk calls went through the Triton kernels (not the reference fallback)."""
    # + one no-grad call each, one prefill per decode check, five precision calls
    assert interpreted["chunk_calls"] == len(CASES) + len(NO_GRAD_TOO) + 2 + 5 + 2
    assert interpreted["recurrent_calls"] == 9


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_backward_keeps_only_the_inputs(interpreted, variant):
    """What the op keeps for its backward is at most its inputs (the intermediates are recomputed)."""
    got = interpreted["saved"][variant]
    assert 0 < got["saved"] <= got["inputs"], got


KERNELS = ["_intra_bwd_kernel", "_intra_kernel", "_kq_bwd_kernel", "_output_kernel", "_reverse_state_kernel"]
KERNELS += ["_state_kernel"]


def test_precision_reaches_every_chunk_kernel(interpreted, tol):
    got = interpreted["precision"]
    assert got["float32-ieee"] == [[name, "ieee"] for name in KERNELS]
    assert got["float32-tf32"] == [[name, "tf32"] for name in KERNELS]
    assert got["float16-ieee"] == [[name, "tf32"] for name in KERNELS]  # 16-bit inputs: kernels unchanged
    assert got["float32-default-highest"] == got["float32-ieee"]
    assert got["float32-default-high"] == got["float32-tf32"]
    assert got["float32-ieee-error"] <= tol["INTERPRET_FP32"]["forward"]
    assert got["float32-tf32-error"] <= tol["INTERPRET_FP32"]["forward"]


if __name__ == "__main__":
    _main()
