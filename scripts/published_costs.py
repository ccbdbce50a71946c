"""Per-image cost of the published-architecture defenses on this machine (the README table's column).

Usage: OMP_NUM_THREADS=1 python scripts/published_costs.py
Prints JSON: seconds per image (best of a few runs, one thread) for the shipped CIFAR-100 ResNet-56
forward pass, AToP's DeepFillv2 purification at 256 px (RT2), one guided-diffusion 256x256 UNet call
(DiffPure ImageNet purifies with 150 of them: the estimate is 150 x that call), one score_sde DDPM++ deep
call (diffpure_sde: 100 per purification; addt_sde: 202) and one EDM DDPM++ call (addt_edm: 99), and FLOPs
per image counted by torch's FlopCounterMode on the meta device. ``--purify`` also times one full
diffpure_sde and addt_edm purification of one image (about 2 and 1.5 minutes on the project's CPU).
"""
import sys
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from defenses.base import Noise
from defenses.cifar_hub import load_hub_classifier
from defenses.deepfill import AToPDeepFillPurifier, DeepFillGenerator
from defenses.addt_edm import EDMPurifier
from defenses.diffpure_sde import DiffPureSDECifarPurifier
from defenses.edm_unet import EDMPrecond
from defenses.guided_unet import GuidedUNet
from defenses.ncsnpp import NCSNpp


def best(f, n: int = 3) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main() -> None:
    torch.set_num_threads(1)
    res: dict[str, float] = {}
    with torch.device("meta"):
        with FlopCounterMode(display=False) as fc:
            GuidedUNet()(torch.randn(1, 3, 256, 256), torch.tensor([100]))
        res["guided_unet_256_call_gflop"] = fc.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as fc:
            DeepFillGenerator()(torch.randn(1, 5, 256, 256), torch.zeros(1, 1, 256, 256))
        res["deepfill_256_gflop"] = fc.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as fc:
            NCSNpp()(torch.randn(1, 3, 32, 32), torch.tensor([99.9]))
        res["ncsnpp_ddpmpp_deep_call_gflop"] = fc.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as fc:
            EDMPrecond()(torch.randn(1, 3, 32, 32), torch.tensor([0.3]))
        res["edm_ddpmpp_call_gflop"] = fc.get_total_flops() / 1e9
    with torch.no_grad():
        m = load_hub_classifier("cifar100_resnet56")
        x = torch.rand(20, 3, 32, 32)
        res["resnet56_forward_per_image_s"] = best(lambda: m(x)) / 20
        pur = AToPDeepFillPurifier(DeepFillGenerator().eval(), rt="rt2", size=256)
        x = torch.rand(2, 3, 32, 32)
        z = Noise(2, pur.sample_noise(x, torch.Generator().manual_seed(0)))
        res["atop_deepfill_purify_per_image_s"] = best(lambda: pur(x, z), 2) / 2
        u = GuidedUNet().eval()
        x, t = torch.randn(1, 3, 256, 256), torch.tensor([100])
        res["guided_unet_256_call_per_image_s"] = best(lambda: u(x, t), 2)
        res["diffpure_imagenet_purify_per_image_s_est"] = 150 * res["guided_unet_256_call_per_image_s"]
        x32 = torch.rand(1, 3, 32, 32)
        u = NCSNpp().eval()
        res["ncsnpp_call_per_image_s"] = best(lambda: u(2 * x32 - 1, torch.tensor([99.9])))
        res["addt_sde_purify_per_image_s_est"] = 202 * res["ncsnpp_call_per_image_s"]
        e = EDMPrecond().eval()
        res["edm_call_per_image_s"] = best(lambda: e(2 * x32 - 1, torch.tensor([0.3])))
        if "--purify" in sys.argv:
            for key, pur in (("diffpure_sde_purify_per_image_s", DiffPureSDECifarPurifier(u)),
                             ("addt_edm_purify_per_image_s", EDMPurifier(e))):
                z = Noise(1, pur.sample_noise(x32, torch.Generator().manual_seed(0)))
                res[key] = best(lambda: pur(x32, z), 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
