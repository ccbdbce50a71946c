"""AutoAttack-rand's selection rule on a Gaussian-noise toy: stop at the first wrong pass (old) or
attack while any pass is correct (the ADDT authors' fix, PR #105 to auto-attack; ours now).

Defense: x + sigma * N(0, 1) into a deterministic classifier (``linear``: the closed-form ridge
classifier of tests/plugins/traps.py; or a shipped zoo classifier such as ``cifar10_at_pgd``).
Per seed: one clean draw picks the clean-correct images, AutoAttack-rand (APGD-CE, APGD-DLR,
EOT-K, ``eval_iter`` passes) attacks them, and the returned images are scored on one fresh draw
(the runner's default) and by majority of 9 draws. Robust accuracy is over all n images, with
its Clopper-Pearson 95% interval. The old rule is obtained by replacing ``still_standing``.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

import benchmark  # noqa: F401  (torchvision shim)
from attacks import autoattack, predict
from benchmark.data import load_eval_set
from benchmark.stats import clopper_pearson
from defenses.base import Defense

RULES = {"any-pass (new)": lambda err: err < 1, "all-passes (old)": lambda err: err == 0}


def _traps():
    path = Path(__file__).resolve().parents[1] / "tests" / "plugins" / "traps.py"
    spec = importlib.util.spec_from_file_location("purifybench_traps", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier", default="linear")
    p.add_argument("--sigma", type=float, default=0.15)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eot", type=int, default=4)
    p.add_argument("--eval-iter", type=int, default=4)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    traps = _traps()
    if a.classifier == "linear":
        clf = traps.Linear()
    else:
        from benchmark.registry import CLASSIFIERS, load_builtins

        load_builtins()
        clf = CLASSIFIERS.create(a.classifier, device="cpu")
    d = Defense(clf, transform=traps.Gaussian(a.sigma), name="gauss-toy").freeze()
    ev = load_eval_set("cifar10", f"first:{a.n}")
    x, y, n = ev.images, ev.labels, a.n
    aa_mod = sys.modules["attacks.autoattack"]
    print(f"{a.classifier} + Gaussian sigma {a.sigma}, cifar10 embedded first:{n}, L-inf 8/255, "
          f"AutoAttack-rand {a.steps} steps EOT-{a.eot} eval_iter {a.eval_iter}")
    for seed in map(int, a.seeds.split(",")):
        clean = predict(d, x, generator=torch.Generator().manual_seed(1000 + seed))[0]
        idx = (clean == y).nonzero().flatten()
        for rule, fn in RULES.items():
            aa_mod.still_standing = fn
            t0 = time.perf_counter()
            xa = autoattack(d, x[idx], y[idx], version="rand", steps=a.steps, noise_policy=f"eot:{a.eot}",
                            eval_iter=a.eval_iter, generator=torch.Generator().manual_seed(seed))
            one = int((predict(d, xa, generator=torch.Generator().manual_seed(2000 + seed))[0] == y[idx]).sum())
            p9 = predict(d, xa, repeats=9, generator=torch.Generator().manual_seed(3000 + seed))
            maj = int(((p9 == y[idx]).sum(0) * 2 > 9).sum())
            lo, hi = clopper_pearson(one, n)
            mlo, mhi = clopper_pearson(maj, n)
            print(f"seed {seed} {rule:17s} clean {idx.numel()}/{n}  robust (1 draw) {one}/{n} = {one / n:.3f} "
                  f"[{lo:.3f}, {hi:.3f}]  majority of 9 {maj}/{n} = {maj / n:.3f} [{mlo:.3f}, {mhi:.3f}]  "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    aa_mod.still_standing = RULES["any-pass (new)"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
