"""StAdv: spatially transformed adversarial examples (Xiao et al. 2018), our implementation.

x_adv = warp(x, flow): every output pixel is bilinearly resampled from the input at its own
position plus a per-pixel flow vector. Settings follow Laidlaw et al. (2021), whose evaluation
the AToP paper's Table 6 adopts ("all settings follow the same as Laidlaw et al. (2021)"),
as implemented in their ``perceptual_advex.attacks.StAdvAttack``:

* flow bound 0.05, L-inf on the flow, in **normalised grid units**: the image spans [-1, 1]
  along each axis (``grid_sample`` with ``align_corners=True``), so 0.05 is
  0.05 * (W - 1) / 2 pixels, about 0.78 px on a 32-px CIFAR image and 5.6 px at 224 px;
* Adam, learning rate 0.01, 100 iterations, flow initialised at zero;
* objective: CW margin loss without clamp (kappa = inf) plus tau * flow smoothness loss of
  Xiao et al. (sum over pixels p and 4-neighbours q of sqrt(|f_p - f_q|^2 + 1e-8)), with
  tau = 0.0025 / bound = 0.05.

The sampling grid is clamped to [-1, 1], so no pixel is read from outside the image.
Gradients go through :class:`attacks.core.Objective` (EOT, BPDA, fixed noise); the best
iterate is kept where the attacker's view is deterministic, as in :mod:`attacks.pgd`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.errors import BenchError
from defenses.base import Defense, Noise

from .core import Best, NoisePolicy, Objective, make_loss, validate_params


def identity_grid(x: Tensor) -> Tensor:
    """The sampling grid (1, H, W, 2) of the identity map, (x, y) order as in grid_sample."""
    n, _, h, w = x.shape
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=x.dtype, device=x.device)
    return F.affine_grid(theta, [1, 1, h, w], align_corners=True)


def warp(x: Tensor, flow: Tensor) -> Tensor:
    """Resample ``x`` (N, C, H, W) at identity + ``flow`` (N, H, W, 2), bilinearly."""
    grid = (identity_grid(x) + flow).clamp(-1.0, 1.0)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def flow_loss(flow: Tensor) -> Tensor:
    """Smoothness of the flow per sample (Xiao et al. 2018, Eq. 5), replicate padding at borders."""
    f = flow.permute(0, 3, 1, 2)
    p = F.pad(f, (1, 1, 1, 1), mode="replicate")
    h, w = f.shape[2], f.shape[3]
    total = flow.new_zeros(flow.shape[0])
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        nb = p[:, :, dy:dy + h, dx:dx + w]
        total = total + torch.sqrt(((f - nb) ** 2).sum(1) + 1e-8).sum((1, 2))
    return total


def stadv(
    defense: Defense,
    x: Tensor,
    y: Tensor,
    *,
    threat: str = "stadv",
    eps: float = 0.05,
    steps: int = 100,
    lr: float = 0.01,
    tau: float = 0.05,
    noise_policy: str | NoisePolicy = "fresh",
    grad_mode: str = "exact",
    generator: torch.Generator | None = None,
    eval_noise: Noise | None = None,
    eot_chunk: int | None = None,
    keep_best: bool | None = None,
    skip_fooled: bool = True,
    return_flow: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """StAdv with flow bound ``eps`` (grid units, see module docstring); returns x_adv (and the
    flow (N, H, W, 2) when ``return_flow``). Adam runs per sample (its state is elementwise),
    so samples can leave the attack early."""
    validate_params(threat, dict(eps=eps, steps=steps, lr=lr, tau=tau, noise_policy=noise_policy,
                                 grad_mode=grad_mode, eot_chunk=eot_chunk), ("stadv",))
    if x.dim() != 4:
        raise BenchError(f"StAdv needs NCHW images, got shape {tuple(x.shape)}")
    obj = Objective(defense, noise_policy=noise_policy, grad_mode=grad_mode, generator=generator,
                    eval_noise=eval_noise, eot_chunk=eot_chunk)
    obj.check_batch(x)
    x = x.detach()
    y = y.to(x.device)
    n, _, h, w = x.shape
    loss_fn = make_loss("cw", float("inf"))  # maximise -margin
    keep = obj.deterministic if keep_best is None else bool(keep_best)
    early = bool(skip_fooled) and obj.deterministic
    track = obj.deterministic or keep
    all_idx = torch.arange(n, device=x.device)
    best = Best(x) if track else None
    best_flow = torch.zeros(n, h, w, 2, dtype=x.dtype, device=x.device)

    def offer(idx: Tensor, xc: Tensor, fc: Tensor, err: Tensor, mar: Tensor) -> None:
        assert best is not None
        taken = best.offer(idx, xc, err, mar)
        best_flow[idx[taken]] = fc[taken].detach()

    if best is not None and obj.deterministic:
        e0, m0 = obj.evaluate(x, y)
        best.offer(all_idx, x, e0, m0)
    idx = (best.err < 1).nonzero().flatten() if (early and best is not None) else all_idx
    xs, ys, o = x[idx], y[idx], obj.select(idx)
    flow = torch.zeros(idx.numel(), h, w, 2, dtype=x.dtype, device=x.device)
    m1 = torch.zeros_like(flow)
    m2 = torch.zeros_like(flow)
    b1, b2, adam_eps = 0.9, 0.999, 1e-8
    live = torch.arange(idx.numel(), device=x.device)
    for t in range(1, steps + 1):
        if live.numel() == 0:
            break
        fl = flow[live].clone().requires_grad_(True)
        with torch.enable_grad():
            xw = warp(xs[live], fl)
        ol = o if live.numel() == idx.numel() else o.select(live)
        g_img, err, mar = ol.loss_grad(xw.detach(), ys[live], loss_fn)
        if keep and best is not None:
            offer(idx[live], xw.detach(), fl.detach(), err, mar)
        with torch.enable_grad():
            # minimise margin + tau * smoothness  ==  descend on -(loss) + tau * L_flow
            (g_flow,) = torch.autograd.grad(xw, fl, grad_outputs=-g_img)
            if tau > 0:
                (g_smooth,) = torch.autograd.grad(flow_loss(fl).sum(), fl)
                g_flow = g_flow + tau * g_smooth
        if early and best is not None:
            fooled = err >= 1
            if bool(fooled.any()):
                if not keep:
                    offer(idx[live[fooled]], xw.detach()[fooled], fl.detach()[fooled], err[fooled], mar[fooled])
                live, g_flow = live[~fooled], g_flow[~fooled]
                if live.numel() == 0:
                    break
        m1[live] = b1 * m1[live] + (1 - b1) * g_flow
        m2[live] = b2 * m2[live] + (1 - b2) * g_flow * g_flow
        upd = lr * (m1[live] / (1 - b1 ** t)) / ((m2[live] / (1 - b2 ** t)).sqrt() + adam_eps)
        flow[live] = (flow[live] - upd).clamp(-eps, eps)
    x_final = warp(xs, flow).detach()
    if best is not None:
        if live.numel():
            ol = o if live.numel() == idx.numel() else o.select(live)
            offer(idx[live], x_final[live], flow[live], *ol.evaluate(x_final[live], ys[live]))
        x_adv, f_adv = best.x, best_flow
    else:
        x_adv, f_adv = x_final, flow
    x_adv = x_adv.clamp(0.0, 1.0)
    return (x_adv, f_adv) if return_flow else x_adv
