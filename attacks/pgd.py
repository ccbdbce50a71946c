"""Projected gradient descent (Madry et al. 2018) for L-inf and L2, with EOT and BPDA.

One function covers PGD-k, PGD+EOT, BPDA(+EOT), FGSM (``steps=1``, ``step_size=eps``, no random
start) and the CW-L-inf margin PGD of the AToP tables (``loss="cw"``). The noise policy and the
gradient mode are handled by :class:`attacks.core.Objective`.

Which iterate is returned (documented choice):

* When the attacker's view is deterministic (deterministic defense, or a policy fixing every
  noise part, i.e. DW-box ``fixed:all``), each iterate's loss is exactly what the evaluation
  will see, so the best candidate per sample is kept across steps and restarts: misclassified
  first, then lowest margin; the clean image is a candidate too. Samples are dropped from the
  attack as soon as they are misclassified (``skip_fooled``), which changes nothing but cost.
* Otherwise (the evaluation noise is unknown, at least in part) the last iterate of each
  restart is the candidate, as in PGD+EOT evaluations of randomized defenses (DiffPure, Lee &
  Kim 2023, ADDT); with several restarts, the restart with the highest misclassification rate,
  then lowest mean margin, over the policy's draws at its final iterate is kept. Early stopping
  is off because a single noisy misclassification says little about the evaluation.
  ``keep_best=True`` forces best-iterate selection on the attacker's own noisy estimates.
"""
from __future__ import annotations

import torch
from torch import Tensor

from benchmark.errors import BenchError
from defenses.base import Defense, Noise

from .core import Best, NoisePolicy, Objective, ascent_step, make_loss, project, random_start, validate_params

PGD_THREATS = ("linf", "l2")


def default_step_size(eps: float, steps: int) -> float:
    """eps for a single step (FGSM), eps/4 otherwise (= 2/255 at eps = 8/255)."""
    return eps if steps == 1 else eps / 4


def pgd(
    defense: Defense,
    x: Tensor,
    y: Tensor,
    *,
    threat: str = "linf",
    eps: float = 8 / 255,
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    noise_policy: str | NoisePolicy = "fresh",
    grad_mode: str = "exact",
    generator: torch.Generator | None = None,
    eval_noise: Noise | None = None,
    loss: str = "ce",
    kappa: float = 50.0,
    random_init: bool = True,
    eot_chunk: int | None = None,
    keep_best: bool | None = None,
    skip_fooled: bool = True,
    surrogate_steps: int | None = None,
) -> Tensor:
    """Untargeted PGD; returns x_adv in the eps-ball around ``x`` and in [0, 1].

    ``step_size=None`` means :func:`default_step_size`. ``loss`` is ``ce`` or ``cw`` (margin,
    clamped at ``-kappa``). ``random_init`` starts from a random point of the ball.
    ``keep_best=None`` keeps the best iterate exactly when the attacker's view is deterministic
    (see the module docstring); ``skip_fooled`` stops attacking misclassified samples, only
    where that is valid (deterministic view). ``surrogate_steps=K`` takes the gradients through
    the defense's K-step surrogate (Lee & Kim 2023; diffusion purifiers only), last iterate.
    """
    validate_params(
        threat,
        dict(eps=eps, steps=steps, step_size=step_size, restarts=restarts, noise_policy=noise_policy,
             grad_mode=grad_mode, loss=loss, kappa=kappa, eot_chunk=eot_chunk, surrogate_steps=surrogate_steps),
        PGD_THREATS,
    )
    if x.shape[0] != y.shape[0]:
        raise BenchError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    alpha = float(step_size) if step_size is not None else default_step_size(eps, steps)
    obj = Objective(defense, noise_policy=noise_policy, grad_mode=grad_mode, generator=generator,
                    eval_noise=eval_noise, eot_chunk=eot_chunk, surrogate_steps=surrogate_steps)
    obj.check_batch(x)
    loss_fn = make_loss(loss, kappa)
    x = x.detach()
    y = y.to(x.device)
    n = x.shape[0]
    keep = obj.deterministic if keep_best is None else bool(keep_best)
    early = bool(skip_fooled) and obj.deterministic
    track = obj.deterministic or keep or restarts > 1
    best = Best(x) if track else None
    if best is not None and obj.deterministic:
        best.offer(torch.arange(n, device=x.device), x, *obj.evaluate(x, y))
    final = x.clone()

    for _ in range(restarts):
        if early and best is not None:
            idx = (best.err < 1).nonzero().flatten()
        else:
            idx = torch.arange(n, device=x.device)
        if idx.numel() == 0:
            break
        xs, ys, o = x[idx], y[idx], obj.select(idx)
        if random_init:
            delta = random_start(xs, threat, eps, generator)
        else:
            delta = torch.zeros_like(xs)
        live = torch.arange(idx.numel(), device=x.device)
        for _t in range(steps):
            xa = xs[live] + delta[live]
            ol = o if live.numel() == idx.numel() else o.select(live)
            g, err, mar = ol.loss_grad(xa, ys[live], loss_fn)
            if keep and best is not None:
                best.offer(idx[live], xa, err, mar)
            if early and best is not None:
                fooled = err >= 1
                if bool(fooled.any()):
                    if not keep:
                        best.offer(idx[live[fooled]], xa[fooled], err[fooled], mar[fooled])
                    live, g = live[~fooled], g[~fooled]
                    if live.numel() == 0:
                        break
            delta[live] = project(delta[live] + ascent_step(g, threat, alpha), xs[live], threat, eps)
        xa = xs + delta
        if best is not None:
            if live.numel():
                ol = o if live.numel() == idx.numel() else o.select(live)
                best.offer(idx[live], xa[live], *ol.evaluate(xa[live], ys[live]))
        else:
            final = xa
    out = best.x if best is not None else final
    return out.detach()
