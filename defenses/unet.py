"""A compact DDPM UNet (epsilon prediction) written in plain torch.

Why our own rather than ``diffusers.UNet2DModel``: the benchmark must attack the purifier
with exact gradients through every denoising step on a 2-core CPU. A PGD-20 + EOT-10
evaluation of 64 images with 10 denoising steps is ~128k image-UNet forward+backward passes
(plus the checkpoint recompute), so the UNet may cost only ~100 MFLOPs per 32x32 image; the
published CIFAR-10 DDPM in its diffusers layout (``google/ddpm-cifar10-32``: 35.7M parameters,
12.1 GFLOPs per forward pass counted by :func:`conv_flops`) costs ~100x that. The shipped
config (1.07M parameters, 125 MFLOPs) measured 2.4 s for one exact gradient of 64 images
through 10 checkpointed steps on 2 cores (purifier only; with the flip-TTA classifier a
PGD-20 + EOT-10 of 64 images measured ~14 min, not 10). diffusers is an optional extra,
used only to load published checkpoints.
The architecture is the DDPM one (Ho et al. 2020: residual blocks with GroupNorm, SiLU,
sinusoidal time embedding added in every block, optional self-attention, skip connections)
shrunk to that budget; ``patch > 1`` adds a pixel-unshuffle stem so the top level runs at
half resolution, which cuts the cost about 4x at a small quality price.

Published diffusers checkpoints (``google/ddpm-cifar10-32``) are loaded through
:func:`load_diffusers_unet`, which imports diffusers lazily and wraps ``UNet2DModel`` so
that it has the same ``forward(x, t) -> eps`` signature.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from benchmark.errors import BenchError
from defenses.weights import load_state_dict


@dataclass
class UNetConfig:
    """Architecture hyper-parameters (stored in every recipe record)."""

    in_ch: int = 3
    ch: int = 32  # base channels
    ch_mult: tuple[int, ...] = (1, 2, 2)  # channel multiplier per resolution level
    num_res_blocks: int = 1  # residual blocks per level on the way down (up uses +1)
    attn_levels: tuple[int, ...] = ()  # level indices (0 = top) that get self-attention
    mid_attn: bool = True  # self-attention in the bottleneck
    dropout: float = 0.1
    patch: int = 2  # pixel-unshuffle stem: the top level runs at resolution / patch
    groups: int = 8  # GroupNorm groups (reduced to a divisor of the channel count)

    def validate(self) -> None:
        if self.ch < 1 or not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError("ch and ch_mult must be positive")
        if self.patch not in (1, 2, 4):
            raise ValueError(f"patch must be 1, 2 or 4, got {self.patch}")
        if any(not 0 <= lv < len(self.ch_mult) for lv in self.attn_levels):
            raise ValueError(f"attn_levels {self.attn_levels} outside 0..{len(self.ch_mult) - 1}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"], d["attn_levels"] = list(self.ch_mult), list(self.attn_levels)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "UNetConfig":
        d = dict(d)
        for k in ("ch_mult", "attn_levels"):
            if k in d:
                d[k] = tuple(d[k])
        cfg = UNetConfig(**d)
        cfg.validate()
        return cfg


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(ch, groups), ch)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM/transformers."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = _norm(cout, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head spatial self-attention (DDPM's AttnBlock)."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, 1, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (n, 1, hw, c)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """epsilon_theta(x_t, t): images in [-1, 1] (N, C, H, W) and timesteps (N,) -> noise estimate."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        cfg.validate()
        self.config = cfg
        ch, g, p = cfg.ch, cfg.groups, cfg.patch
        temb = 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.stem = nn.Conv2d(cfg.in_ch * p * p, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [ch]
        cur = ch
        for lv, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                blk = nn.ModuleList([ResBlock(cur, ch * mult, temb, cfg.dropout, g)])
                cur = ch * mult
                if lv in cfg.attn_levels:
                    blk.append(Attention(cur, g))
                self.down.append(blk)
                skips.append(cur)
            if lv != len(cfg.ch_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                skips.append(cur)

        self.mid1 = ResBlock(cur, cur, temb, cfg.dropout, g)
        self.mid_attn = Attention(cur, g) if cfg.mid_attn else nn.Identity()
        self.mid2 = ResBlock(cur, cur, temb, cfg.dropout, g)

        self.up = nn.ModuleList()
        for lv, mult in reversed(list(enumerate(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                blk = nn.ModuleList([ResBlock(cur + skips.pop(), ch * mult, temb, cfg.dropout, g)])
                cur = ch * mult
                if lv in cfg.attn_levels:
                    blk.append(Attention(cur, g))
                self.up.append(blk)
            if lv != 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cur, cur, 3, padding=1)]))
        assert not skips
        self.out_norm = _norm(cur, g)
        self.out = nn.Conv2d(cur, cfg.in_ch * p * p, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        cfg = self.config
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.temb(timestep_embedding(t, cfg.ch))
        if cfg.patch > 1:
            x = F.pixel_unshuffle(x, cfg.patch)
        h = self.stem(x)
        hs = [h]
        for blk in self.down:
            if isinstance(blk[0], ResBlock):
                h = blk[0](h, emb)
                for m in blk[1:]:
                    h = m(h)
            else:
                h = blk[0](h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blk in self.up:
            if isinstance(blk[0], ResBlock):
                h = blk[0](torch.cat([h, hs.pop()], dim=1), emb)
                for m in blk[1:]:
                    h = m(h)
            else:
                h = blk[1](blk[0](h))
        h = self.out(F.silu(self.out_norm(h)))
        if cfg.patch > 1:
            h = F.pixel_shuffle(h, cfg.patch)
        return h


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_flops(model: nn.Module, shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulates x2 of the convolutions, linears and attention for one forward pass
    (elementwise ops excluded), counted with forward hooks."""
    total = [0]

    def conv_hook(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total[0] += 2 * out.numel() * k
        elif isinstance(m, nn.Linear):
            total[0] += 2 * out.numel() * m.in_features
        elif isinstance(m, Attention):
            n, c, h, w = inp[0].shape
            total[0] += 2 * 2 * n * (h * w) ** 2 * c

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, Attention))]
    try:
        with torch.no_grad():
            model(torch.zeros(shape), torch.zeros(shape[0]))
    finally:
        for h in handles:
            h.remove()
    return total[0] // shape[0]


class DiffusersUNet(nn.Module):
    """``diffusers.UNet2DModel`` behind our ``forward(x, t) -> eps`` signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return self.model(x, t).sample


def load_diffusers_unet(folder: str | Path) -> tuple[DiffusersUNet, dict[str, Any]]:
    """Load a diffusers-format DDPM (``unet/config.json`` + ``unet/diffusion_pytorch_model.{safetensors,bin}``,
    ``scheduler/scheduler_config.json``) from a local folder, e.g. a copy of ``google/ddpm-cifar10-32``.

    Returns the wrapped UNet (eval mode, CPU) and the scheduler config dict. ``.bin`` weights are
    read with ``torch.load(weights_only=True)`` through :func:`defenses.weights.load_state_dict`.
    """
    root = Path(folder)
    unet_dir = root / "unet" if (root / "unet").is_dir() else root
    cfg_path = unet_dir / "config.json"
    if not cfg_path.is_file():
        raise BenchError(f"not a diffusers UNet folder (no {cfg_path})")
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise BenchError(
            "loading a diffusers checkpoint needs the optional package diffusers (pip install diffusers)"
        ) from None
    config = json.loads(cfg_path.read_text())
    model = UNet2DModel.from_config(config)
    weights = [unet_dir / f for f in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
    found = [w for w in weights if w.is_file()]
    if not found:
        raise BenchError(f"no diffusion_pytorch_model.safetensors/.bin in {unet_dir}")
    state = load_state_dict(found[0])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BenchError(f"diffusers checkpoint {found[0]} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    sched_path = root / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text()) if sched_path.is_file() else {}
    return DiffusersUNet(model).eval(), sched
