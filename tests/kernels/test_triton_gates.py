"""The gate kernels (qdelta.kernels.triton.gates) under TRITON_INTERPRET=1 against ``qdelta.layers.gate_values``
in float64: outputs and the gradients of the logits, A_log and dt_bias, for the gate sets of every mixer, with
logits past softplus's threshold (20) and far below it. Run in a subprocess (the interpreter is chosen when
the kernels are decorated); fp32 and bf16 logits, 150 tokens (a last, partial block of 64), 6 heads."""

import json
import os
import subprocess
import sys

import pytest

# name: (decay, beta, lam, lamb_bias, scale)
CASES = {
    "qdelta": (True, True, True, 0.5, 1.0),
    "qdelta-neg-eigval": (True, True, True, 0.0, 2.0),
    "gated_deltanet": (True, True, False, 0.0, 1.0),
    "delta_net": (False, True, False, 0.0, 1.0),
    "linear_attn": (True, False, False, 0.0, 1.0),
}
N, HV = 150, 6
# fp32: fp32 rounding of exp / log / sigmoid; bf16: the logits' gradient is rounded to bf16 (2^-9)
TOLERANCE = {"float32": 1e-5, "bfloat16": 8e-3}


def _check(name, dtype_name, only_first_gradient=False):
    import torch

    from qdelta.kernels.triton.gates import fused_gates
    from qdelta.layers import gate_values

    decay, has_beta, has_lam, lamb_bias, scale = CASES[name]
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(len(name) + len(dtype_name))
    C = HV * (decay + has_beta + has_lam)
    x = torch.randn(N, C, generator=gen, dtype=torch.float64) * 4
    x[:5] = 25.0  # softplus passes through
    x[5:10] = -40.0  # exp underflows to tiny values: log1p, sigmoid tails
    x = x.to(dtype).double()  # the values both sides see
    A_log = torch.rand(HV, generator=gen, dtype=torch.float64) * 2.7 if decay else None
    dt_bias = torch.randn(HV, generator=gen, dtype=torch.float64) if decay else None
    weights = [torch.randn(N, HV, generator=gen, dtype=torch.float64) for _ in range(3)]

    def run(x, A_log, dt_bias, fn):
        leaves = [None if t is None else t.detach().requires_grad_(True) for t in (x, A_log, dt_bias)]
        outs = fn(*leaves)
        present = [o for o in outs if o is not None]
        used = present[:1] if only_first_gradient else present
        loss = sum((o.double() * w).sum() for o, w in zip(used, weights))
        loss.backward()
        return present, [t.grad for t in leaves if t is not None]

    def reference(x, A_log, dt_bias):
        cols = iter(x.split(HV, dim=1))
        a = next(cols) if decay else None
        b = next(cols) if has_beta else None
        lam = next(cols) if has_lam else None
        return gate_values(a, b, lam, A_log, dt_bias, lamb_bias, scale)

    def kernel(x, A_log, dt_bias):
        return fused_gates(x, A_log, dt_bias, has_beta=has_beta, has_lam=has_lam, lamb_bias=lamb_bias, scale=scale)

    params = [None if t is None else t.float() for t in (A_log, dt_bias)]
    outs, grads = run(x.to(dtype), *params, kernel)
    ref_outs, ref_grads = run(x, A_log, dt_bias, reference)
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    errors = {f"out{i}": rel(a, b) for i, (a, b) in enumerate(zip(outs, ref_outs))}
    errors.update({f"grad{i}": rel(a, b) for i, (a, b) in enumerate(zip(grads, ref_grads))})
    errors["dtypes"] = [str(t.dtype) for t in outs + grads]
    return errors


def _main():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    result = {f"{n}-{d}": _check(n, d) for n in CASES for d in TOLERANCE}
    result["qdelta-float32-first-gradient-only"] = _check("qdelta", "float32", only_first_gradient=True)
    print("RESULT " + json.dumps(result))


@pytest.fixture(scope="module")
def interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True, timeout=300
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize("dtype_name", list(TOLERANCE))
@pytest.mark.parametrize("name", list(CASES))
def test_gates_match_the_fp64_formula(interpreted, name, dtype_name):
    errors = dict(interpreted[f"{name}-{dtype_name}"])
    dtypes = errors.pop("dtypes")
    n_out = sum(CASES[name][:3])
    assert len(errors) == n_out + 1 + 2 * CASES[name][0], errors  # every output and gradient compared
    assert dtypes[:n_out] == ["torch.float32"] * n_out and dtypes[n_out] == f"torch.{dtype_name}", dtypes
    assert all(e <= TOLERANCE[dtype_name] for e in errors.values()), errors


def test_a_gate_without_gradient_gets_zeros(interpreted):
    errors = dict(interpreted["qdelta-float32-first-gradient-only"])
    errors.pop("dtypes")
    assert all(e <= TOLERANCE["float32"] for e in errors.values()), errors


def test_bad_logits_are_refused():
    import torch

    from qdelta.kernels.triton.gates import fused_gates

    with pytest.raises(ValueError, match="do not hold 3 gates"):
        fused_gates(torch.ones(4, 17), torch.ones(6), torch.ones(6), has_beta=True, has_lam=True)
    with pytest.raises(ValueError, match="come together"):
        fused_gates(torch.ones(4, 12), torch.ones(6), None, has_beta=True, has_lam=False)


if __name__ == "__main__":
    _main()
