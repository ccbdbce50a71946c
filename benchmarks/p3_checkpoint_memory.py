"""P3: exact gradients through K-step DDPM purification, with and without gradient checkpointing.

What is measured, per K in --ks, in a FRESH subprocess per (K, checkpointing) so one case's
allocator state cannot leak into another's:
  * peak memory of one input-gradient of CE(classifier(purify(x))) w.r.t. x: on CUDA
    ``torch.cuda.max_memory_allocated`` minus the memory held before the gradient; on CPU the
    peak resident set (VmHWM, reset through /proc/self/clear_refs right before the gradient)
    minus the resident set before it
    (peak of the first full-batch gradient after a one-image warm-up: on CPU freed pages stay
    resident, so later gradients would not show it);
  * the wall time of that gradient (median of --repeats after it).

The UNet has the shipped DDPM config (configs/train/ddpm_cifar10.yaml) with seeded random
weights: memory and time do not depend on the weight values, and this way P3 runs whether or not
DDPM weights are shipped. The classifier is the shipped ``cifar10_standard``. t* = 0.1 (100
noise levels, as DiffPure's CIFAR-10 setting), K strided reverse steps.

Goals (issue #9): checkpointed peak at K=100 <= 1.5x checkpointed peak at K=1; checkpointed
time <= 1.6x the plain autograd time where plain autograd fits.

Run:  python benchmarks/p3_checkpoint_memory.py [--device cuda] [--n 8] [--ks 1,10,100] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def one_case(device: str, n: int, k: int, ckpt: bool, repeats: int, threads: int) -> dict[str, float]:
    """Run in a child process: peak memory (MiB) and median time (s) of one input gradient."""
    import yaml

    from benchmark.data import load_eval_set
    from benchmark.registry import CLASSIFIERS, load_builtins
    from defenses.base import Noise
    from defenses.diffpure import DiffusionPurifier
    from defenses.diffusion import Schedule
    from defenses.unet import UNet, UNetConfig

    if threads:
        torch.set_num_threads(threads)
    load_builtins()
    cfg = yaml.safe_load((ROOT / "configs/train/ddpm_cifar10.yaml").read_text())
    torch.manual_seed(0)  # benchmark-only: seeded random UNet weights (values do not matter here)
    unet = UNet(UNetConfig(**cfg["unet"])).to(device).eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    sched = Schedule(T=cfg["T"], beta_start=cfg["beta_start"], beta_end=cfg["beta_end"])
    pur = DiffusionPurifier(unet, sched, t_star=0.1, steps=k, sampler="ddpm", use_checkpoint=ckpt).to(device)
    clf = CLASSIFIERS.create("cifar10_standard", device=device)
    ev = load_eval_set("cifar10", f"first:{n}")
    x, y = ev.images.to(device), ev.labels.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    noise = Noise(n, pur.sample_noise(x, g))

    def grad() -> torch.Tensor:
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(clf(pur(xr, noise)), y)
        (gx,) = torch.autograd.grad(loss, xr)
        return gx

    cuda = torch.device(device).type == "cuda"
    # warm-up on ONE image (one-time kernel/thread-pool set-up out of the measurement), then the
    # peak of the first full-batch gradient: on CPU freed pages stay resident, so a full-size
    # warm-up would hide the peak of every later gradient
    xr1 = x[:1].clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(clf(pur(xr1, noise.select(torch.arange(1)))), y[:1]), xr1)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kib("VmRSS")
        _reset_peak_rss()
    grad()
    if cuda:
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (_rss_kib("VmHWM") - base) / 1024
    times = []  # the first gradient was the warm-up of the timed ones
    for _ in range(repeats):
        t0 = time.perf_counter()
        grad()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"peak_mib": peak, "time_s": statistics.median(times), "time_min": min(times), "time_max": max(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=8, help="images (first:N of the embedded CIFAR-10 subset)")
    p.add_argument("--ks", default="1,10,100", help="reverse steps K to measure")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--plain-max-k", type=int, default=100, help="largest K to try without checkpointing")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        k, ckpt = args.child.split(":")
        print(json.dumps(one_case(args.device, args.n, int(k), ckpt == "1", args.repeats, args.threads)))
        return
    ks = [int(v) for v in args.ks.split(",")]
    rows: dict[tuple[int, bool], dict[str, float]] = {}
    for k in ks:
        for ckpt in (True, False):
            if not ckpt and k > args.plain_max_k:
                continue
            cmd = [sys.executable, __file__, "--device", args.device, "--n", str(args.n), "--repeats",
                   str(args.repeats), "--threads", str(args.threads), "--child", f"{k}:{int(ckpt)}"]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(f"K={k} checkpoint={ckpt}: failed ({out.stderr.strip().splitlines()[-1:]})")
                continue
            rows[(k, ckpt)] = json.loads(out.stdout.strip().splitlines()[-1])
            r = rows[(k, ckpt)]
            print(f"K={k:>4} {'checkpointed' if ckpt else 'plain       '}: peak +{r['peak_mib']:8.1f} MiB  "
                  f"time {r['time_s']:.3f} s (min {r['time_min']:.3f}, max {r['time_max']:.3f})", flush=True)
    kmin, kmax = min(ks), max(ks)
    if (kmin, True) in rows and (kmax, True) in rows:
        mem = rows[(kmax, True)]["peak_mib"] / max(rows[(kmin, True)]["peak_mib"], 1e-9)
        print(f"RATIO peak(checkpointed K={kmax}) / peak(checkpointed K={kmin}) = {mem:.3f}  "
              f"(goal <= 1.5: {'OK' if mem <= 1.5 else 'ABOVE GOAL'})")
    for k in ks:
        if (k, True) in rows and (k, False) in rows:
            a, b = rows[(k, True)], rows[(k, False)]
            print(f"RATIO time(checkpointed)/time(plain) at K={k} = {a['time_s'] / b['time_s']:.3f}  "
                  f"(goal <= 1.6: {'OK' if a['time_s'] / b['time_s'] <= 1.6 else 'ABOVE GOAL'}); "
                  f"memory plain/checkpointed = {b['peak_mib'] / max(a['peak_mib'], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
