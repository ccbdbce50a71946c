"""P1: our PGD+EOT (``pgd_eot`` preset, as ``bench run`` applies it) against torchattacks ``EOTPGD``.

The defense is the shipped CIFAR-10 classifier behind a Gaussian-noise transform
(x + sigma * N(0, 1), clipped to [0, 1]; sigma 0.03 by default: the shipped classifier is not trained on noise and falls to ~11% clean accuracy at 0.1), as a :class:`defenses.base.Defense`
with declared noise for ours and as an ``nn.Module`` drawing its noise inside ``forward`` for
torchattacks. Same math: zero start (``random_start=False``, the preset's ``random_init=False``),
``steps`` sign steps of 2/255, projection to 8/255 and [0, 1], CE loss, gradient averaged over
``eot`` fresh noise draws per step, last iterate. The noise draws differ (our generator versus the
global RNG), so the final accuracies agree only up to noise.

``ours`` is what ``bench run`` does (``benchmark.speed``, ``benchmark.runner``): the clean
predictions (``--eval-draws`` noise draws, timed as part of ours) decide which images are attacked
(majority correct: the clean-misclassified ones are not robust whatever happens, as in AutoAttack),
and the weights are channels-last after the logit probe. ``ours_plain`` attacks every image with
contiguous weights (the attack alone, same work as torchattacks); ``ours_layout`` has only the
layout saver. Robust accuracy is the runner's: majority-correct on the clean draws AND on
``--eval-draws`` seeded draws at x_adv, the same draws for every contender.

Run:  python benchmarks/p1_eot_vs_torchattacks.py [--device cuda] [--n 32] [--steps 20] [--eot 10] [--repeats 3]
Prints each contender's median and the speedup torchattacks/ours (goal >= 1.5 on CPU, >= 2 on a GPU).
"""
from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, race, setup  # noqa: E402

from defenses.base import Defense, Stage, randn  # noqa: E402


class Gaussian(Stage):
    """Additive Gaussian noise with declared noise (ours)."""

    noise_names = ("gaussian",)

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def sample_noise(self, x, generator):
        return {"gaussian": randn(x.shape, generator, x)}

    def forward(self, x, noise):
        return (x + self.sigma * noise["gaussian"]).clamp(0, 1)


class NoisyModule(nn.Module):
    """The same defense with the noise drawn inside forward (what torchattacks expects)."""

    def __init__(self, classifier: nn.Module, sigma: float) -> None:
        super().__init__()
        self.classifier, self.sigma = classifier, sigma

    def forward(self, x):
        return self.classifier((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


def pick_sigma(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, target: float, draws: int, device: str) -> float:
    """The largest sigma on a 0.005 grid (0.03 down) with clean accuracy >= ``target`` (the runner's rule)."""
    from attacks import predict
    from benchmark.runner import clean_correct

    for k in range(6, 0, -1):
        sigma = 0.005 * k
        d = Defense(clf, transform=Gaussian(sigma), name="gaussian").freeze()
        acc = clean_correct(predict(d, x, repeats=draws, generator=torch.Generator(device=device).manual_seed(7)),
                            y).numel() / len(y)
        if acc >= target:
            print(f"  --target-clean {target}: sigma {sigma:.3f} (clean accuracy {acc:.4f})")
            return sigma
    raise SystemExit(f"error: no sigma >= 0.005 reaches clean accuracy {target}")


def main() -> None:
    p = parser(__doc__.split("\n")[0], n=32, repeats=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eot", type=int, default=10)
    p.add_argument("--sigma", type=float, default=0.03)
    p.add_argument("--target-clean", type=float, default=None, metavar="ACC",
                   help="instead of --sigma: the largest sigma of 0.03, 0.025, ..., 0.005 whose clean accuracy "
                        "(majority of --eval-draws draws) on the images is >= ACC, e.g. 0.85 (a realistic "
                        "defense, where the clean-correct scope saves least)")
    p.add_argument("--eval-draws", type=int, default=8)
    p.add_argument("--contenders", default="torchattacks,ours,ours_plain,ours_layout",
                   help="comma-separated subset of torchattacks,ours,ours_plain,ours_layout")
    args = p.parse_args()
    import torchattacks

    from attacks import predict
    from attacks.presets import make_attack
    from benchmark.runner import clean_correct
    from benchmark.speed import choose_memory_format

    base, x, y = setup(args)
    clf = base.classifier
    if args.target_clean is not None:
        args.sigma = pick_sigma(clf, x, y, args.target_clean, args.eval_draws, args.device)
    plain = Defense(clf, transform=Gaussian(args.sigma), name="gaussian").freeze()
    fast = Defense(copy.deepcopy(clf), transform=Gaussian(args.sigma), name="gaussian").freeze()
    choice = choose_memory_format(fast, x[: min(len(x), 64)], requested="auto", seed=0,
                                  generator=torch.Generator(device=args.device).manual_seed(0))
    noisy = NoisyModule(clf, args.sigma).eval()
    attack = make_attack("pgd_eot", "linf", steps=args.steps, noise_policy=f"eot:{args.eot}")
    ta = torchattacks.EOTPGD(noisy, eps=8 / 255, alpha=2 / 255, steps=args.steps, eot_iter=args.eot,
                             random_start=False)
    out: dict[str, torch.Tensor] = {}

    def correct_idx(defense: Defense, xs: torch.Tensor, seed: int) -> torch.Tensor:
        """The runner's rule: majority-correct over the seeded draws."""
        g = torch.Generator(device=args.device).manual_seed(seed)
        return clean_correct(predict(defense, xs, repeats=args.eval_draws, generator=g), y)

    def ours_run(defense: Defense, scope: bool, key: str) -> None:
        g = torch.Generator(device=args.device).manual_seed(0)
        if not scope:
            out[key] = attack(defense, x, y, generator=g)
            return
        idx = correct_idx(defense, x, 7)
        xa = x.clone()
        if idx.numel():
            xa[idx] = attack(defense, x[idx], y[idx], generator=g)
        out[key] = xa

    def theirs() -> None:
        out["torchattacks"] = ta(x, y)

    every = {"torchattacks": theirs,
             "ours": lambda: ours_run(fast, True, "ours"),
             "ours_plain": lambda: ours_run(plain, False, "ours_plain"),
             "ours_layout": lambda: ours_run(fast, False, "ours_layout")}
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(names) - set(every))
    if unknown or "torchattacks" not in names:
        raise SystemExit(f"error: --contenders must include torchattacks and only {', '.join(every)} (got {unknown})")
    contenders = {k: every[k] for k in names}
    print(f"P1 PGD+EOT vs torchattacks: defense=standard+gaussian(sigma={args.sigma}) device={args.device} "
          f"n={args.n} steps={args.steps} eot={args.eot} repeats={args.repeats} threads={torch.get_num_threads()}; "
          f"layout {choice.memory_format} ({choice.reason})")
    for f in contenders.values():  # warm-up (and the outputs to compare)
        f()

    cc = set(correct_idx(plain, x, 7).tolist())
    print(f"  clean-correct (majority of {args.eval_draws} draws): {len(cc)}/{len(y)} images attacked by `ours`")

    def robust(xa: torch.Tensor) -> float:
        return len(cc & set(correct_idx(plain, xa, 123).tolist())) / len(y)

    print("  robust accuracy (clean-correct and majority-correct at x_adv over "
          f"{args.eval_draws} draws): " + ", ".join(f"{k} {robust(out[k]):.4f}" for k in names))
    times = race(contenders, args.repeats, args.device)
    for k, v in times.items():
        print(f"  {k:>12}: median {statistics.median(v):.3f} s  (min {min(v):.3f}, max {max(v):.3f}, {len(v)} repeats)")
    ref = times["torchattacks"]
    for k in names:
        if k == "torchattacks":
            continue
        per = [b / a for a, b in zip(times[k], ref)]
        speed = statistics.median(ref) / statistics.median(times[k])
        goal = 2.0 if torch.device(args.device).type == "cuda" else 1.5
        verdict = f"; goal >= {goal:.1f}: {'OK' if speed >= goal else 'BELOW GOAL'}" if k == "ours" else ""
        print(f"SPEEDUP torchattacks/{k} = {speed:.3f}  (per-repeat min {min(per):.3f}, max {max(per):.3f}{verdict})")


if __name__ == "__main__":
    main()
