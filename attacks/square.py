"""Square attack (Andriushchenko et al. 2020) on its own, through ``pyautoattack``'s SquareAttack.

A gradient-free score-based attack: it needs only the defense's logits, so input quantization,
non-differentiable stages or saturated logits (the traps that make gradients zero or useless)
do not stop it. The diagnostics (``benchmark.diagnostics``) add it to the battery when the
input gradients of a defense are shattered, and compare its rows with the gradient attacks'
(gradient masking).

The defense is queried through :class:`attacks.core.PolicyModel` (fresh noise per query for the
parts the policy does not fix). On a randomized defense each sample keeps the candidate (the
clean image included) with the highest misclassification rate over ``eval_iter`` forward passes,
as :mod:`attacks.autoattack` does between its components. pyautoattack reseeds torch's global
RNG inside; its seed comes from ``generator`` and the global RNG state is restored afterwards.
"""
from __future__ import annotations

import torch
from torch import Tensor

from benchmark.errors import BenchError
from defenses.base import Defense, Noise

from .core import Best, Objective, PolicyModel, project, validate_params

SQUARE_THREATS = ("linf", "l2")
_NORMS = {"linf": "Linf", "l2": "L2"}


def square(
    defense: Defense,
    x: Tensor,
    y: Tensor,
    *,
    threat: str = "linf",
    eps: float = 8 / 255,
    square_queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    noise_policy: str = "fresh",
    generator: torch.Generator | None = None,
    eval_noise: Noise | None = None,
    eval_iter: int = 20,
) -> Tensor:
    """Untargeted Square attack with ``square_queries`` queries per restart; returns x_adv in the ball."""
    validate_params(threat, dict(eps=eps, square_queries=square_queries, restarts=restarts,
                                 noise_policy=noise_policy, eval_iter=eval_iter), SQUARE_THREATS)
    if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
        raise BenchError(f"p_init must be in (0, 1], got {p_init!r}")
    from pyautoattack.square import SquareAttack

    obj = Objective(defense, noise_policy=noise_policy, generator=generator, eval_noise=eval_noise)
    obj.check_batch(x)
    x = x.detach().contiguous()
    y = y.to(x.device).contiguous()
    n = x.shape[0]
    passes = 1 if obj.deterministic else int(eval_iter)
    model = PolicyModel(obj).bind(x, obj.eval_noise)
    dev = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=dev).item())
    all_idx = torch.arange(n, device=x.device)
    best = Best(x)
    best.offer(all_idx, x, *obj.evaluate(x, y, draws=passes))
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        atk = SquareAttack(model, norm=_NORMS[threat], n_queries=int(square_queries), eps=float(eps),
                           p_init=float(p_init), n_restarts=int(restarts), seed=seed, verbose=False,
                           device=x.device)
        adv = atk.perturb(x, y).detach()
    adv = x + project(adv - x, x, threat, float(eps))  # guard against rounding overshoot
    best.offer(all_idx, adv, *obj.evaluate(adv, y, draws=passes))
    return best.x.detach()
