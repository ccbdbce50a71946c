"""Cost savers: the effect of each one on a whole `bench run`, raced side by side in one process.

Variants of the same run spec (same defense, images, attacks, seed), each run into its own
temporary folder and timed over interleaved repeats:

* ``none``:   every image attacked (``attack_all=True``), contiguous weights;
* ``scope``:  only the clean-correct images attacked (the default; ``--attack-all`` turns it off);
* ``layout``: every image attacked, channels-last weights after the logit probe (``--memory-format``);
* ``both``:   the default ``bench run`` (scope + layout);
* ``compile`` (with ``--compile``): ``both`` plus ``torch.compile`` of the classifier (the first
  warm-up pays the compilation, which is printed separately);
* ``bf16`` (with ``--bf16``): ``both`` plus ``--precision bf16`` (attack gradients under autocast
  after the cosine >= 0.99 check; meant for a GPU).

It prints each variant's median wall time, its speedup over ``none`` with the min-max of the
per-repeat speedups, and each variant's robust accuracy (the scope saver changes no number on a
deterministic defense without random starts; elsewhere the draws follow the attacked batch, so
accuracies agree up to noise). It also times the defense forward pass the runner no longer makes
(its separate NaN-check pass, now done on the clean predictions it reuses).

Run:  python benchmarks/cost_savers.py [--defense standard] [--attacks pgd] [--n 64] [--repeats 3]
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, race  # noqa: E402


def main() -> None:
    p = parser(__doc__.split("\n")[0], n=64, repeats=3)
    p.add_argument("--attacks", default="pgd", help="comma-separated presets (default pgd)")
    p.add_argument("--scale", default="cpu", help="run scale (default cpu: PGD-10, EOT-4...)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-repeats", type=int, default=1,
                   help="final forward passes per image (stochastic defenses: more makes the variants' accuracies comparable)")
    p.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    p.add_argument("--bf16", action="store_true", help="add the bf16-precision variant")
    args = p.parse_args()
    from benchmark.build import make_defense
    from benchmark.runner import RunSpec, load_spec_evalset, run

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base = RunSpec(defense=args.defense, attacks=[a for a in args.attacks.split(",") if a], subset=f"first:{args.n}",
                   scale=args.scale, batch_size=args.batch_size, eval_repeats=args.eval_repeats)
    evalset = load_spec_evalset(base)
    variants = {"none": dict(attack_all=True, memory_format="contiguous"),
                "scope": dict(memory_format="contiguous"),
                "layout": dict(attack_all=True),
                "both": {}}
    if args.compile:
        variants["compile"] = dict(compile=True)
    if args.bf16:
        variants["bf16"] = dict(precision="bf16")
    defenses = {k: make_defense(args.defense, device=device) for k in variants}
    tmp = Path(tempfile.mkdtemp(prefix="cost_savers_"))
    results: dict[str, object] = {}
    counter = {"i": 0}

    def contender(name: str):
        def go() -> None:
            counter["i"] += 1
            spec = dataclasses.replace(base, **variants[name])
            results[name] = run(spec, out=tmp / f"{name}-{counter['i']}", device=device, defense=defenses[name],
                                evalset=evalset)
        return go

    contenders = {k: contender(k) for k in variants}
    print(f"cost savers: defense={args.defense} attacks={args.attacks} n={args.n} scale={args.scale} "
          f"eval_repeats={args.eval_repeats} "
          f"device={args.device} repeats={args.repeats} threads={torch.get_num_threads()}")
    for k, f in contenders.items():  # warm-up (compilation happens here)
        t0 = time.perf_counter()
        f()
        print(f"  warm-up {k}: {time.perf_counter() - t0:.1f} s  (layout {results[k].record['memory_format']}: "
              f"{results[k].record['memory_format_reason']})", flush=True)
    times = race(contenders, args.repeats, args.device)
    ref = times["none"]
    for k, v in times.items():
        per = [a / b for a, b in zip(ref, v)]
        acc = {a: f"{e['accuracy']:.4f}" for a, e in results[k].summary["attacks"].items()}
        print(f"  {k:>8}: median {statistics.median(v):.3f} s (min {min(v):.3f}, max {max(v):.3f})  "
              f"SPEEDUP none/{k} = {statistics.median(ref) / statistics.median(v):.3f} "
              f"(per-repeat {min(per):.3f}-{max(per):.3f})  accuracy {acc}")
    # the check pass the runner dropped: one defense forward per batch
    d = defenses["both"]
    x = evalset.images[: args.batch_size].to(device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        d(x, generator=g)
        t0 = time.perf_counter()
        for _ in range(3):
            d(x, generator=g)
    one = (time.perf_counter() - t0) / 3
    n_batches = (len(evalset) + args.batch_size - 1) // args.batch_size
    print(f"  reused clean predictions: the dropped check pass cost {one * n_batches:.3f} s per run "
          f"({100 * one * n_batches / statistics.median(times['both']):.1f}% of `both`)")


if __name__ == "__main__":
    main()
