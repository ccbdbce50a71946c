"""AToP's random transforms RT1/RT2/RT3 (Lin et al., Sec. 3.1, Eqs. 2-4), with explicit noise.

All randomness of a transform is drawn by :meth:`RandomTransform.sample_noise` into two
named parts, so an attacker can average over it (EOT) or replay it (DW-box):

- ``mask``: float {0,1} keep-mask on the patch grid, shape (N, K, G, G) with G = 8 (patch
  side p = image side / 8, the paper's p = P/8) and K = 1 for RT1/RT2, K = N_masks = 4 for
  RT3. 1 = pixel kept, 0 = missing. Exactly round(r * G^2) patches are missing per image
  and per mask (r = 0.25: 16 of 64), drawn uniformly without replacement.
  For RT3 the K masks are non-overlapping and together cover the image: one random
  permutation of the G^2 patches is cut into K groups, group i is what mask i hides, so
  sum_i (1 - m_i) = 1 everywhere ("the noisy image is covered randomly by four
  non-overlapping masks with missing rate r = 0.25", supplementary; K * r = 1).
- ``gaussian``: standard normal (N, C, H, W); the transform adds sigma * gaussian (RT2,
  RT3; sigma = 0.25). RT3 shares one noisy image x + eta between its K masks (Eq. 4).

No clipping after adding noise: Eq. 3 feeds m * (x + eta) to the purifier as is.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from defenses.base import Noise, Stage, rand, randn

RT_KINDS = ("rt1", "rt2", "rt3")
GRID = 8  # patches per side: p = side / 8


class RandomTransform(Stage):
    """RT1 (mask), RT2 (noise then mask) or RT3 (noise, K complementary masks).

    ``views(x, noise)`` gives the purifier inputs (K views stacked view-major along the
    batch) and their pixel keep-masks; ``combine(outputs, noise)`` merges the purifier's
    outputs into x-hat (identity for K = 1; Eq. 4 for RT3). ``forward`` is the transform
    t(x) of RT1/RT2 (the single view).
    """

    def __init__(self, kind: str = "rt2", *, sigma: float = 0.25, rate: float = 0.25,
                 n_masks: int = 4, grid: int = GRID) -> None:
        super().__init__()
        if kind not in RT_KINDS:
            raise ValueError(f"unknown random transform {kind!r}; known: {', '.join(RT_KINDS)}")
        if not 0.0 < rate < 1.0:
            raise ValueError(f"missing rate must be in (0, 1), got {rate}")
        if kind == "rt3" and abs(n_masks * rate - 1.0) > 1e-6:
            raise ValueError(f"RT3 needs n_masks * rate == 1 (masks partition the image); got {n_masks} x {rate}")
        self.kind = kind
        self.sigma = float(sigma) if kind != "rt1" else 0.0
        self.rate = float(rate)
        self.k = int(n_masks) if kind == "rt3" else 1
        self.grid = int(grid)
        self.noise_names = ("mask",) if kind == "rt1" else ("mask", "gaussian")

    def extra_repr(self) -> str:
        return f"kind={self.kind}, sigma={self.sigma}, rate={self.rate}, masks={self.k}, grid={self.grid}"

    @property
    def n_missing(self) -> int:
        """Missing patches per mask (exact count)."""
        return int(round(self.rate * self.grid * self.grid))

    # --- noise -------------------------------------------------------------------------
    def sample_noise(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        n, g2 = x.shape[0], self.grid * self.grid
        if x.shape[-1] % self.grid or x.shape[-2] % self.grid:
            raise ValueError(f"image side {tuple(x.shape[-2:])} is not divisible by the patch grid {self.grid}")
        # a uniform random permutation of the patches per image (argsort of uniforms)
        order = rand((n, g2), generator, x).argsort(dim=1)
        rank = order.argsort(dim=1)  # rank[j] = position of patch j in the permutation
        if self.kind == "rt3":
            group = torch.div(rank * self.k, g2, rounding_mode="floor")  # K groups of g2/K patches
            hidden = group.unsqueeze(1) == torch.arange(self.k, device=x.device).view(1, self.k, 1)
        else:
            hidden = (rank < self.n_missing).unsqueeze(1)
        parts = {"mask": (~hidden).to(x.dtype).view(n, self.k, self.grid, self.grid)}
        if self.kind != "rt1":
            parts["gaussian"] = randn(x.shape, generator, x)
        return parts

    def sample(self, x: Tensor, generator: torch.Generator | None = None) -> Noise:
        """This transform's noise alone, as a Noise object."""
        parts = self.sample_noise(x, generator)
        return Noise(x.shape[0], {k: parts[k] for k in self.noise_names})

    # --- application -------------------------------------------------------------------
    def pixel_masks(self, noise: Noise, size: tuple[int, int]) -> Tensor:
        """Pixel keep-masks (N, K, H, W) from the patch-grid masks (nearest upsampling)."""
        m = noise["mask"]
        h, w = size
        return m.repeat_interleave(h // m.shape[-2], dim=-2).repeat_interleave(w // m.shape[-1], dim=-1)

    def views(self, x: Tensor, noise: Noise) -> tuple[Tensor, Tensor]:
        """Purifier inputs (K*N, C, H, W), view-major, and their keep-masks (K*N, 1, H, W)."""
        m = self.pixel_masks(noise, x.shape[-2:]).to(x.dtype)  # (N, K, H, W)
        if m.shape[1] != self.k:
            raise ValueError(f"{self.kind} expects {self.k} mask(s) per image, noise has {m.shape[1]}")
        base = x + self.sigma * noise["gaussian"] if self.sigma > 0 else x
        keep = m.transpose(0, 1).reshape(self.k * x.shape[0], 1, *x.shape[-2:])
        xt = base.repeat(self.k, 1, 1, 1) * keep
        return xt, keep

    def combine(self, outputs: Tensor, noise: Noise) -> Tensor:
        """x-hat from the purifier outputs of :meth:`views`: for RT3 keep only generated pixels (Eq. 4)."""
        if self.k == 1:
            return outputs
        n = noise.n
        m = self.pixel_masks(noise, outputs.shape[-2:]).to(outputs.dtype).transpose(0, 1)  # (K, N, H, W)
        out = outputs.view(self.k, n, *outputs.shape[1:])
        return ((1.0 - m).unsqueeze(2) * out).sum(dim=0)

    def purify(self, x: Tensor, noise: Noise, purifier: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """x-hat = combine(g(views(x))) for a purifier g(x_t, keep) -> image."""
        xt, keep = self.views(x, noise)
        return self.combine(purifier(xt, keep), noise)

    def forward(self, x: Tensor, noise: Noise) -> Tensor:
        if self.k != 1:
            raise RuntimeError("RT3 produces several views; use views()/combine() (AToPDefense does)")
        return self.views(x, noise)[0]


def missing_fraction(noise: Noise) -> Tensor:
    """Per-image, per-mask fraction of missing patches (N, K); for tests and reports."""
    m = noise["mask"]
    return 1.0 - m.flatten(2).mean(dim=2)


def grid_for(side: int) -> int:
    """Patch grid for an image side (always 8: p = side / 8); checks divisibility."""
    if side % GRID:
        raise ValueError(f"image side {side} is not divisible by {GRID}")
    return GRID


__all__ = ["RandomTransform", "RT_KINDS", "GRID", "missing_fraction", "grid_for"]
