"""DDPM noise schedule, forward marginal and DDPM/DDIM reverse steps with explicit noise.

Conventions (those of DDPM, guided-diffusion and diffusers): timesteps are 0-indexed,
``alpha_bar[t] = prod_{s<=t} (1 - beta_s)``, images live in [-1, 1]. Purification to
``t* = 0.1`` with T = 1000 diffuses to index ``n - 1 = 99`` (n = 100 noise levels, as
DiffPure's ``q_sample(x, t=99)``) and denoises with K <= n steps at the timesteps
``tau_i = round(n (K - i) / K) - 1`` (i = 0..K-1; K = n gives 99, 98, ..., 0), the last step
jumping to the clean image. A step from ``t`` to ``s < t`` is the DDPM posterior of the
respaced chain (guided-diffusion's ``SpacedDiffusion``: ``beta' = 1 - abar_t / abar_s``) or the
deterministic DDIM update; with K = n the DDPM step is the plain ancestral step.

Every random number is an argument (``forward`` noise of the marginal, one ``reverse`` noise
tensor per step), so that purification is a pure function of image and noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Sampler = Literal["ddpm", "ddim"]
EpsModel = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Schedule:
    """Linear beta schedule (Ho et al. 2020: 1e-4 .. 2e-2, T = 1000), kept in float64."""

    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2

    @property
    def betas(self) -> Tensor:
        return torch.linspace(self.beta_start, self.beta_end, self.T, dtype=torch.float64)

    @property
    def alpha_bar(self) -> Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    def abar(self, t: int) -> float:
        """alpha_bar at index t; index -1 means the clean image (1.0)."""
        return 1.0 if t < 0 else float(self.alpha_bar[t])

    def to_dict(self) -> dict[str, float | int]:
        return {"T": self.T, "beta_start": self.beta_start, "beta_end": self.beta_end, "schedule": "linear"}


def q_sample(x0: Tensor, t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """Forward marginal x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, for per-sample indices t (N,)."""
    ab = alpha_bar.to(device=x0.device, dtype=torch.float64)[t.long()].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps


def n_levels(t_star: float, T: int) -> int:
    """Number of noise levels n of a purification to t* (fraction of T): DiffPure's t = round(t* T)."""
    n = int(round(t_star * T))
    if not 1 <= n <= T:
        raise ValueError(f"t_star={t_star} gives {n} noise levels; need 1..{T}")
    return n


def timesteps(n: int, steps: int) -> list[int]:
    """The K = ``steps`` denoising timesteps from index n-1, evenly strided, last step to clean."""
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be in 1..{n} (the number of noise levels), got {steps}")
    return [int(round(n * (steps - i) / steps)) - 1 for i in range(steps)]


@dataclass(frozen=True)
class StepCoef:
    """Coefficients of one reverse step t -> s (s = -1: clean)."""

    t: int
    s: int
    abar_t: float
    abar_s: float
    variance: str = "fixed_small"  # diffusers' names: fixed_small = the posterior's, fixed_large = beta (ADDT's eval)

    @property
    def ddpm_coefs(self) -> tuple[float, float, float]:
        """(c_x0, c_xt, sigma): x_s = c_x0 x0_hat + c_xt x_t + sigma z (posterior mean of the respaced chain;
        sigma^2 the posterior variance, or with ``fixed_large`` beta itself, zero on the step to clean,
        as diffusers' DDPMScheduler(variance_type="fixed_large"))."""
        beta = 1.0 - self.abar_t / self.abar_s
        c_x0 = self.abar_s**0.5 * beta / (1.0 - self.abar_t)
        c_xt = (self.abar_t / self.abar_s) ** 0.5 * (1.0 - self.abar_s) / (1.0 - self.abar_t)
        if self.variance == "fixed_large":
            var = beta if self.s >= 0 else 0.0
        else:
            var = beta * (1.0 - self.abar_s) / (1.0 - self.abar_t)
        return c_x0, c_xt, max(var, 0.0) ** 0.5


def step_coefs(schedule: Schedule, ts: list[int], variance: str = "fixed_small") -> list[StepCoef]:
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"variance must be fixed_small (posterior) or fixed_large (beta), got {variance!r}")
    nxt = ts[1:] + [-1]
    return [StepCoef(t, s, schedule.abar(t), schedule.abar(s), variance) for t, s in zip(ts, nxt)]


def call_eps(model: EpsModel, x: Tensor, t: Tensor, use_checkpoint: bool) -> Tensor:
    """One UNet call, checkpointed when a gradient will flow (activations are recomputed in
    backward, so memory stays flat in the number of steps; the gradient is exact)."""
    if use_checkpoint and torch.is_grad_enabled() and x.requires_grad:
        return checkpoint(model, x, t, use_reentrant=False)
    return model(x, t)


def reverse(
    model: EpsModel,
    x: Tensor,
    coefs: list[StepCoef],
    sampler: Sampler,
    noise: Tensor | None,
    *,
    clip_denoised: bool = True,
    use_checkpoint: bool = True,
) -> Tensor:
    """Run the reverse chain from x = x_{coefs[0].t} to the clean estimate.

    ``noise`` (N, K, C, H, W) holds one standard normal tensor per step for ``ddpm`` (the last
    step's slice is unused: it has zero variance); ``ddim`` takes none.
    """
    if sampler == "ddpm":
        if noise is None or noise.shape[1] != len(coefs) or noise.shape[0] != x.shape[0]:
            raise ValueError(f"ddpm needs reverse noise of shape (N, {len(coefs)}, ...), got {None if noise is None else tuple(noise.shape)}")
    elif sampler != "ddim":
        raise ValueError(f"unknown sampler {sampler!r}; use 'ddpm' or 'ddim'")
    for i, c in enumerate(coefs):
        tt = torch.full((x.shape[0],), c.t, device=x.device, dtype=torch.long)
        eps = call_eps(model, x, tt, use_checkpoint).to(x.dtype)
        x0 = (x - (1.0 - c.abar_t) ** 0.5 * eps) / c.abar_t**0.5
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        if sampler == "ddpm":
            c_x0, c_xt, sigma = c.ddpm_coefs
            x = c_x0 * x0 + c_xt * x
            if sigma > 0:
                x = x + sigma * noise[:, i]  # type: ignore[index]
        else:
            eps_hat = (x - c.abar_t**0.5 * x0) / (1.0 - c.abar_t) ** 0.5
            x = c.abar_s**0.5 * x0 + (1.0 - c.abar_s) ** 0.5 * eps_hat
    return x


def surrogate_noise_weights(schedule: Schedule, parent_ts: list[int], child_ts: list[int],
                            variance: str = "fixed_small") -> list[list[tuple[int, float]]]:
    """For each step j of a coarser chain (``child_ts``), the parent steps i it covers and their
    weights w_i, such that child_noise_j = sum_i w_i z_i / sqrt(sum_i w_i^2).

    Parent step i (tau_i -> tau_{i+1}) belongs to child step j when child_t[j] >= tau_i > child_t[j+1].
    w_i is the standard deviation with which z_i reaches the end of the group: sigma_i times the
    x_t coefficients of the later parent steps in the group. With the clean estimate held fixed the
    composed parent steps are exactly the child step's Gaussian posterior, so the child noise is the
    normalised projection of the parent noise onto it (exactly N(0, 1) for independent z_i).
    """
    pc = step_coefs(schedule, parent_ts, variance)
    nxt = child_ts[1:] + [-1]
    groups: list[list[tuple[int, float]]] = []
    for hi, lo in zip(child_ts, nxt):
        members = [i for i, c in enumerate(pc) if hi >= c.t > lo]
        ws: list[tuple[int, float]] = []
        for pos, i in enumerate(members):
            w = pc[i].ddpm_coefs[2]
            for k in members[pos + 1 :]:
                w *= pc[k].ddpm_coefs[1]
            ws.append((i, w))
        groups.append(ws)
    return groups
