"""`bench train addt`: Adversarial Denoising Diffusion Training (ADDT) of our CIFAR-10 DDPM.

Source: Liu et al., "Understanding and Enhancing the Robustness of Diffusion-Based
Purification" (NeurIPS 2024 submission 1523; /work/shared/papers/addt-openreview.txt). The
abstract names the two parts: classifier-guided perturbations integrated into diffusion
training (ADDT), and Rank-Based Gaussian Mapping (RBGM) "to make perturbations more compatible
with the diffusion models". The paper body is not in our copy; the concrete recipe below is the
one fixed by the project's issue, and the choices it leaves open are marked "ours":

1. Sample x0, a timestep t uniformly over [0, T) as the reference does (``t_max = T``; our DDPM
   was pre-trained with most t < 300, ``t_max``/``t_full_frac`` keep that option) and
   r = clamp(r_scale * sqrt(abar_t) / sqrt(1 - abar_t), 0, r_max) (r_scale = 0.03, r_max = 0.3).
   In image space the perturbation is then sqrt(1 - abar_t) r delta_g ~ 0.03 sqrt(abar_t) delta_g:
   a fixed-size perturbation of the clean-image component, capped at high SNR.
2. Classifier-guided perturbation, as ADDT's reference trainer (LYMDLUT/ADDT
   ``train_DDPM_DDIM_ADDT/train_ADDT.py``) runs it: delta starts as a fresh N(0,1) draw; each of
   ``cgpo_iters`` (5) iterations draws ``eot`` (1) fresh eps, builds
   x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)(sqrt(1 - r^2) eps + r delta), backpropagates the
   classifier's cross-entropy through the one-step prediction
   x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t) (not clamped: a clamp
   cuts the gradient of saturated pixels), adds the gradient to a running sum, and sets
   delta = RBGM(running sum): fresh N(0,1) values in the rank order of the *accumulated* gradient.
   The UNet stays in train mode (its dropout is active) during these passes, as in the reference.
3. RBGM: per image and channel, fresh N(0,1) values are sorted and placed in the rank order of
   the given tensor, so delta_g is an exact N(0,1) sample set ordered like it.
4. The UNet trains with MSE against the mixed noise eps_mix = sqrt(1 - r^2) eps + r delta_g
   (fresh eps), from which x_t is built; gradients clipped at norm 1; EMA weights are shipped like
   the DDPM's.

Deviations we keep, and why: our 1.07M-parameter UNet instead of the diffusers
google/ddpm-cifar10-32 one (35.7M params, ~100x the FLOPs: unattackable on a CPU; see
``defenses/unet.py``), the zoo's ``cifar10_standard`` classifier instead of the authors'
WRN-28-10 ``origin.t7``, and a constant EMA decay instead of diffusers' EMA warm-up (inv_gamma 1,
power 3/4, max 0.9999). The optimiser settings are in the configs.

Initialisation: our DDPM (``init``: a `bench train ddpm` run folder or a shipped name). The
classifier: ``classifier_run`` (a classifier training run folder) or ``$CLASSIFIER_RUN``, or a
registry name in ``classifier``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import BenchError

from .ddpm import (
    count_params,
    finish,
    load_classifier_run,
    load_train_config,
    load_train_eval,
    run_loop,
    sample_t,
    start_run,
    start_training,
    t_uniform,
    to_model_range,
)
from defenses.diffpure import load_unet
from defenses.unet import UNet


@dataclass
class ADDTTrainConfig:
    dataset: str = "cifar10"
    data_dir: str = "cifar10-jpeg"
    init: str = "runs/ddpm/ddpm_cifar10"  # DDPM run folder (weights.safetensors) or shipped name
    classifier_run: str = ""  # classifier run folder; "" = $CLASSIFIER_RUN
    classifier: str = ""  # or a registered classifier name (e.g. cifar10_standard) when no run folder is given
    t_max: int = 1000  # = T: t uniform over [0, T) as in the reference trainer
    t_full_frac: float = 0.0
    r_scale: float = 0.03  # r = clamp(r_scale * sqrt(abar) / sqrt(1 - abar), 0, r_max)
    r_max: float = 0.3
    cgpo_iters: int = 5  # refinement iterations of the classifier-guided perturbation (reference: 5)
    eot: int = 1  # eps draws per iteration, their gradients summed (reference: 1)
    x0_clamp: bool = False  # clamp the one-step x0 prediction to [-1, 1] (reference: no; a clamp cuts gradients)
    cgpo_train_mode: bool = True  # UNet in train mode (dropout on) during the guidance passes (reference: yes)
    adv_frac: float = 1.0  # fraction of each batch trained on the perturbed noise (rest: plain DDPM loss)
    batch_size: int = 256
    lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    epochs: int = 10
    time_limit_s: float = 0.0
    amp: bool = True  # bf16 autocast on CUDA
    amp_cpu: bool = False  # and on CPU (fast only where the CPU has bf16 instructions, e.g. avx512_bf16)
    hflip: bool = True
    n_train: int = 0
    seed: int = 0
    log_every: int = 0
    eval_images: int = 256
    eval_t_star: float = 0.1
    eval_steps: int = 10

    def validate(self) -> None:
        if self.dataset != "cifar10":
            raise ValueError("only dataset cifar10 is supported")
        if self.cgpo_iters < 0 or self.eot < 1:
            raise ValueError("cgpo_iters must be >= 0 and eot >= 1")
        if not 0.0 <= self.adv_frac <= 1.0 or not 0.0 <= self.t_full_frac <= 1.0:
            raise ValueError("adv_frac and t_full_frac must be in [0, 1]")
        if not 0.0 <= self.r_max < 1.0 or self.r_scale < 0:
            raise ValueError("need 0 <= r_max < 1 and r_scale >= 0")
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0:
            raise ValueError("batch_size, epochs and lr must be positive")


def rbgm(delta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rank-Based Gaussian Mapping: fresh N(0,1) values, sorted, placed in delta's rank order
    per image and channel. The result is an exact N(0,1) sample set with delta's ordering."""
    n, c = delta.shape[:2]
    flat = delta.detach().reshape(n, c, -1)
    dev = generator.device if generator is not None else delta.device
    z = torch.randn(flat.shape, generator=generator, device=dev, dtype=torch.float32).to(delta.device)
    z_sorted = z.sort(dim=-1).values
    order = flat.argsort(dim=-1, stable=True)  # order[k] = position of the k-th smallest delta
    out = torch.empty_like(z_sorted).scatter_(-1, order, z_sorted)
    return out.reshape(delta.shape).to(delta.dtype)


def mix_ratio(abar: Tensor, r_scale: float, r_max: float) -> Tensor:
    """r = clamp(r_scale * sqrt(abar) / sqrt(1 - abar), 0, r_max) per sample."""
    return (r_scale * abar.sqrt() / (1.0 - abar).sqrt()).clamp(0.0, r_max)


def classifier_guided_delta(
    model: nn.Module, classifier: nn.Module, x0: Tensor, y: Tensor, t: Tensor, abar: Tensor, r: Tensor,
    *, iters: int, eot: int, generator: torch.Generator, amp: bool, x0_clamp: bool = False,
    train_mode: bool = True,
) -> Tensor:
    """delta_g after ``iters`` guidance iterations: each sums the input gradient of the classifier's
    CE through the one-step x0 prediction (``eot`` fresh eps draws) into a running total and sets
    delta = RBGM(total). Gradients flow to delta only (model and classifier parameters are untouched);
    ``train_mode`` keeps the UNet's dropout active, as the reference trainer does."""
    was_training = model.training
    model.train(train_mode)
    b = x0.shape[0]
    view = (-1, 1, 1, 1)
    sa, s1a, rr = abar.sqrt().view(view), (1.0 - abar).sqrt().view(view), r.view(view)
    delta = torch.randn(x0.shape, generator=generator, device=x0.device)
    total = torch.zeros_like(delta)

    def rep(v: Tensor) -> Tensor:
        return v.repeat(eot, *([1] * (v.dim() - 1)))

    try:
        for _ in range(iters):
            d = delta.detach().requires_grad_(True)
            eps = torch.randn((eot * b, *x0.shape[1:]), generator=generator, device=x0.device)
            noise = (1.0 - rep(rr) ** 2).sqrt() * eps + rep(rr) * rep(d)
            xt = rep(sa) * rep(x0) + rep(s1a) * noise
            with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=amp):
                eps_pred = model(xt, rep(t))
            x0_hat = (xt - rep(s1a) * eps_pred.float()) / rep(sa)
            if x0_clamp:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
            with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = classifier((x0_hat + 1.0) / 2.0)
            loss = F.cross_entropy(logits.float(), rep(y), reduction="sum")
            (grad,) = torch.autograd.grad(loss, d)
            total = total + grad.detach()
            delta = rbgm(total, generator)
    finally:
        model.train(was_training)
    return delta


def addt_loss(
    model: nn.Module, classifier: nn.Module, x0: Tensor, y: Tensor, t: Tensor, alpha_bar: Tensor, cfg: ADDTTrainConfig,
    generator: torch.Generator, amp: bool,
) -> Tensor:
    """One ADDT training loss: MSE of eps_theta(x_t, t) against the RBGM-mixed noise."""
    abar = alpha_bar[t].float()
    r = mix_ratio(abar, cfg.r_scale, cfg.r_max)
    if cfg.adv_frac < 1.0:
        r = torch.where(torch.rand(r.shape, generator=generator, device=r.device) < cfg.adv_frac, r, torch.zeros_like(r))
    delta_g = classifier_guided_delta(model, classifier, x0, y, t, abar, r, iters=cfg.cgpo_iters, eot=cfg.eot,
                                      generator=generator, amp=amp, x0_clamp=cfg.x0_clamp,
                                      train_mode=cfg.cgpo_train_mode)
    view = (-1, 1, 1, 1)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    target = (1.0 - r.view(view) ** 2).sqrt() * eps + r.view(view) * delta_g
    xt = abar.sqrt().view(view) * x0 + (1.0 - abar).sqrt().view(view) * target
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=amp):
        pred = model(xt, t)
    return F.mse_loss(pred.float(), target)


def load_classifier(cfg: ADDTTrainConfig, dev: torch.device) -> tuple[nn.Module, str]:
    path = cfg.classifier_run or os.environ.get("CLASSIFIER_RUN", "")
    if path:
        return load_classifier_run(path, dev), path
    if cfg.classifier:
        from benchmark.registry import CLASSIFIERS, load_builtins

        load_builtins()
        model = CLASSIFIERS.create(cfg.classifier, device=dev).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, f"registry:{cfg.classifier}"
    raise BenchError("ADDT needs a classifier: set classifier_run (a classifier run folder), $CLASSIFIER_RUN, "
                     "or classifier=<registered name>")


def main(
    config_path: str,
    *,
    device: str = "cpu",
    out_dir: str | None = None,
    data_root: str | None = None,
    resume: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """ADDT-fine-tune a DDPM run and write weights.safetensors + recipe.json into the output folder."""
    cfg: ADDTTrainConfig = load_train_config(config_path, ADDTTrainConfig, overrides)
    dev, out, log, root = start_run("addt", config_path, device, out_dir, data_root, tf32=False)

    init_model, schedule, init_source = load_unet(cfg.init)
    if not isinstance(init_model, UNet):
        raise BenchError(f"ADDT fine-tunes our UNet; {cfg.init} is a {type(init_model).__name__}")
    if cfg.t_max > schedule.T:
        raise BenchError(f"t_max={cfg.t_max} exceeds the schedule's T={schedule.T}")
    classifier, clf_path = load_classifier(cfg, dev)

    t_load = time.time()
    train_x, train_y, test_x, test_y = load_train_eval(root, cfg, dev)
    train_y = train_y.to(dev)
    log(f"data: {len(train_x)} training images on {dev} ({time.time() - t_load:.1f}s); init {init_source}; classifier {clf_path}")

    model = init_model.to(dev).train()
    ema, opt, perm_gen, gen, state, save_ckpt = start_training(cfg, model, dev, out, resume=resume, seed_offset=11,
                                                               log=log)
    alpha_bar = schedule.alpha_bar.to(dev)

    n = len(train_x)
    bs = min(cfg.batch_size, n)
    n_params = count_params(model)
    log(f"ADDT: UNet {n_params / 1e6:.3f}M params, batch {bs}, cgpo {cfg.cgpo_iters} iters x EOT {cfg.eot}, "
        f"r = clamp({cfg.r_scale} sqrt(abar)/sqrt(1-abar), 0, {cfg.r_max}), delta = RBGM(summed gradient)")

    use_amp = cfg.amp and (dev.type == "cuda" or cfg.amp_cpu)

    def loss_fn(idx: Tensor) -> Tensor:
        x0 = to_model_range(train_x[idx], cfg.hflip, gen)
        t = sample_t(len(idx), schedule.T, cfg.t_max, cfg.t_full_frac, gen, dev)
        return addt_loss(model, classifier, x0, train_y[idx], t, alpha_bar, cfg, gen, use_amp)

    stopped = run_loop(cfg, model, ema, opt, state, perm_gen, n, bs, loss_fn, save_ckpt, log, dev)
    extra = {"config_path": str(config_path), "init": init_source, "method": {
        "source": "Liu et al., NeurIPS 2024 submission 1523 (ADDT, RBGM); the guidance as LYMDLUT/ADDT "
                  "train_DDPM_DDIM_ADDT/train_ADDT.py runs it",
        "r": f"clamp({cfg.r_scale} * sqrt(abar_t) / sqrt(1 - abar_t), 0, {cfg.r_max})",
        "perturbation": f"{cfg.cgpo_iters} iterations, {cfg.eot} eps draw(s) each: the classifier CE's gradient through the "
                        f"one-step x0 prediction ({'clamped' if cfg.x0_clamp else 'not clamped'}) summed over iterations, "
                        f"delta = RBGM(rank order of the summed gradient); UNet in "
                        + (f"train mode (dropout rate {model.config.dropout:g}, the init UNet's)" if cfg.cgpo_train_mode
                         else "eval mode"),
        "timesteps": (f"uniform over [0, {schedule.T})" if t_uniform(schedule.T, cfg.t_max, cfg.t_full_frac) else
                      f"{cfg.t_full_frac:g} uniform over [0, {schedule.T}), the rest over [0, {cfg.t_max})"),
        "target": "eps_mix = sqrt(1 - r^2) eps + r RBGM(delta); x_t from eps_mix; MSE(eps_theta, eps_mix)",
    }}
    return finish(cfg, out, ema, model.config, schedule, test_x, test_y, dev, state, n_params, root, stopped, log,
                  kind="addt", extra=extra, classifier=classifier, classifier_path=clf_path)
