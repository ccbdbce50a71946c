#!/usr/bin/env bash
# GPU job: train the CIFAR-10 DDPM (configs/train/ddpm_cifar10.yaml) under a wall-clock
# deadline, then, when $CLASSIFIER_RUN names a classifier run folder (weights.safetensors +
# recipe.json), ADDT-fine-tune it (configs/train/addt_cifar10.yaml).
#
# Run from the repo root with PYTHONPATH=. ; $DATA holds cifar10-jpeg/{train,test}/<class>/*.jpg,
# results go to $RUNOUT/ddpm/ and $RUNOUT/addt/ (weights.safetensors = EMA weights, recipe.json,
# train.log; the resumable checkpoint.pt stays in the work folder because it holds optimizer
# state and exceeds the size limit for returned files).
# Expected wall time on one H100: ~25 s start-up and data decoding, DDPM_LIMIT (330 s) of
# training, ~10 s sanity metric and writing, then ADDT for at most ADDT_LIMIT (70 s) + ~20 s:
# about 7.5 minutes, below the 8-minute limit (the ADDT deadline shrinks if the DDPM phase ran long).
set -euo pipefail
: "${DATA:?set DATA to the folder holding cifar10-jpeg/}"
: "${RUNOUT:?set RUNOUT to the output folder}"
export PYTHONPATH="${PYTHONPATH:-.}"
export PURIFYBENCH_CACHE="${PURIFYBENCH_CACHE:-/tmp/purifybench-cache}"
DDPM_LIMIT="${DDPM_LIMIT:-330}"
ADDT_LIMIT="${ADDT_LIMIT:-70}"
TOTAL_BUDGET="${TOTAL_BUDGET:-465}"   # seconds this script may use before ADDT's final write-up
WORK="${WORK:-/tmp/purifybench-gpu-work}"
DEVICE="${DEVICE:-cuda}"                                   # DEVICE=cpu + the smoke configs = CPU smoke test
DDPM_CONFIG="${DDPM_CONFIG:-configs/train/ddpm_cifar10.yaml}"
ADDT_CONFIG="${ADDT_CONFIG:-configs/train/addt_cifar10.yaml}"
mkdir -p "$RUNOUT/ddpm" "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

copy_out() {  # the few files that come back
  local src="$1" dst="$2"
  mkdir -p "$dst"
  for f in weights.safetensors recipe.json train.log; do
    [ -f "$src/$f" ] && cp "$src/$f" "$dst/$f"
  done
  return 0
}

python - "$DDPM_LIMIT" "$WORK/ddpm" "$DDPM_CONFIG" "$DEVICE" <<'PY'
import os, sys
from benchmark.train.ddpm import main
main(sys.argv[3], device=sys.argv[4], out_dir=sys.argv[2], data_root=os.environ["DATA"], resume=True,
     overrides={"time_limit_s": float(sys.argv[1])})
PY
copy_out "$WORK/ddpm" "$RUNOUT/ddpm"
echo "ddpm phase done after ${SECONDS}s"

if [ -n "${CLASSIFIER_RUN:-}" ] && [ -f benchmark/train/addt.py ]; then
  left=$(( TOTAL_BUDGET - SECONDS - 25 ))
  limit=$(( left < ADDT_LIMIT ? left : ADDT_LIMIT ))
  if [ "$limit" -gt 10 ]; then
    python - "$limit" "$WORK/addt" "$WORK/ddpm" "$ADDT_CONFIG" "$DEVICE" <<'PY'
import os, sys
from benchmark.train.addt import main
main(sys.argv[4], device=sys.argv[5], out_dir=sys.argv[2], data_root=os.environ["DATA"], resume=True,
     overrides={"time_limit_s": float(sys.argv[1]), "init": sys.argv[3], "classifier_run": os.environ["CLASSIFIER_RUN"]})
PY
    copy_out "$WORK/addt" "$RUNOUT/addt"
  else
    echo "skipping ADDT: only ${left}s left"
  fi
else
  echo "skipping ADDT: CLASSIFIER_RUN not set"
fi
echo "total ${SECONDS}s"
