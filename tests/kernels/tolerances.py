"""The one tolerances file for the Triton kernel tests: relative L2 error ||out - ref|| / ||ref||
against the float64 reference (the token loop, or on the GPU the PyTorch chunk reference in
float64), per case. Loosen an entry only with a written reason next to it.
"""

# CPU, TRITON_INTERPRET=1, fp32 inputs: the interpreter computes dots in fp32 (numpy); measured
# 1e-7 .. 5e-7 on outputs and every gradient.
INTERPRET_FP32 = {"forward": 1e-5, "grad": 1e-5}

# CPU, TRITON_INTERPRET=1, fp16 inputs: l2-normalised q, k are rounded to fp16 before the kernel
# (the fp64 reference normalises unrounded values), outputs and gradients are rounded to fp16
# (2^-11 relative): a few 1e-4 expected.
INTERPRET_FP16 = {"forward": 2e-3, "grad": 2e-3}

# GPU, fp32 inputs: the forward's tl.dot on fp32 operands runs in tf32 on Hopper (10-bit
# mantissa, ~3e-4 per product); the backward recomputes in fp32 from tf32-made chunk states.
GPU_FP32 = {"forward": 3e-3, "grad": 3e-3}

# GPU, bf16 inputs (the reference sees the same bf16 values in float64): outputs and gradients
# are rounded to bf16 (2^-9 relative) on top of tf32 arithmetic (STYLE: ~6e-3 / ~8e-3).
GPU_BF16 = {"forward": 6e-3, "grad": 8e-3}

# Decoding (fused recurrent) against chunked prefill of the same sequence, and prefill split
# invariance, both in fp32 on the GPU: the two paths round differently (tf32 dots in the chunk
# path, fp32 FMAs in the recurrent one).
GPU_CONSISTENCY = 3e-3


def tolerance(dtype_name: str, kind: str, device: str) -> float:
    """Tolerance for ``kind`` in {"forward", "grad"}; dtype_name "float32" or "bfloat16"."""
    if device == "cpu":
        return INTERPRET_FP32[kind]
    return (GPU_FP32 if dtype_name == "float32" else GPU_BF16)[kind]
