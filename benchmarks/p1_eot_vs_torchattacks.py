"""P1: our PGD+EOT (``pgd_eot`` preset) against torchattacks ``EOTPGD`` on a stochastic defense.

The defense is the shipped CIFAR-10 classifier behind a Gaussian-noise transform
(x + sigma * N(0, 1), clipped to [0, 1]; sigma 0.03 by default: the shipped classifier is not trained on noise and falls to ~11% clean accuracy at 0.1), as a :class:`defenses.base.Defense`
with declared noise for ours and as an ``nn.Module`` drawing its noise inside ``forward`` for
torchattacks. Same math: zero start (``random_start=False``, the preset's ``random_init=False``),
``steps`` sign steps of 2/255, projection to 8/255 and [0, 1], CE loss, gradient averaged over
``eot`` fresh noise draws per step, last iterate. The noise draws differ (our generator versus the
global RNG), so the final accuracies agree only up to noise; accuracy is the mean over
``--eval-draws`` seeded noise draws, the same draws for both.

Run:  python benchmarks/p1_eot_vs_torchattacks.py [--device cuda] [--n 32] [--steps 20] [--eot 10] [--repeats 3]
Prints the ratio of median wall times ours/torchattacks (goal <= 1.05).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, race, report, setup  # noqa: E402

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


def main() -> None:
    p = parser(__doc__.split("\n")[0], n=32, repeats=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eot", type=int, default=10)
    p.add_argument("--sigma", type=float, default=0.03)
    p.add_argument("--eval-draws", type=int, default=8)
    args = p.parse_args()
    import torchattacks

    from attacks.presets import make_attack

    base, x, y = setup(args)
    clf = base.classifier
    defense = Defense(clf, transform=Gaussian(args.sigma), name="gaussian").freeze()
    noisy = NoisyModule(clf, args.sigma).eval()
    attack = make_attack("pgd_eot", "linf", steps=args.steps, noise_policy=f"eot:{args.eot}")
    ta = torchattacks.EOTPGD(noisy, eps=8 / 255, alpha=2 / 255, steps=args.steps, eot_iter=args.eot,
                             random_start=False)
    out: dict[str, torch.Tensor] = {}

    def ours():
        out["ours"] = attack(defense, x, y, generator=torch.Generator(device=args.device).manual_seed(0))

    def theirs():
        out["torchattacks"] = ta(x, y)

    print(f"P1 PGD+EOT vs torchattacks: defense=standard+gaussian(sigma={args.sigma}) device={args.device} "
          f"n={args.n} steps={args.steps} eot={args.eot} repeats={args.repeats} threads={torch.get_num_threads()}")
    ours(), theirs()  # warm-up (and the outputs to compare)

    def accuracy(xa: torch.Tensor) -> float:
        g = torch.Generator(device=args.device).manual_seed(123)
        with torch.no_grad():
            accs = [(defense(xa, generator=g).argmax(1) == y).float().mean().item() for _ in range(args.eval_draws)]
        return sum(accs) / len(accs)

    print(f"  accuracy over {args.eval_draws} noise draws: clean {accuracy(x):.4f}, ours {accuracy(out['ours']):.4f}, "
          f"torchattacks {accuracy(out['torchattacks']):.4f}")
    report(race({"ours": ours, "torchattacks": theirs}, args.repeats, args.device), "ours", "torchattacks", 1.05)


if __name__ == "__main__":
    main()
