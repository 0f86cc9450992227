#!/usr/bin/env bash
# How the committed MQAR run records and the shipped checkpoints were produced: one call on one
# GPU (the `run` device tool; $OUT is the folder whose files come back). From the repo root:
#   BUDGET=280 WORKERS=12 bash results/mqar/run_on_device.sh
# In parallel: the MQAR grid (python -m qdelta.harness.train_grid, priority-ordered, cut by the
# wall-clock budget) and the three text-recall checkpoints of results/configs/recall_*.yaml.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1
OUT=${OUT:-/tmp/qdelta-out}; mkdir -p "$OUT" /tmp/ckpt
BUDGET=${BUDGET:-280}; WORKERS=${WORKERS:-12}; PARTS=${PARTS:-"grid ckpt"}
python3 -m pip install --no-deps -e . -q 2>&1 | tail -1 || true
python3 -c "import qdelta" 2>/dev/null || python3 -m pip install --no-deps --no-build-isolation -e . -q 2>&1 | tail -1
# the task generators return `datasets` objects; where the package is missing, a list-backed
# stand-in is enough for training (only Dataset.from_list and DatasetDict are used)
if ! python3 -c "import datasets" 2>/dev/null; then
  mkdir -p /tmp/shim/datasets
  printf 'class Dataset(list):\n    @classmethod\n    def from_list(cls, rows):\n        return cls(rows)\n\n\nclass DatasetDict(dict):\n    pass\n' > /tmp/shim/datasets/__init__.py
  export PYTHONPATH=/tmp/shim; echo "datasets missing: using the list stand-in"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
if [[ " $PARTS " == *" ckpt "* ]]; then
  for m in qdelta gated_deltanet transformer; do
    timeout $((BUDGET + 15)) python3 -m qdelta.harness.cli train --config results/configs/recall_$m.yaml \
      --output-dir /tmp/ckpt/$m-tiny-recall --no-progress > /tmp/ckpt/$m.log 2>&1 &
  done
fi
if [[ " $PARTS " == *" grid "* ]]; then
  python3 -m qdelta.harness.train_grid results/configs/mqar_grid.yaml /tmp/grid --workers "$WORKERS" \
    --budget-s "$BUDGET" --records-tar "$OUT/mqar_records.tgz" > "$OUT/grid.log" 2>&1
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
