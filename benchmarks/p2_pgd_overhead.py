"""P2: overhead of our PGD (attacks.make_attack("pgd")) over a bare hand-written PyTorch PGD loop.

Settings that make ours do the same math as the bare loop on a deterministic defense:
``skip_fooled=False`` (no early stop), ``keep_best=False`` (no per-step best tracking), the same
uniform random start drawn from an identically seeded generator, sign step 2/255, projection to
8/255 and [0, 1], CE loss, ``steps`` iterations. What remains different: on a deterministic
view ours still evaluates the clean batch once before and the last iterate once after the loop
(two extra forward passes) and returns, per sample, the better of clean image and last iterate
(misclassified first, then lower margin). That choice cannot change accuracy, so the final
accuracies must be equal; x_adv is identical on the rows where the last iterate won.

Run:  python benchmarks/p2_pgd_overhead.py [--device cuda] [--n 64] [--steps 10] [--repeats 5]
Prints the ratio of median wall times ours/bare (goal <= 1.05).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, race, report, setup  # noqa: E402

EPS, ALPHA = 8 / 255, 2 / 255


def bare_pgd(model, x, y, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Textbook L-inf PGD: uniform random start, sign steps, projection, last iterate."""
    delta = (torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype) * 2 - 1) * EPS
    delta = (x + delta.to(x.device).clamp(-EPS, EPS)).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="none").sum()
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + ALPHA * g.sign()).clamp(-EPS, EPS)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def main() -> None:
    p = parser(__doc__.split("\n")[0], n=64, repeats=5)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    from attacks.presets import make_attack

    defense, x, y = setup(args)
    if defense.stochastic:
        raise SystemExit(f"{args.defense} is stochastic; this comparison needs a deterministic defense")
    attack = make_attack("pgd", "linf", steps=args.steps, skip_fooled=False, keep_best=False)
    model = defense  # the bare loop calls the same module, as any user would

    def gen() -> torch.Generator:
        return torch.Generator(device=args.device).manual_seed(0)

    out: dict[str, torch.Tensor] = {}

    def ours():
        out["ours"] = attack(defense, x, y, generator=gen())

    def bare():
        out["bare"] = bare_pgd(model, x, y, args.steps, gen())

    print(f"P2 PGD overhead: defense={args.defense} device={args.device} n={args.n} steps={args.steps} "
          f"repeats={args.repeats} threads={torch.get_num_threads()}")
    ours(), bare()  # warm-up (and the outputs to compare)
    with torch.no_grad():
        acc = {k: (defense(v).argmax(1) == y).float().mean().item() for k, v in out.items()}
        clean = (defense(x).argmax(1) == y).float().mean().item()
    same = (out["ours"] == out["bare"]).flatten(1).all(1).float().mean().item()
    print(f"  clean acc {clean:.4f}; final acc ours {acc['ours']:.4f}, bare {acc['bare']:.4f} "
          f"({'equal' if acc['ours'] == acc['bare'] else 'DIFFERENT'}); identical x_adv rows {same:.2%}; "
          f"max |ours-bare| {(out['ours'] - out['bare']).abs().max().item():.2e}")
    report(race({"ours": ours, "bare": bare}, args.repeats, args.device), "ours", "bare", 1.05)


if __name__ == "__main__":
    main()
