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
    "paper-varlen-fp16": ("paper", 20, 24, 64, "varlen", True),  # fp16 inputs: INTERPRET_FP16 tolerances
    # the output computed inside the state pass (launch.py FUSE_OUTPUT), both variants
    "paper-varlen-fused-output": ("paper", 20, 24, 64, "varlen", True),
    "official-batch-fused-output": ("official", 17, 33, 64, "batch", True),
    # 16-bit dot operands in the state passes and the K-block backward (launch.py LOWP), with W and the
    # kept states / state gradients and Q K^T * Gam stored in 16 bits (W_LOWP, H_LOWP, A_LOWP; official
    # keeps fp32 states)
    "official-varlen-fp16-lowp": ("official", 20, 24, 64, "varlen", True),
    "paper-varlen-fp16-lowp": ("paper", 20, 24, 64, "varlen", True),
    # the same with the output from its own kernel (state pass without FUSE_OUTPUT), 16-bit operands there too
    "paper-varlen-fp16-lowp-output-kernel": ("paper", 20, 24, 64, "varlen", True),
    # the backward reading the forward's P * Gam and Aqk instead of recomputing them (launch.py SAVED_PAIRS, on
    # by default; the other cases here run with it off)
    "paper-varlen-saved-pairs": ("paper", 20, 24, 64, "varlen", True),
    "official-batch-saved-pairs": ("official", 17, 33, 64, "batch", True),
    "paper-batch-chunk16-saved-pairs-prenorm": ("paper", 24, 40, 16, "batch", True),
    # no final state asked for (training): the final-state gradients arrive as None
    "paper-batch-chunk16-no-final-state": ("paper", 24, 40, 16, "batch", True),
}


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
    fused = name.endswith("fused-output") or name.endswith("-lowp")
    settings = dict(
        state={"FUSE_OUTPUT": fused, "LOWP": lowp, "H_LOWP": lowp},
        output={"LOWP": lowp},
        reverse={"LOWP": lowp, "H_LOWP": lowp},
        kq_bwd={"LOWP": lowp},
        intra={"W_LOWP": lowp, "A_LOWP": lowp},
        intra_bwd={"SAVED_PAIRS": "saved-pairs" in name},
    )
    with launch.overridden(settings):
        outs, grads = run(ops.chunk_qdelta, dtype, chunk_size=chunk)
        if name.endswith("fused-output"):  # without gradients the paper variant keeps no chunk states
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
    if name.endswith("fused-output"):
        errors["forward:no-grad"] = rel(o_nograd, ref_outs[0])
    return errors


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
    fused = sum(name.endswith("fused-output") for name in CASES)  # + one no-grad call each
    assert interpreted["chunk_calls"] == len(CASES) + fused + 2  # + one prefill per decode check
    assert interpreted["recurrent_calls"] == 9


if __name__ == "__main__":
    _main()
