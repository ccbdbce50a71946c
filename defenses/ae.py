"""A small denoising masked autoencoder purifier, in the spirit of DMAE (Wu et al. 2023).

DMAE corrupts an image with Gaussian noise and masks most patches, encodes the visible
patches with a ViT and reconstructs the clean image with a light ViT decoder; the loss is
the pixel MSE over the whole image (noisy visible patches must be denoised too). AToP uses
it as its AE-based purifier behind RT2 (Lin et al., Table 5). Here the ViT patches coincide
with the RT patches (side / 8, 4x4 on CIFAR-10), so the encoder sees only the kept patches,
as in MAE; it needs the same number of kept patches in every image, which the random
transforms guarantee (exact missing counts).

Size (defaults): 128-wide encoder of depth 4, 96-wide decoder of depth 2, 4 heads, MLP ratio
2: 718k parameters, 36M multiply-adds per 32x32 image with 48 of 64 patches kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    """Pre-norm transformer block (self-attention + GELU MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


class MaskedAEPurifier(nn.Module):
    """g(x_t, keep) -> clean image in [0,1]: encode kept patches, decode all patches."""

    def __init__(self, image_size: int = 32, grid: int = 8, dim: int = 128, depth: int = 4,
                 dec_dim: int = 96, dec_depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if image_size % grid:
            raise ValueError(f"image size {image_size} not divisible by grid {grid}")
        self.grid, self.patch = grid, image_size // grid
        pdim = 3 * self.patch * self.patch
        self.embed = nn.Linear(pdim, dim)
        self.pos = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)
        self.enc = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.enc_norm = nn.LayerNorm(dim)
        self.dec_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.dec_pos = nn.Parameter(torch.randn(1, grid * grid, dec_dim) * 0.02)
        self.dec = nn.ModuleList(Block(dec_dim, heads, mlp_ratio) for _ in range(dec_depth))
        self.dec_norm = nn.LayerNorm(dec_dim)
        self.head = nn.Linear(dec_dim, pdim)

    def patchify(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p, g = self.patch, self.grid
        return x.view(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)

    def unpatchify(self, t: Tensor) -> Tensor:
        b = t.shape[0]
        p, g = self.patch, self.grid
        return t.view(b, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, g * p, g * p)

    def forward(self, xt: Tensor, keep: Tensor) -> Tensor:
        b = xt.shape[0]
        p, g = self.patch, self.grid
        # patch-level keep flags from the pixel mask (a patch is kept when its pixels are)
        kp = F.avg_pool2d(keep.to(xt.dtype), p).flatten(1) > 0.5  # (B, G*G)
        counts = kp.sum(1)
        if not bool((counts == counts[0]).all()):
            raise ValueError("MaskedAEPurifier needs the same number of kept patches in every image")
        n_vis = int(counts[0])
        # stable order: kept patches first, each group in raster order
        order = torch.argsort((~kp).to(torch.int8), dim=1, stable=True)
        vis_idx = order[:, :n_vis]
        tokens = self.embed(self.patchify(xt)) + self.pos
        d = tokens.shape[-1]
        h = torch.gather(tokens, 1, vis_idx.unsqueeze(-1).expand(-1, -1, d))
        for blk in self.enc:
            h = blk(h)
        h = self.dec_embed(self.enc_norm(h))
        full = self.mask_token.to(h.dtype).expand(b, g * g, -1).clone()
        full = full.scatter(1, vis_idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]), h)
        full = full + self.dec_pos
        for blk in self.dec:
            full = blk(full)
        return torch.sigmoid(self.unpatchify(self.head(self.dec_norm(full))))


def mae_loss(pred: Tensor, x: Tensor) -> Tensor:
    """L_mae: pixel MSE between the reconstruction and the clean image, over all patches (DMAE)."""
    return F.mse_loss(pred, x)


__all__ = ["MaskedAEPurifier", "mae_loss", "Block"]
