#!/usr/bin/env bash
# How the committed MQAR run records and the shipped checkpoints were produced: one call on a GPU
# machine (the `run` device tool; $OUT is the folder whose files come back). From the repo root:
#   BUDGET=280 WORKERS=12 bash scripts/run_on_device.sh               # first run: 1 GPU, grid + ckpt
#   GPUS=4 WORKERS=32 BUDGET=480 PARTS=grid GRID=configs/mqar_grid_long.yaml \
#     bash scripts/run_on_device.sh                                   # long grid on 4 GPUs
# In parallel: the MQAR grid (python -m qdelta.harness.train.grid, priority-ordered, cut by the
# wall-clock budget; worker i on GPU i % GPUS) and the three text-recall checkpoints of
# configs/recall_*.yaml. Environment: BUDGET (s), WORKERS, PARTS ("grid ckpt"), GRID (grid
# YAML), GPUS (default: every visible GPU), MPS=1 (start the CUDA MPS daemon for the grid when
# nvidia-cuda-mps-control exists and a CUDA client works under it), GRID_SET (extra --set KEY=VALUE
# words for the grid, e.g. for a CPU smoke test), INSTALL=0 (skip the editable install where qdelta
# is already importable), PACK_WEIGHTS (run names whose final weights come back, one
# weights_<run>.tgz each). Comes back in $OUT: mqar_records.tgz, grid.log, gpu_util.txt, the
# weights_<run>.tgz files and one ckpt_<model>.tgz per checkpoint.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1
OUT=${OUT:-/tmp/qdelta-out}; mkdir -p "$OUT" /tmp/ckpt
BUDGET=${BUDGET:-280}; WORKERS=${WORKERS:-12}; PARTS=${PARTS:-"grid ckpt"}
GRID=${GRID:-configs/mqar_grid.yaml}; GRID_DIR=${GRID_DIR:-/tmp/grid}; MPS=${MPS:-0}
if [ "${INSTALL:-1}" = 1 ]; then python3 -m pip install --no-deps -e . -q 2>&1 | tail -1 || true; fi
python3 -c "import qdelta" 2>/dev/null || python3 -m pip install --no-deps --no-build-isolation -e . -q 2>&1 | tail -1
# the task generators return `datasets` objects; where the package is missing, a list-backed
# stand-in is enough for training (only Dataset.from_list and DatasetDict are used)
if ! python3 -c "import datasets" 2>/dev/null; then
  mkdir -p /tmp/shim/datasets
  printf 'class Dataset(list):\n    @classmethod\n    def from_list(cls, rows):\n        return cls(rows)\n\n\nclass DatasetDict(dict):\n    pass\n' > /tmp/shim/datasets/__init__.py
  export PYTHONPATH=/tmp/shim${PYTHONPATH:+:$PYTHONPATH}; echo "datasets missing: using the list stand-in"
fi
HAVE_SMI=0; command -v nvidia-smi > /dev/null && HAVE_SMI=1
if [ "$HAVE_SMI" = 1 ]; then
  nvidia-smi -L
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, 'GPUs', torch.cuda.device_count())"
if [[ " $PARTS " == *" ckpt "* ]]; then
  for m in qdelta gated_deltanet transformer; do
    timeout $((BUDGET + 15)) python3 -m qdelta.harness.cli train --config configs/recall_$m.yaml \
      --output-dir /tmp/ckpt/$m-tiny-recall --no-progress > /tmp/ckpt/$m.log 2>&1 &
  done
fi
if [[ " $PARTS " == *" grid "* ]]; then
  MPS_ON=0
  if [ "$MPS" = 1 ]; then
    if command -v nvidia-cuda-mps-control > /dev/null; then
      export CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps} CUDA_MPS_LOG_DIRECTORY=${CUDA_MPS_LOG_DIRECTORY:-/tmp/nvidia-mps-log}
      mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
      if nvidia-cuda-mps-control -d && timeout 30 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
        MPS_ON=1; echo "MPS: daemon started, a CUDA client works under it"
      else
        echo "MPS: daemon start or first CUDA client failed; stopping it, running without MPS"
        echo quit | nvidia-cuda-mps-control 2>/dev/null; sleep 2
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
      fi
    else
      echo "MPS: nvidia-cuda-mps-control not on PATH; running without MPS"
    fi
  fi
  EXTRA=(); [ -n "${GPUS:-}" ] && EXTRA=(--gpus "$GPUS")
  read -ra SET_WORDS <<< "${GRID_SET:-}"  # no globbing of words such as d_models=[64]
  for kv in ${SET_WORDS[@]+"${SET_WORDS[@]}"}; do EXTRA+=(--set "$kv"); done
  SNAP_PID=
  if [ "$HAVE_SMI" = 1 ]; then  # are the GPUs busy? one snapshot ~60 s in, one at half the budget
    ( trap 'kill $nap 2>/dev/null; exit 0' TERM
      sleep 60 & nap=$!; wait $nap; echo "== $(date +%T) ~60 s into the grid"
      nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
      sleep $((BUDGET / 2 > 60 ? BUDGET / 2 - 60 : 1)) & nap=$!; wait $nap; echo "== $(date +%T) ~half of the budget"
      nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv ) > "$OUT/gpu_util.txt" 2>&1 &
    SNAP_PID=$!
  fi
  # the grid stops its runs at the budget; the timeout only guards against a hang before packing
  timeout $((BUDGET + 60)) python3 -m qdelta.harness.train.grid "$GRID" "$GRID_DIR" --workers "$WORKERS" \
    --budget-s "$BUDGET" --records-tar "$OUT/mqar_records.tgz" ${EXTRA[@]+"${EXTRA[@]}"} > "$OUT/grid.log" 2>&1
  echo "grid exit status $?"
  if [ ! -s "$OUT/mqar_records.tgz" ] && [ -d "$GRID_DIR" ]; then  # killed before packing: pack by hand
    (cd "$GRID_DIR" && tar czf "$OUT/mqar_records.tgz" $(ls grid.json 2>/dev/null) \
      $(ls -d */metrics.json */train_config.yaml */train_log.jsonl */error.txt 2>/dev/null))
    echo "packed the run folders by hand"
  fi
  # PACK_WEIGHTS="run run ...": the final weights of those finished runs (model.safetensors, config,
  # tokenizer, train_config; no optimizer state) as $OUT/weights_<run>.tgz, one file each, since a
  # d_model 128 model at vocab 8192 is ~10 MB in fp32; a file over 15 MB, or one past the 8 files
  # that come back, is dropped with a message
  for run in ${PACK_WEIGHTS:-}; do
    if [ ! -f "$GRID_DIR/$run/metrics.json" ] || [ ! -f "$GRID_DIR/$run/model.safetensors" ]; then
      echo "weights: $run did not finish; not packed"; continue
    fi
    if [ "$(ls "$OUT" | wc -l)" -ge 7 ]; then echo "weights: $run skipped (8-file limit of \$OUT)"; continue; fi
    tar czf "$OUT/weights_$run.tgz" -C "$GRID_DIR" --exclude=checkpoints --exclude=trainer_state.pt "$run"
    size=$(stat -c %s "$OUT/weights_$run.tgz")
    if [ "$size" -gt $((15 * 1024 * 1024)) ]; then rm -f "$OUT/weights_$run.tgz"; echo "weights: $run is $size bytes packed; dropped"
    else echo "weights: $run packed, $size bytes"; fi
  done
  [ "$MPS_ON" = 1 ] && { echo quit | nvidia-cuda-mps-control; echo "MPS: daemon stopped"; }
  [ -n "$SNAP_PID" ] && { kill "$SNAP_PID" 2>/dev/null; wait "$SNAP_PID" 2>/dev/null; cat "$OUT/gpu_util.txt"; }
  grep -v "^INFO\|Writing" "$OUT/grid.log" | tail -40
fi
wait
if [[ " $PARTS " == *" ckpt "* ]]; then
  for m in qdelta gated_deltanet transformer; do
    tail -3 /tmp/ckpt/$m.log
    # a finished run ships its final model; one cut by the budget ships its last checkpoint
    if [ -f /tmp/ckpt/$m-tiny-recall/metrics.json ]; then what="--exclude=checkpoints $m-tiny-recall"
    else what="$m-tiny-recall/checkpoints $m-tiny-recall/train_log.jsonl"; fi
    tar czf "$OUT/ckpt_$m.tgz" --exclude=trainer_state.pt -C /tmp/ckpt $what $m.log
  done
fi
ls -la "$OUT"
