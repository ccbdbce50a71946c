#!/usr/bin/env bash
# GPU job: the ImageNette standard classifier (configs/train/imagenette_standard.yaml, 64 px).
# Run from the repo root with PYTHONPATH=. and
#   $DATA    folder holding imagenette-pack/ made by
#            `python scripts/pack_imagenette.py --size 64 --out $DATA/imagenette-pack`
#            (or imagenette-pack.tar.gz there or in .carry/, which is then unpacked to /tmp)
#   $RUNOUT  output folder: $RUNOUT/imagenette_standard/{weights.safetensors,recipe.json,train.log}
# Ends with clean accuracy on eval224/ (the embedded subset: first 20 per class of
# imagenette2/val at native 224 px, resized to 64 px inside the model) and on the whole val
# split (3,925 images, packed at 64 px), stored in recipe.json "metrics".
# Expected on one H100: ~1 min (data ~5 s, 80 epochs x 37 steps x ~0.3 s/epoch, eval);
# training capped at opt.time_budget_s=300 s, whole job at ~7 min by `timeout`.
set -uo pipefail
: "${DATA:?set DATA to the folder holding imagenette-pack/}"
: "${RUNOUT:?set RUNOUT to the output folder}"
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1
DEVICE="${ZOO_DEVICE:-cuda}"
CKPT="${ZOO_CKPT:-/tmp/zoo-ckpt}"
mkdir -p "$RUNOUT" "$CKPT"
ROOT="$DATA"
if [ ! -d "$DATA/imagenette-pack/train" ]; then
  for tgz in "$DATA/imagenette-pack.tar.gz" .carry/imagenette-pack.tar.gz; do
    if [ -f "$tgz" ]; then
      mkdir -p /tmp/zoo-data && tar xzf "$tgz" -C /tmp/zoo-data && ROOT=/tmp/zoo-data
      break
    fi
  done
fi
if [ ! -d "$ROOT/imagenette-pack/train" ]; then
  echo "error: no imagenette-pack/train under \$DATA=$DATA (nor an imagenette-pack.tar.gz)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
status=0
t0=$(date +%s)
timeout -k 10 "${INET_TIMEOUT:-420}" python -u -m benchmark.train.classifier \
  --config configs/train/imagenette_standard.yaml --device "$DEVICE" --data-root "$ROOT" \
  --out "$RUNOUT/imagenette_standard" --set checkpoint_dir="$CKPT/imagenette_standard" "$@" || status=$?
echo "imagenette_standard: exit $status after $(( $(date +%s) - t0 )) s"
find "$RUNOUT" -name '*.tmp' -delete 2>/dev/null || true
m=imagenette_standard
[ -f "$RUNOUT/$m/recipe.json" ] && python -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], 'epochs', r['epochs_run'], 'train', r['train_time_s'], 's, wall', r['wall_time_s'], 's,', json.dumps(r['metrics']))" "$RUNOUT/$m/recipe.json" "$m"
ls -la "$RUNOUT"/*/ 2>/dev/null || true
exit "$status"
