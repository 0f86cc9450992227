#!/usr/bin/env bash
# One device call (GPU machine, see NOTES.md): make `import qdelta.kernels` work, then run the
# steps named: tests (GPU tests), profile (where one fwd+bwd goes, ours and fla's), bench (the benchmark), tune (harness/bench/tune.py; TUNE_ARGS, TUNE_TRIALS: JSON for --trials),
# all (= tests profile bench). Logs and result files land
# in $OUT, named with $TAG when set. If .whl/ holds
# wheels (fla-core, einops), they are installed first; .authors/ (ignored, never committed) holds the authors'
# qdelta_rule package for the benchmark. Usage: bash scripts/device_check.sh STEP...
set -o pipefail
steps=${*:-all}
[ "$steps" = all ] && steps="tests profile bench"
tag=${TAG:+-$TAG}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
[ -d .authors/qdelta_rule ] && export QDELTA_AUTHORS_DIR=${QDELTA_AUTHORS_DIR:-$PWD/.authors}
if ! python3 -c "import qdelta.kernels" 2>/dev/null; then
  if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
    # fallback: a symlink tree that mirrors the package-dir mapping of pyproject.toml
    mkdir -p /tmp/pp/qdelta && cp -rs "$PWD/qdelta/." /tmp/pp/qdelta/
    for p in kernels harness tasks; do ln -sfn "$PWD/$p" "/tmp/pp/qdelta/$p"; done
    export PYTHONPATH=/tmp/pp${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
python3 -c "import torch, triton, qdelta.kernels.triton as t; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(), t.__file__)" 2>&1 | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee -a "$OUT/env.log"
for step in $steps; do
  case $step in
  tests)
    timeout ${TESTS_TIMEOUT:-480} python3 -m pytest -q -m gpu -s -rA -p no:cacheprovider tests/kernels/test_triton_gpu.py tests/kernels/test_triton_profile.py ${TEST_ARGS:-} 2>&1 \
      | tee "$OUT/gpu_tests$tag.log" | grep -E "ERR|passed|failed|Error" ;;
  profile)  # where the time of one fwd+bwd goes, ours and fla's (harness/bench/profile.py)
    timeout ${PROFILE_TIMEOUT:-180} python3 -m qdelta.harness.bench.profile ${PROFILE_ARGS:-} 2>&1 | grep -v Warn \
      | tee "$OUT/profile$tag.log"
    ;;
  bench)
    timeout ${BENCH_TIMEOUT:-540} python3 -m qdelta.harness.cli bench kernels --out "$OUT/bench" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench$tag.log" | grep -v "^INFO" ;;
  tune)
    timeout ${TUNE_TIMEOUT:-400} python3 -m qdelta.harness.bench.tune --out "$OUT/tune$tag.json" ${TUNE_ARGS:-} \
      ${TUNE_TRIALS:+--trials "$TUNE_TRIALS"} 2>&1 | grep -v Warning ;;
  esac
done
