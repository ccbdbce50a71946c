#!/usr/bin/env bash
# DiffPure on ImageNet with the authors' weights and process (defenses/diffpure_imagenet.py):
# guided-diffusion 256x256_diffusion_uncond.pt, t* = 0.15, reverse VP-SDE Euler-Maruyama dt = 1e-3
# (150 UNet calls per purification, fp16 torso on CUDA as DiffPure's use_fp16), torchvision
# ResNet-50 (run_in_rand_inf.sh) or Wide-ResNet-50-2 (run_in_rand_inf_50-2.sh), AutoAttack
# l-inf 4/255 (--adv_eps 0.0157), rand version with EOT-20, on DiffPure's images: 16 per data_seed
# (--num_sub 16), subset diffpure:RUNS:16 over the 50,000 val images in ImageFolder order.
#
# Needs: $IMAGENET (a folder with val/<wnid>/*.JPEG), $UNET (256x256_diffusion_uncond.pt from
# https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt),
# $CLS_WEIGHTS (resnet50-0676ba61.pth or wide_resnet50_2-95faca4d.pth from download.pytorch.org/models).
#
# Size (measured, not guessed, where stated): one UNet call is 2.24 TFLOP per image (torch
# FlopCounter, 256 px); a purification is 150 calls = 336 TFLOP; on this project's 2-core CPU one
# call took 86 s per image (fp32, 1 thread, contended machine, measured 2026-12-02),
# i.e. hours per purification: CPU is for reduced-width tests only. Per image, the published attack
# is 2 APGD runs x 100 iterations x EOT 20 = 4,000 exact gradients through 150 checkpointed calls
# (~4 x the forward cost each): ~5.4 EFLOP per image, about 5 GPU-hours per image at an assumed
# 300 TFLOP/s sustained fp16 on one H100/H200 (not measured here: no GPU was lent), so the 512
# published images are thousands of GPU-hours; DiffPure itself spreads them over runs of 16.
# Default here: clean accuracy of the purified model on RUNS=1 run (16 images, ~16 x 150 calls:
# minutes on one GPU), then the published attack only with ATTACK=1 on that run's images (hours).
set -euo pipefail
: "${IMAGENET:?set IMAGENET to a folder holding val/<wnid>/*.JPEG}"
: "${UNET:?set UNET to 256x256_diffusion_uncond.pt}"
: "${CLS_WEIGHTS:?set CLS_WEIGHTS to the torchvision classifier file}"
CLASSIFIER="${CLASSIFIER:-resnet50}"       # resnet50 | wide_resnet50_2
RUNS="${RUNS:-1}"                           # data seeds 0..RUNS-1 (32 for the paper's 512 images)
RUNOUT="${RUNOUT:-runs}"
export PYTHONPATH="${PYTHONPATH:-.}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
COMMON=(--defense diffpure_imagenet --dataset imagenet --source "folder:$IMAGENET" --subset "diffpure:$RUNS:16"
        --defense-opt "weights=$UNET" --defense-opt "classifier=$CLASSIFIER" --defense-opt "classifier_weights=$CLS_WEIGHTS"
        --device cuda --batch-size 4 --scale full)
python -m benchmark.cli run "${COMMON[@]}" --attacks clean --out "$RUNOUT/diffpure_imagenet-$CLASSIFIER-clean-r$RUNS"
if [ "${ATTACK:-0}" = "1" ]; then
  python -m benchmark.cli run "${COMMON[@]}" --attacks autoattack_rand --eps 4/255 \
    --out "$RUNOUT/diffpure_imagenet-$CLASSIFIER-aarand-r$RUNS"
fi
