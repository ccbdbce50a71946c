"""AutoAttack (Croce & Hein 2020) through ``pyautoattack``, with the noise policy applied.

The component attacks are pyautoattack's own objects, configured by its ``AutoAttack`` for the
chosen version (``standard``: APGD-CE, APGD-T, FAB-T, Square; ``rand``: APGD-CE and APGD-DLR
with EOT-20), and called exactly as its ``run_standard_evaluation`` calls them. What we replace
is only the outer selection loop, for randomized defenses (the fix the ADDT authors proposed to
auto-attack, PR #105; their ``Fixed-AutoAttack``): the clean image and, after each component
attack, every candidate is classified on ``eval_iter`` independent forward passes; each sample
keeps the candidate that is wrong on most of those passes (ties: lowest mean margin), the clean
image included, and a sample is attacked by the next component while its kept candidate is
classified correctly on *any* pass (:func:`still_standing`). (Stopping once a single pass is
wrong, as an earlier version here did, drops images that a fresh draw then often classifies
correctly: on the Gaussian-noise toy of ``benchmarks/aa_rand_rule.py``, sigma 0.15, 200 images,
3 seeds, 0.25-0.28 robust instead of 0.05-0.10.) With a
deterministic view (deterministic defense or ``fixed:all``) one pass is used.

This selection only chooses which candidate is returned; the runner scores it like every other
attack's output (``eval_repeats`` fresh draws, majority vote; see :mod:`benchmark.runner`).

The defense is handed to pyautoattack as a :class:`attacks.core.PolicyModel`: fresh noise for
every call for the parts the policy does not fix. ``eot:K`` becomes APGD's own ``eot_iter=K``
(same semantics: gradient averaged over K draws); FAB and Square have no EOT. For fixed parts
the model must know which sample each row is: pyautoattack calls the model on subsets of the
batch in increasing index order, so every call's rows are mapped to the samples being attacked
by nearest clean image under a monotone order constraint (:func:`attacks.core.match_rows`), which
is exact unless two clean images are nearly identical. (Running AutoAttack one sample at a time
would avoid the mapping but costs a batch-size factor in time.)

pyautoattack seeds torch's global RNG inside its attacks; we draw its seed from ``generator``
and restore the global RNG state afterwards.
"""
from __future__ import annotations

import torch
from torch import Tensor

from benchmark.errors import BenchError
from defenses.base import Defense, Noise

from .core import Best, NoisePolicy, Objective, PolicyModel, project, validate_params

AA_THREATS = ("linf", "l2")
_NORMS = {"linf": "Linf", "l2": "L2"}


def _set_apgd_iterations(apgd, n_iter: int) -> None:
    """Change APGD's iteration budget, with the step-size checkpoints its __init__ derives from it."""
    apgd.n_iter = n_iter
    apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


def still_standing(err: Tensor) -> Tensor:
    """Samples to attack further: their kept candidate is classified correctly on at least one of
    the evaluation passes (``err`` is the misclassification rate over those passes)."""
    return err < 1


def _run_component(aa, name: str, x: Tensor, y: Tensor, seed: int) -> Tensor:
    """One pyautoattack component, set up as ``AutoAttack.run_standard_evaluation`` does."""
    if name in ("apgd-ce", "apgd-dlr"):
        aa.apgd.loss = name.split("-")[1]
        aa.apgd.seed = seed
        return aa.apgd.perturb(x, y)
    if name == "apgd-t":
        aa.apgd_targeted.seed = seed
        return aa.apgd_targeted.perturb(x, y)
    if name in ("fab", "fab-t"):
        aa.fab.targeted = name == "fab-t"
        if name == "fab-t":
            aa.fab.n_restarts = 1
        aa.fab.seed = seed
        return aa.fab.perturb(x, y)
    if name == "square":
        aa.square.seed = seed
        return aa.square.perturb(x, y)
    raise BenchError(f"unknown AutoAttack component {name!r}")


def autoattack(
    defense: Defense,
    x: Tensor,
    y: Tensor,
    *,
    threat: str = "linf",
    eps: float = 8 / 255,
    version: str = "standard",
    steps: int = 100,
    restarts: int | None = None,
    noise_policy: str | NoisePolicy = "fresh",
    grad_mode: str = "exact",
    generator: torch.Generator | None = None,
    eval_noise: Noise | None = None,
    eval_iter: int = 20,
    square_queries: int = 5000,
) -> Tensor:
    """AutoAttack ``version`` (standard | rand) at ``eps`` in L-inf or L2; returns x_adv.

    ``steps`` is the iteration count of APGD and FAB (100 in AutoAttack), ``restarts`` overrides
    APGD's restarts (None: the version's), ``square_queries`` is Square's budget (5000).
    ``eval_iter`` forward passes decide robustness between components (see module docstring).
    """
    validate_params(threat, dict(eps=eps, steps=steps, restarts=restarts, noise_policy=noise_policy,
                                 grad_mode=grad_mode, version=version, eval_iter=eval_iter,
                                 square_queries=square_queries), AA_THREATS)
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:  # pragma: no cover - dependency is in the project's requirements
        raise BenchError(f"AutoAttack needs the pyautoattack package ({e})") from None
    obj = Objective(defense, noise_policy=noise_policy, grad_mode=grad_mode, generator=generator,
                    eval_noise=eval_noise)
    obj.check_batch(x)
    x = x.detach().contiguous()
    y = y.to(x.device).contiguous()
    n = x.shape[0]
    model = PolicyModel(obj)
    all_idx = torch.arange(n, device=x.device)
    with torch.no_grad():
        o1 = obj.select(all_idx[:1])
        n_cls = int(defense(x[:1], o1.draw_noise(x[:1])).shape[1])
    need = 4 if version == "standard" else 3
    if n_cls < need:
        raise BenchError(f"AutoAttack {version} needs at least {need} classes (DLR loss), the model has {n_cls}")
    passes = 1 if obj.deterministic else int(eval_iter)

    def gen_seed() -> int:
        dev = generator.device if generator is not None else "cpu"
        return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=dev).item())

    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        aa = AutoAttack(model, eps=float(eps), norm=_NORMS[threat], version=version, device=x.device,
                        seed=gen_seed())
        aa.verbose = False
        for apgd in (aa.apgd, aa.apgd_targeted):
            _set_apgd_iterations(apgd, int(steps))
        aa.fab.n_iter = int(steps)
        if restarts is not None:
            aa.apgd.n_restarts = int(restarts)
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, n_cls - 1)
        aa.fab.n_target_classes = min(aa.fab.n_target_classes, n_cls - 1)
        aa.square.n_queries = int(square_queries)
        aa.apgd.eot_iter = obj.draws
        aa.apgd_targeted.eot_iter = obj.draws

        best = Best(x)
        best.offer(all_idx, x, *obj.evaluate(x, y, draws=passes))
        for name in aa.attacks_to_run:
            idx = still_standing(best.err).nonzero().flatten()  # correct on at least one pass
            if idx.numel() == 0:
                break
            o = obj.select(idx)
            model.bind(x[idx], o.eval_noise)
            xs, ys = x[idx].contiguous(), y[idx].contiguous()
            adv = _run_component(aa, name, xs, ys, gen_seed()).detach()
            adv = xs + project(adv - xs, xs, threat, float(eps))  # guard against rounding overshoot
            best.offer(idx, adv, *o.evaluate(adv, ys, draws=passes))
    return best.x.detach()
