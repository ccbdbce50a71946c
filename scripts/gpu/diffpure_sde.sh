#!/usr/bin/env bash
# DiffPure on CIFAR-10 (the paper's main model) with the authors' weights and process
# (defenses/diffpure_sde.py): score_sde's checkpoint_8.pth of vp/cifar10_ddpmpp_deep_continuous
# (EMA weights, DDPM++ deep, 106,632,579 params), t* = 0.1, reverse VP-SDE Euler-Maruyama dt = 1e-3
# (100 network calls per purification), RobustBench Standard WRN-28-10, AutoAttack l-inf 8/255 rand
# version with EOT-20 (run_scripts/cifar10/run_cifar_rand_inf.sh: --adv_eps 0.031373 --num_sub 64
# --eot_iter 20), on DiffPure's images: 64 per data_seed, subset diffpure:RUNS:64 of the canonical test set.
#
# Needs: $SCORE_SDE (checkpoint_8.pth), $RB_STANDARD (RobustBench's Standard.pt), and the canonical
# CIFAR-10 test set where `--source torchvision` finds it offline ($PURIFYBENCH_CACHE/data/cifar-10-batches-py).
#
# Size: one network call is 37.1 GFLOP per image (torch FlopCounter), a purification 100 calls =
# 3.71 TFLOP; on this project's 2-core CPU one full purification took 108 s per image (fp32, 1 thread,
# contended machine, measured 2026-12-07). The published attack is up to 2 APGD runs x 100 iterations
# x EOT 20 = 4,000 exact gradients through 100 checkpointed calls (~4 x the forward cost each):
# ~59 PFLOP per image, ~10 GPU-minutes per image at an assumed 100 TFLOP/s sustained (not measured:
# no GPU was lent), so DiffPure's 512 images are ~80 GPU-hours (DiffPure runs them as 8 runs of 64).
# Default here: clean accuracy of the purified model on RUNS=1 run (64 x 100 calls: minutes on one
# GPU); the published attack only with ATTACK=1 (about 10 GPU-hours per run of 64).
set -euo pipefail
: "${SCORE_SDE:?set SCORE_SDE to checkpoint_8.pth}"
: "${RB_STANDARD:?set RB_STANDARD to the RobustBench cifar10/Linf Standard.pt}"
RUNS="${RUNS:-1}"                           # data seeds 0..RUNS-1 (8 for the paper's 512 images)
RUNOUT="${RUNOUT:-runs}"
export PYTHONPATH="${PYTHONPATH:-.}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
COMMON=(--defense diffpure_sde --dataset cifar10 --source torchvision --subset "diffpure:$RUNS:64"
        --defense-opt "weights=$SCORE_SDE" --defense-opt "classifier_weights=$RB_STANDARD"
        --device cuda --batch-size 64 --scale full)
python -m benchmark.cli run "${COMMON[@]}" --attacks clean --out "$RUNOUT/diffpure_sde-clean-r$RUNS"
if [ "${ATTACK:-0}" = "1" ]; then
  python -m benchmark.cli run "${COMMON[@]}" --attacks autoattack_rand --eps 8/255 --out "$RUNOUT/diffpure_sde-aarand-r$RUNS"
fi
