#!/usr/bin/env bash
# GPU job: the CIFAR-10 model zoo, trained one after the other on one GPU.
#   cifar10_standard  configs/train/cifar10_standard.yaml (airbench94-style, 30 epochs)
#   cifar10_at_pgd    configs/train/cifar10_at_pgd.yaml   (PGD-7 AT, eps 8/255, <= 30 epochs)
# Run from the repo root with PYTHONPATH=. and
#   $DATA    folder holding cifar10-jpeg/{train,test}/<class>/*.jpg
#            (or cifar10-jpeg.tar.gz there or in .carry/, which is then unpacked to /tmp)
#   $RUNOUT  output folder: $RUNOUT/<model>/{weights.safetensors,recipe.json,train.log}
#            (6 files, fp32 weights 7.9 MB and 13.1 MB; checkpoints stay in /tmp)
# Each model ends with its evaluation, stored in recipe.json "metrics": clean accuracy on the
# embedded-equivalent subset (first 100 per class of the JPEG test split) and on all 10,000
# test images; for AT also PGD-20 (eps 8/255, step 2/255, random start, fp32) on both.
# Expected on one H100: standard ~0.5 min (data ~10 s, 30 epochs x ~0.4 s, eval), AT ~2-5 min
# (30 epochs x ~4 s if ~90 TFLOP/s effective; its training is capped at opt.time_budget_s=270 s
# by cutting epochs after epochs 1-2), ~7.5 min worst case with the `timeout` guards below.
# Smoke test on a CPU: ZOO_DEVICE=cpu bash scripts/gpu/zoo_cifar.sh --set data.max_per_class=20 \
#   --set opt.epochs=1 --set data.full_eval=false --set adv.eval_full=false --set adv.holdout=20
set -uo pipefail
: "${DATA:?set DATA to the folder holding cifar10-jpeg/}"
: "${RUNOUT:?set RUNOUT to the output folder}"
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1
DEVICE="${ZOO_DEVICE:-cuda}"
CKPT="${ZOO_CKPT:-/tmp/zoo-ckpt}"
mkdir -p "$RUNOUT" "$CKPT"
ROOT="$DATA"
if [ ! -d "$DATA/cifar10-jpeg/train" ]; then
  for tgz in "$DATA/cifar10-jpeg.tar.gz" .carry/cifar10-jpeg.tar.gz; do
    if [ -f "$tgz" ]; then
      mkdir -p /tmp/zoo-data && tar xzf "$tgz" -C /tmp/zoo-data && ROOT=/tmp/zoo-data && cp -f "$tgz" /tmp/zoo-data/ 2>/dev/null
      break
    fi
  done
fi
if [ ! -d "$ROOT/cifar10-jpeg/train" ]; then
  echo "error: no cifar10-jpeg/train under \$DATA=$DATA (nor a cifar10-jpeg.tar.gz)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
status=0
t0=$(date +%s)
timeout -k 10 "${STD_TIMEOUT:-120}" python -u -m benchmark.train.classifier \
  --config configs/train/cifar10_standard.yaml --device "$DEVICE" --data-root "$ROOT" \
  --out "$RUNOUT/cifar10_standard" --set checkpoint_dir="$CKPT/cifar10_standard" "$@" || status=$?
echo "cifar10_standard: exit $status after $(( $(date +%s) - t0 )) s"
t1=$(date +%s)
timeout -k 10 "${AT_TIMEOUT:-340}" python -u -m benchmark.train.classifier \
  --config configs/train/cifar10_at_pgd.yaml --device "$DEVICE" --data-root "$ROOT" \
  --out "$RUNOUT/cifar10_at_pgd" --set checkpoint_dir="$CKPT/cifar10_at_pgd" "$@" || status=$?
echo "cifar10_at_pgd: exit $status after $(( $(date +%s) - t1 )) s (total $(( $(date +%s) - t0 )) s)"
find "$RUNOUT" -name '*.tmp' -delete 2>/dev/null || true
for m in cifar10_standard cifar10_at_pgd; do
  [ -f "$RUNOUT/$m/recipe.json" ] && python -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], 'epochs', r['epochs_run'], 'train', r['train_time_s'], 's, wall', r['wall_time_s'], 's,', json.dumps(r['metrics']))" "$RUNOUT/$m/recipe.json" "$m"
done
ls -la "$RUNOUT"/*/ 2>/dev/null || true
exit "$status"
