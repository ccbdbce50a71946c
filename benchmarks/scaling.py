"""Scaling: wall time of ``pgd`` against the number of images, and of ``pgd_eot`` against EOT K.

An attack's cost should be linear in the work it is given: images x steps for PGD on a
deterministic defense, draws x images x steps for PGD+EOT on a stochastic one. A fixed cost
that does not shrink (intercept) or a super-linear term (a poor fit, a large deviation at the
ends) would show up here. Curves:

* ``pgd`` on ``--defense`` (default ``standard``, deterministic) at ``--sizes`` images (the first
  N embedded CIFAR-10 test images, one batch each). Early stopping on fooled images
  (``skip_fooled``) and best-iterate tracking are off (as in P2), so every image does every step
  and the cost does not depend on how many images fall: the curve measures compute, not the
  defense's robustness.
* ``pgd_eot`` (``noise_policy=eot:K``, the preset's zero start) at ``--eots`` draws on the same
  classifier behind Gaussian noise (sigma 0.03, the stochastic defense of P1), ``--eot-n`` images.

For each curve: the median time per point over ``--repeats`` (the points are interleaved,
order alternating, by ``_common.race``), a least-squares line t = slope * x + intercept with its
R^2, and the largest relative deviation of a point from the line, |t - fit| / fit. ``--clock``
is ``wall`` (default) or ``cpu`` (this process's CPU seconds, ``time.process_time``: on a CPU
shared with a higher-priority job the wall time of a niced process is mostly scheduling; use it
with ``--threads 1``, where CPU seconds are the compute).

Run:  python benchmarks/scaling.py [--device cuda] [--sizes 16,32,64,128] [--eots 1,2,4,8] [--steps 10] [--repeats 3] [--clock wall]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, race, setup  # noqa: E402
from p1_eot_vs_torchattacks import Gaussian  # noqa: E402

from defenses.base import Defense  # noqa: E402


def linear_fit(xs: list[float], ts: list[float]) -> dict[str, float]:
    """Least-squares t = slope * x + intercept; R^2; max |t - fit| / fit over the points."""
    n = len(xs)
    mx, mt = sum(xs) / n, sum(ts) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (t - mt) for x, t in zip(xs, ts)) / sxx
    intercept = mt - slope * mx
    fit = [slope * x + intercept for x in xs]
    ss_res = sum((t - f) ** 2 for t, f in zip(ts, fit))
    ss_tot = sum((t - mt) ** 2 for t in ts)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    dev = max(abs(t - f) / abs(f) for t, f in zip(ts, fit)) if all(f != 0 for f in fit) else float("inf")
    return {"slope": slope, "intercept": intercept, "r2": r2, "max_rel_dev": dev}


def curve(title: str, unit: str, xs: list[int], times: dict[str, list[float]]) -> dict[str, float]:
    """Print the medians and the linear fit of one curve; returns the fit."""
    med = [statistics.median(v) for v in times.values()]
    print(f"{title}")
    for x, (k, v) in zip(xs, times.items()):
        print(f"  {unit}={x:>4}: median {statistics.median(v):8.3f} s  (min {min(v):.3f}, max {max(v):.3f}, "
              f"{len(v)} repeats)  {statistics.median(v) / x:.4f} s per {unit}")
    f = linear_fit([float(x) for x in xs], med)
    print(f"  FIT t = {f['slope']:.4f} s/{unit} * {unit} + {f['intercept']:+.3f} s;  R^2 = {f['r2']:.4f};  "
          f"max relative deviation from linear = {100 * f['max_rel_dev']:.1f}%")
    return f


def _ints(text: str) -> list[int]:
    vals = [int(v) for v in text.split(",") if v.strip()]
    if len(vals) < 3 or any(v <= 0 for v in vals):
        raise SystemExit(f"error: need at least 3 positive values for a fit, got {text!r}")
    return vals


def main() -> None:
    p = parser(__doc__.split("\n")[0], n=0, repeats=3)
    p.add_argument("--sizes", default="16,32,64,128", help="image counts for the pgd curve")
    p.add_argument("--eots", default="1,2,4,8", help="EOT draws for the pgd_eot curve")
    p.add_argument("--eot-n", type=int, default=16, help="images for the pgd_eot curve")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sigma", type=float, default=0.03)
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"), help="wall time, or this process's CPU time")
    args = p.parse_args()
    if args.clock == "cpu" and torch.device(args.device).type == "cuda":
        raise SystemExit("error: --clock cpu measures CPU work; on CUDA use the wall clock")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    from attacks.presets import make_attack

    sizes, eots = _ints(args.sizes), _ints(args.eots)
    args.n = max(max(sizes), args.eot_n, args.n)
    base, x, y = setup(args)
    print(f"scaling: defense={args.defense} device={args.device} steps={args.steps} repeats={args.repeats} "
          f"threads={torch.get_num_threads()} clock={args.clock}")

    pgd = make_attack("pgd", "linf", steps=args.steps, skip_fooled=False, keep_best=False)

    def run_pgd(k: int):
        return lambda: pgd(base, x[:k], y[:k], generator=torch.Generator(device=args.device).manual_seed(0))

    run_pgd(min(sizes))()  # warm-up
    curve(f"pgd ({args.steps} steps, no early stop) on {args.defense}: time vs images", "image", sizes,
          race({f"n={k}": run_pgd(k) for k in sizes}, args.repeats, args.device, clock))

    noisy = Defense(base.classifier, transform=Gaussian(args.sigma), name="gaussian").freeze()
    xe, ye = x[:args.eot_n], y[:args.eot_n]

    def run_eot(k: int):
        atk = make_attack("pgd_eot", "linf", steps=args.steps, noise_policy=f"eot:{k}")
        return lambda: atk(noisy, xe, ye, generator=torch.Generator(device=args.device).manual_seed(0))

    run_eot(min(eots))()  # warm-up
    curve(f"pgd_eot ({args.steps} steps, {args.eot_n} images) on {args.defense}+gaussian(sigma={args.sigma}): "
          "time vs EOT draws", "draw", eots, race({f"K={k}": run_eot(k) for k in eots}, args.repeats, args.device, clock))


if __name__ == "__main__":
    main()
