#!/usr/bin/env bash
# ADDT's CIFAR-10 evaluation with ADDT's own fine-tuned purifiers and processes (LYMDLUT/ADDT
# Robustness_test/script_*): PGD-20 + EOT-10 (l-inf 8/255, step 2/255, zero start) on the first
# NUM_TEST canonical test images (ADDT: 1024), for one purifier family:
#   FAMILY=ddpm  defense addt: a diffusers DDPM folder ($WEIGHTS/unet, ADDT's train_DDPM_DDIM_ADDT output),
#                variance fixed_large, add_noise at t=100 and 101 steps (t_star=0.101), as ddpm_attack_eval_linf.py;
#   FAMILY=vp    defense addt_sde: ADDT's VP-SDE DDPM++ output folder ($WEIGHTS/unet/net.pth), predictor-corrector
#                on the 1000-step grid from t=0.101 (101 times, 202 calls), as vp_attack_eval_linf.py;
#   FAMILY=edm   defense addt_edm: the EDMPrecond state dict ADDT's train_edm_ADDT/export.py writes ($WEIGHTS,
#                e.g. ADDT-010000.pth), sigma_max 0.5, 50 stochastic Heun steps (99 calls), S_churn 6, as
#                edm_run_attack_linf.sh.
# Classifier: ADDT uses its own WRN-28-10 (origin.t7, a pickled module we do not load); here RobustBench's
# Standard WRN-28-10 ($RB_STANDARD; the ddpm family's `addt` defense takes registry classifiers only: its default
# cifar10_standard), so the numbers are ADDT's purifier and attack, not its classifier.
#
# Size (FLOPs per image counted with torch FlopCounter; CPU times: 2-core CPU, 1 thread, contended,
# 2026-12-07): vp: 202 x 37.1 GFLOP = 7.5 TFLOP per purification (one call 1.12 s on the CPU, ~226 s per
# purification estimated from it); edm: 99 x 42.4 GFLOP = 4.2 TFLOP (one purification
# measured on the CPU: 165 s); ddpm: 101 x 12.1 GFLOP = 1.2 TFLOP. PGD-20 + EOT-10 is 200 exact gradients (~4 x the forward cost
# each): ~6.0 / 3.4 / 1.0 PFLOP per image, i.e. at an assumed 100 TFLOP/s sustained (no GPU was lent to
# measure) ~60 / 34 / 10 s per image and ~17 / 10 / 3 GPU-hours for ADDT's 1024 images.
# Default: NUM_TEST=64 clean + attack (vp about 1 GPU-hour); NUM_TEST=1024 for the published budget.
set -euo pipefail
: "${FAMILY:?set FAMILY to ddpm, vp or edm}"
: "${WEIGHTS:?set WEIGHTS to the ADDT output of the family (see the header)}"
: "${RB_STANDARD:?set RB_STANDARD to the RobustBench cifar10/Linf Standard.pt}"
NUM_TEST="${NUM_TEST:-64}"
RUNOUT="${RUNOUT:-runs}"
export PYTHONPATH="${PYTHONPATH:-.}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
case "$FAMILY" in
  ddpm) OPTS=(--defense addt --defense-opt "weights=$WEIGHTS" --defense-opt t_star=0.101 --defense-opt variance=fixed_large) ;;
  vp)   OPTS=(--defense addt_sde --defense-opt "weights=$WEIGHTS" --defense-opt "classifier_weights=$RB_STANDARD") ;;
  edm)  OPTS=(--defense addt_edm --defense-opt "weights=$WEIGHTS" --defense-opt "classifier_weights=$RB_STANDARD") ;;
  *) echo "FAMILY must be ddpm, vp or edm" >&2; exit 2 ;;
esac
python -m benchmark.cli run "${OPTS[@]}" --dataset cifar10 --source torchvision --subset "first:$NUM_TEST" \
  --device cuda --batch-size 64 --scale full --attacks clean,pgd_eot --out "$RUNOUT/addt-$FAMILY-n$NUM_TEST"
