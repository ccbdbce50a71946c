#!/usr/bin/env bash
# AToP purifiers on one GPU (~7 min on an H100; hard stop at 7.8 min).
# Run from the repo root with PYTHONPATH=. and:
#   $DATA            folder holding cifar10-jpeg/{train,test}/<class>/*.jpg
#   $RUNOUT          output folder
#   $CLASSIFIER_RUN  the CIFAR-10 standard classifier's run dir (weights.safetensors + recipe.json)
# One process decodes CIFAR-10 once onto the GPU, then (each phase stops at its share of the
# time budget and saves what it has):
#   atop_gan_pre  GAN generator pre-training, L_df, RT1+RT2 inputs (shared by all RTs)
#   atop_gan_rt2  AToP fine-tuning behind RT2 (the `atop_gan` defense)
#   atop_ae_pre   masked-AE pre-training, L_mae, RT2
#   atop_ae       AToP fine-tuning of the AE behind RT2
#   atop_gan_rt1  AToP fine-tuning behind RT1
#   atop_gan_rt3  AToP fine-tuning behind RT3
# Output (8 files): $RUNOUT/<variant>/weights.safetensors (fp16 purifier weights, 6 files),
# $RUNOUT/recipe.json (one recipe per variant, under "variants"), $RUNOUT/log.txt.
set -euo pipefail
: "${DATA:?set DATA to the folder holding cifar10-jpeg/}"
: "${RUNOUT:?set RUNOUT to the output folder}"
if [ -z "${CLASSIFIER_RUN:-}" ]; then
  echo "warning: CLASSIFIER_RUN is not set; fine-tuning needs the classifier's run dir (pre-training still runs)" >&2
fi
export PYTHONPATH="${PYTHONPATH:-.}"
mkdir -p "$RUNOUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$RUNOUT/log.txt" || true
# training phases share ATOP_BUDGET seconds (default 385); `timeout` is a last-resort guard:
# every finished phase is already on disk.
# (ATOP_DEVICE=cpu and extra arguments such as `--set train_limit=256` are for smoke tests.)
set +e
timeout -k 10 "${ATOP_TIMEOUT:-455}" python -u -m benchmark.train.atop job \
  --out "$RUNOUT" --data "$DATA" --device "${ATOP_DEVICE:-cuda}" --budget "${ATOP_BUDGET:-385}" "$@" 2>&1 \
  | tee -a "$RUNOUT/log.txt"
status=${PIPESTATUS[0]}
set -e
find "$RUNOUT" -name '*.tmp' -delete 2>/dev/null || true
find "$RUNOUT" -name 'checkpoint.pt' -delete 2>/dev/null || true
ls -la "$RUNOUT" "$RUNOUT"/*/ 2>/dev/null | tee -a "$RUNOUT/log.txt" || true
exit "$status"
