"""Carlini-Wagner L2 (Carlini & Wagner 2017) through ``torchattacks.CW``, with the noise policy.

torchattacks' CW optimises w in tanh space with Adam for ``steps`` iterations at a fixed
trade-off constant ``c`` (no binary search) and keeps, per sample, the smallest-L2 perturbation
that was misclassified. It only calls ``model(x)``, so the defense is passed as an
:class:`attacks.core.PolicyModel`: fresh noise per call for unfixed parts, the evaluation noise
for fixed parts, BPDA if asked; under ``eot:K`` the model returns the mean logits of K draws
(torchattacks has no EOT loop of its own). CW-L2 minimises the perturbation rather than
respecting a budget, so the result is projected onto the L2 ball of radius ``eps`` to stay in
the threat model (a perturbation larger than eps is scaled down to eps).

The CW-L-inf attack of the AToP tables ("CW-100") is PGD with the CW margin loss: see the
``cw100`` preset of :mod:`attacks.presets`.
"""
from __future__ import annotations

import contextlib
import io

import torch
from torch import Tensor

from benchmark.errors import BenchError
from defenses.base import Defense, Noise

from .core import NoisePolicy, Objective, PolicyModel, project, validate_params


def cw_l2(
    defense: Defense,
    x: Tensor,
    y: Tensor,
    *,
    threat: str = "l2",
    eps: float = 0.5,
    steps: int = 100,
    c: float = 1.0,
    kappa: float = 0.0,
    lr: float = 0.01,
    noise_policy: str | NoisePolicy = "fresh",
    grad_mode: str = "exact",
    generator: torch.Generator | None = None,
    eval_noise: Noise | None = None,
) -> Tensor:
    """torchattacks CW-L2 (c, kappa, steps, lr), projected onto the L2 ball of radius ``eps``."""
    validate_params(threat, dict(eps=eps, steps=steps, c=c, kappa=kappa, lr=lr, noise_policy=noise_policy,
                                 grad_mode=grad_mode), ("l2",))
    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover
        raise BenchError(f"CW-L2 needs the torchattacks package ({e})") from None
    obj = Objective(defense, noise_policy=noise_policy, grad_mode=grad_mode, generator=generator,
                    eval_noise=eval_noise)
    obj.check_batch(x)
    x = x.detach()
    y = y.to(x.device)
    model = PolicyModel(obj, average_draws=True).bind(x, obj.eval_noise)
    with contextlib.redirect_stdout(io.StringIO()):  # torchattacks prints when a model has no parameters
        atk = torchattacks.CW(model, c=float(c), kappa=float(kappa), steps=int(steps), lr=float(lr))
    atk.set_device(x.device)
    adv = atk(x, y).detach()
    return (x + project(adv - x, x, "l2", float(eps))).detach()
