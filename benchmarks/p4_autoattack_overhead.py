"""P4: overhead of AutoAttack standard through our wrapper over bare pyautoattack.

Ours: ``attacks.make_attack("autoattack_standard", "linf")`` (pyautoattack's own component attacks,
our selection loop, defense wrapped as a PolicyModel). Bare: ``pyautoattack.AutoAttack(model,
norm="Linf", eps=8/255, version="standard", seed=0).run_standard_evaluation(x, y, batch_size=N)`` on the
same module and images. On a deterministic defense our wrapper uses one evaluation pass per
component (``eval_iter`` only applies to stochastic defenses), like pyautoattack's own robustness
check, so it does no extra passes beyond one clean pass and one pass per component.
The component seeds differ (ours draws them from a generator, bare uses seed=0 throughout), so
the robust accuracies may differ by a sample or so; both are printed.

Run:  python benchmarks/p4_autoattack_overhead.py [--device cuda] [--n 32] [--steps 100] [--repeats 3]
``--steps`` (default 100, AutoAttack's) sets APGD/FAB iterations for both contenders alike.
Prints the ratio of median wall times ours/bare (goal <= 1.05).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, race, report, setup  # noqa: E402


def main() -> None:
    p = parser(__doc__.split("\n")[0], n=32, repeats=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--square-queries", type=int, default=5000,
                   help="Square's query budget for both alike (5000 in AutoAttack; it dominates on CPU)")
    args = p.parse_args()
    from pyautoattack import AutoAttack

    from attacks.autoattack import _set_apgd_iterations
    from attacks.presets import make_attack

    defense, x, y = setup(args)
    if defense.stochastic:
        raise SystemExit(f"{args.defense} is stochastic; this comparison needs a deterministic defense")
    attack = make_attack("autoattack_standard", "linf", steps=args.steps, square_queries=args.square_queries)
    out: dict[str, torch.Tensor] = {}

    def ours():
        out["ours"] = attack(defense, x, y, generator=torch.Generator(device=args.device).manual_seed(0))

    def bare():
        aa = AutoAttack(defense, norm="Linf", eps=8 / 255, version="standard", device=args.device, seed=0)
        aa.verbose = False
        if args.steps != 100:
            for apgd in (aa.apgd, aa.apgd_targeted):
                _set_apgd_iterations(apgd, args.steps)
            aa.fab.n_iter = args.steps
        aa.square.n_queries = args.square_queries
        res = aa.run_standard_evaluation(x.contiguous(), y, batch_size=args.n)
        out["bare"] = res[0] if isinstance(res, tuple) else res  # pyautoattack 0.2 returns (x_adv, ...)

    print(f"P4 AutoAttack overhead: defense={args.defense} device={args.device} n={args.n} steps={args.steps} "
          f"square_queries={args.square_queries} "
          f"repeats={args.repeats} threads={torch.get_num_threads()}")
    ours(), bare()  # warm-up (and the outputs to compare)
    with torch.no_grad():
        acc = {k: (defense(v).argmax(1) == y).float().mean().item() for k, v in out.items()}
        clean = (defense(x).argmax(1) == y).float().mean().item()
    print(f"  clean acc {clean:.4f}; robust acc ours {acc['ours']:.4f}, bare {acc['bare']:.4f}")
    report(race({"ours": ours, "bare": bare}, args.repeats, args.device), "ours", "bare", 1.05)


if __name__ == "__main__":
    main()
