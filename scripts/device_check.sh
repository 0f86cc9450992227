#!/usr/bin/env bash
# One device call (the GPU machine; $OUT is the folder whose files come back): make `import qdelta`
# work, then run the steps named, in order. Usage, from the repo root: bash scripts/device_check.sh STEP...
#   tests    the kernel GPU tests (tests/kernels/test_triton_gpu.py, test_triton_profile.py)
#   models   the GPU tests under tests/models (fla's fused glue against the eager modules, a decoding step
#            replayed as a CUDA graph)
#   profile  where one fwd+bwd goes, ours and fla's (harness/bench/profile.py; PROFILE_ARGS)
#   bench    qdelta bench kernels (BENCH_ARGS, e.g. "--lengths 2048 16384")
#   model    qdelta bench model (MODEL_ARGS, e.g. "--only gen,gen-gdn"); needs the authors' folder
#   mqar     scripts/mqar_speed_check.py (eager vs CUDA-graph MQAR training; MQAR_ARGS)
#   tune     harness/bench/tune.py (TUNE_ARGS, TUNE_TRIALS: JSON for --trials)
#   all      tests models profile bench
# Each step runs under its own time limit (<STEP>_S seconds; defaults below) and tees its log to
# $OUT/<step>$TAG.log; pytest steps take TEST_ARGS (e.g. "-k 1.3B"). Optional inputs, ignored by git and
# carried into the call: .whl/ (wheels: fla-core, einops, flash-linear-attention; installed first),
# .authors/qdelta/ (psmiz/Q-Delta's qdelta/ folder: the authors' kernel and model, never committed),
# QDELTA_COMMIT names the commit in the logs (no .git travels). scripts/device_inputs.sh makes .whl/ and .authors/.
# .tcache/triton.tgz (the Triton cache a previous call brought back as $OUT/triton.tgz: carry it
# again to skip recompiling what did not change; `mkdir -p .tcache && cp <files_at>/triton.tgz .tcache/`).
set -o pipefail
steps=${*:-all}
[ "$steps" = all ] && steps="tests models profile bench"
tag=${TAG:+-$TAG}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 TRITON_CACHE_DIR=/tmp/triton-cache
T0=$(date +%s)
mkdir -p "$TRITON_CACHE_DIR"
[ -f .tcache/triton.tgz ] && tar -xzf .tcache/triton.tgz -C "$TRITON_CACHE_DIR"
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
authors=${QDELTA_AUTHORS_DIR:-$PWD/.authors/qdelta}
[ -d "$authors/qdelta_rule" ] && export QDELTA_AUTHORS_DIR=$authors
if ! python3 -c "import qdelta.kernels" 2>/dev/null; then
  if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
    # fallback: a symlink tree that mirrors the package-dir mapping of pyproject.toml
    rm -rf /tmp/pp && mkdir -p /tmp/pp/qdelta && cp -rs "$PWD/qdelta/." /tmp/pp/qdelta/
    for p in kernels harness tasks; do ln -sfn "$PWD/$p" "/tmp/pp/qdelta/$p"; done
    export PYTHONPATH=/tmp/pp${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
commit=${QDELTA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}  # no .git travels: pass it
python3 -c "import torch, triton, qdelta.kernels.triton as t; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(), t.__file__)" 2>&1 | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee -a "$OUT/env.log"
echo "commit $commit; setup $(( $(date +%s) - T0 ))s" | tee -a "$OUT/env.log"
pytest_gpu="python3 -m pytest -q -m gpu -rA -p no:cacheprovider"
for step in $steps; do
  log="$OUT/$step$tag.log"
  case $step in
  tests) timeout "${TESTS_S:-480}" $pytest_gpu -s tests/kernels/test_triton_gpu.py tests/kernels/test_triton_profile.py ${TEST_ARGS:-} 2>&1 \
      | tee "$log" | grep -E "ERR|passed|failed|Error" ;;
  models) timeout "${MODELS_S:-420}" $pytest_gpu tests/models ${TEST_ARGS:-} 2>&1 \
      | tee "$log" | grep -E "^(PASSED|FAILED|ERROR)|passed|failed" ;;
  profile) timeout "${PROFILE_S:-180}" python3 -m qdelta.harness.bench.profile ${PROFILE_ARGS:-} 2>&1 | grep -v Warn | tee "$log" ;;
  bench) timeout "${BENCH_S:-540}" python3 -m qdelta.harness.cli bench kernels --out "$OUT/bench" ${BENCH_ARGS:-} 2>&1 | tee "$log" | grep -v "^INFO" ;;
  model) QDELTA_COMMIT=$commit timeout "${MODEL_S:-540}" python3 -m qdelta.harness.cli bench model --authors "$authors" --out "$OUT/bench" ${MODEL_ARGS:-} 2>&1 | tee "$log" | grep -v "^\s*$" | tail -40 ;;
  mqar) timeout "${MQAR_S:-300}" python3 scripts/mqar_speed_check.py --out "$OUT/mqar_speed$tag.jsonl" ${MQAR_ARGS:---budget-s 240} 2>&1 | tee "$log" | tail -30 ;;
  tune) timeout "${TUNE_S:-400}" python3 -m qdelta.harness.bench.tune --out "$OUT/tune$tag.json" ${TUNE_ARGS:-} ${TUNE_TRIALS:+--trials "$TUNE_TRIALS"} 2>&1 | grep -v Warning | tee "$log" ;;
  *) echo "unknown step $step (tests models profile bench model mqar tune all)" ;;
  esac
  echo "$step done $(( $(date +%s) - T0 ))s" | tee -a "$OUT/env.log"
done
# the Triton cache for the next call (files back from $OUT: 16 MiB each); skipped when larger
tar -czf /tmp/triton.tgz -C "$TRITON_CACHE_DIR" . 2>/dev/null
if [ "$(stat -c %s /tmp/triton.tgz 2>/dev/null || echo 99999999)" -lt 16000000 ]; then cp /tmp/triton.tgz "$OUT/"; else echo "Triton cache over 16 MB: not brought back"; fi
