#!/usr/bin/env bash
# One device call (GPU machine, see NOTES.md): make `import qdelta.kernels` work, run the GPU
# tests, then the benchmark. Logs and result files land in $OUT. Usage: bash kernels/triton/device_check.sh [tests|bench|all]
set -o pipefail
what=${1:-all}
export PYTHONUNBUFFERED=1
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
  # fallback: a symlink tree that mirrors the package-dir mapping of pyproject.toml
  mkdir -p /tmp/pp/qdelta && cp -rs "$PWD/qdelta/." /tmp/pp/qdelta/
  for p in kernels harness tasks; do ln -sfn "$PWD/$p" "/tmp/pp/qdelta/$p"; done
  export PYTHONPATH=/tmp/pp
fi
python3 -c "import torch, triton, qdelta.kernels.triton as t; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(), t.__file__)" 2>&1 | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee -a "$OUT/env.log"
if [ "$what" != bench ]; then
  timeout 330 python3 -m pytest -q -m gpu -s -rA -p no:cacheprovider tests/kernels/test_triton_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "ERR|passed|failed|Error" 
fi
if [ "$what" = all ]; then  # where the time of one fwd+bwd goes (1.3B heads, T=2048, B=16)
  timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/profile.log" | tail -25
import torch
from torch.profiler import profile, ProfilerActivity
from qdelta.harness.bench_kernels import _inputs
from qdelta.kernels import chunk_qdelta
q, k, v, g, beta, lam = _inputs(16, 2048, 6, 256, 512, requires_grad=True)
do = torch.randn(16, 2048, 6, 512, device="cuda").bfloat16()
for _ in range(2):
    chunk_qdelta(q, k, v, g, beta, lam)[0].backward(do)
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    chunk_qdelta(q, k, v, g, beta, lam)[0].backward(do)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))
PY
fi
if [ "$what" != tests ]; then
  timeout 330 python3 -m qdelta.harness.cli bench kernels --out "$OUT/bench" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
fi
