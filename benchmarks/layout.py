"""Channels-last vs contiguous weights: one exact input gradient per defense, raced side by side.

For each defense: the same images and the same noise draw, CE of the defense's logits, gradient
w.r.t. the input; contiguous weights against a channels-last copy, interleaved over repeats.
Prints the speedup contiguous/channels-last (median of repeats, with min-max of the per-repeat
speedups) and the gradients' cosine and max difference (float rounding only). This is the
measurement behind ``--memory-format auto`` (:mod:`benchmark.speed`).

Run:  python benchmarks/layout.py [--defenses standard,rn18_aa_example,atop_gan,diffpure] [--n 16] [--repeats 4]
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser  # noqa: E402


def main() -> None:
    p = parser(__doc__.split("\n")[0], n=16, repeats=4)
    p.add_argument("--defenses", default="standard,rn18_aa_example,atop_gan,diffpure")
    p.add_argument("--diffpure-steps", type=int, default=2, help="diffpure's denoising steps (keeps it quick)")
    p.add_argument("--compile", action="store_true",
                   help="also race channels-last + torch.compile of the classifier (compilation time printed apart)")
    args = p.parse_args()
    from benchmark.build import make_defense
    from benchmark.data import load_eval_set

    if args.threads:
        torch.set_num_threads(args.threads)
    ev = load_eval_set("cifar10", f"first:{args.n}")
    x, y = ev.images.to(args.device), ev.labels.to(args.device)
    print(f"layout: device={args.device} n={args.n} repeats={args.repeats} threads={torch.get_num_threads()}")
    for name in [d for d in args.defenses.split(",") if d]:
        opts = {"steps": args.diffpure_steps} if name.startswith("diffpure") else {}
        d = make_defense(name, dataset="cifar10", device=args.device, options=opts)
        noise = d.sample_noise(x, torch.Generator(device=args.device).manual_seed(0))
        cl = copy.deepcopy(d).to(memory_format=torch.channels_last)

        def grad(m) -> torch.Tensor:
            xa = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(m(xa, noise), y), xa)
            return g

        g0, g1 = grad(d), grad(cl)  # warm-up and the comparison
        cos = F.cosine_similarity(g0.flatten(), g1.flatten(), dim=0).item()
        order = [("contiguous", d), ("channels_last", cl)]
        if args.compile:
            cc = copy.deepcopy(cl)
            cc.classifier = torch.compile(cc.classifier)
            t0 = time.perf_counter()
            grad(cc)
            print(f"  {name}: torch.compile warm-up {time.perf_counter() - t0:.1f} s", flush=True)
            order.append(("compiled", cc))
        ts: dict[str, list[float]] = {k: [] for k, _ in order}
        for r in range(args.repeats):
            for k, m in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                grad(m)
                ts[k].append(time.perf_counter() - t0)
        per = [a / b for a, b in zip(ts["contiguous"], ts["channels_last"])]
        a, b = statistics.median(ts["contiguous"]), statistics.median(ts["channels_last"])
        print(f"  {name:>16}{opts or ''}: contiguous {a:.3f} s, channels_last {b:.3f} s, SPEEDUP {a / b:.3f} "
              f"(per-repeat {min(per):.3f}-{max(per):.3f}); gradient cosine {cos:.6f}, "
              f"max |diff| {(g0 - g1).abs().max().item():.2e}", flush=True)
        if args.compile:
            c = statistics.median(ts["compiled"])
            perc = [x / y for x, y in zip(ts["channels_last"], ts["compiled"])]
            print(f"  {name:>16}: channels_last+compile {c:.3f} s, SPEEDUP over channels_last {b / c:.3f} "
                  f"(per-repeat {min(perc):.3f}-{max(perc):.3f})", flush=True)


if __name__ == "__main__":
    main()
