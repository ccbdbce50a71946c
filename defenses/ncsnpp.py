"""score_sde's NCSN++ network in its DDPM++ configuration, our code with the authors' state-dict key names.

DiffPure's CIFAR-10 purifier is score_sde_pytorch's ``ncsnpp`` model (yang-song/score_sde_pytorch,
``models/ncsnpp.py``, ``models/layerspp.py``, ``models/layers.py``; copied unchanged into
NVlabs/DiffPure ``score_sde/models``) built from DiffPure's ``configs/cifar10.yml``, the
``vp/cifar10_ddpmpp_deep_continuous`` model: nf 128, ch_mult (1, 2, 2, 2), 8 residual blocks per
resolution, attention at 16 px, ``resblock_type: biggan`` (up/down sampling inside residual blocks,
no FIR), ``skip_rescale: True`` (residual sums divided by sqrt 2), ``progressive: none``,
``progressive_input: none``, ``embedding_type: positional``, ``conditional: True``,
``nonlinearity: swish``, ``dropout: 0.1``, ``centered: True`` (inputs in [-1, 1]),
``scale_by_sigma: False``.

The module tree is the authors' single ``all_modules`` ModuleList in their construction order
(``all_modules.0/1`` the two time-embedding Linears, ``all_modules.2`` the input conv, then the
down path, the middle ResBlock-Attn-ResBlock, the up path, the output GroupNorm and conv), with
their submodule names (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``GroupNorm_1``, ``Conv_1``,
``Conv_2`` in a ResBlock; ``GroupNorm_0``, ``NIN_0..3`` with ``W`` (in, out) and ``b`` in an
attention block), registered in the authors' order so that ``parameters()`` enumerates in their
order: score_sde's EMA stores ``shadow_params`` as a list in exactly that order.

Numerics as theirs: GroupNorm(min(C/4, 32), eps 1e-6); sinusoidal embedding ``[sin, cos]`` with
frequencies ``exp(-log(10000) k / (half - 1))``; attention over all positions with scale C^-1/2 and
the residual (x + h)/sqrt 2; naive 2x nearest up / 2x2 mean down sampling. The authors' buffer
``sigmas`` (SMLD noise levels, unused with ``scale_by_sigma: False`` and positional embedding) is
not kept; ADDT's copy of this network (``unet_sde_score_estimation.py``) drops it as well.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class NCSNppConfig:
    image_size: int = 32
    num_channels: int = 3
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 8
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    centered: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# NVlabs/DiffPure configs/cifar10.yml = score_sde configs/vp/cifar10_ddpmpp_deep_continuous.py
CIFAR10_DDPMPP_DEEP = NCSNppConfig()


def _groups(ch: int) -> int:
    return min(ch // 4, 32)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1)


def timestep_embedding(t: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    """score_sde's ``get_timestep_embedding``: [sin(t f), cos(t f)], f = exp(-log(10^4) k / (half - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(max_positions) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class NIN(nn.Module):
    """1x1 'network in network' layer with the authors' (in, out) weight ``W`` and bias ``b``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(c_in, c_out))
        self.b = nn.Parameter(torch.zeros(c_out))
        nn.init.normal_(self.W, std=c_in**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bchw,cu->buhw", x, self.W) + self.b[None, :, None, None]


class AttnBlockpp(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.GroupNorm_0 = nn.GroupNorm(_groups(ch), ch, eps=1e-6)
        self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3 = NIN(ch, ch), NIN(ch, ch), NIN(ch, ch), NIN(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.einsum("bchw,bcij->bhwij", q, k) * (int(c) ** -0.5)
        w = torch.softmax(w.reshape(b, hh, ww, hh * ww), dim=-1).reshape(b, hh, ww, hh, ww)
        h = self.NIN_3(torch.einsum("bhwij,bcij->bchw", w, v))
        return (x + h) / math.sqrt(2.0)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-type residual block (no FIR): optional 2x nearest up / 2x2 mean down on both paths."""

    def __init__(self, c_in: int, c_out: int | None, temb_dim: int, *, up: bool = False, down: bool = False,
                 dropout: float = 0.1) -> None:
        super().__init__()
        c_out = c_out or c_in
        self.GroupNorm_0 = nn.GroupNorm(_groups(c_in), c_in, eps=1e-6)
        self.Conv_0 = conv3x3(c_in, c_out)
        self.Dense_0 = nn.Linear(temb_dim, c_out)
        self.GroupNorm_1 = nn.GroupNorm(_groups(c_out), c_out, eps=1e-6)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(c_out, c_out)
        self.shortcut = c_in != c_out or up or down
        if self.shortcut:
            self.Conv_2 = conv1x1(c_in, c_out)
        self.up, self.down = up, down

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2, 2)
        return x

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self._resample(F.silu(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h) + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        if self.shortcut:
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0)


class NCSNpp(nn.Module):
    """``forward(x, labels)``: x in [-1, 1], labels = 999 t (continuous VP time); returns the eps
    estimate (score = -output / std(t), score_sde's ``get_score_fn`` for continuous VP models)."""

    def __init__(self, cfg: NCSNppConfig = CIFAR10_DDPMPP_DEEP) -> None:
        super().__init__()
        self.cfg = cfg
        nf, temb = cfg.nf, 4 * cfg.nf
        res = [cfg.image_size // 2**i for i in range(len(cfg.ch_mult))]
        mods: list[nn.Module] = [nn.Linear(nf, temb), nn.Linear(temb, temb), conv3x3(cfg.num_channels, nf)]
        block = dict(temb_dim=temb, dropout=cfg.dropout)
        hs_c, ch = [nf], nf
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                mods.append(ResnetBlockBigGANpp(ch, nf * mult, **block))
                ch = nf * mult
                if res[level] in cfg.attn_resolutions:
                    mods.append(AttnBlockpp(ch))
                hs_c.append(ch)
            if level != len(cfg.ch_mult) - 1:
                mods.append(ResnetBlockBigGANpp(ch, None, down=True, **block))
                hs_c.append(ch)
        mods += [ResnetBlockBigGANpp(ch, None, **block), AttnBlockpp(ch), ResnetBlockBigGANpp(ch, None, **block)]
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                mods.append(ResnetBlockBigGANpp(ch + hs_c.pop(), nf * cfg.ch_mult[level], **block))
                ch = nf * cfg.ch_mult[level]
            if res[level] in cfg.attn_resolutions:
                mods.append(AttnBlockpp(ch))
            if level != 0:
                mods.append(ResnetBlockBigGANpp(ch, None, up=True, **block))
        assert not hs_c
        mods += [nn.GroupNorm(_groups(ch), ch, eps=1e-6), conv3x3(ch, cfg.num_channels)]
        self.all_modules = nn.ModuleList(mods)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        cfg, m = self.cfg, self.all_modules
        temb = m[1](F.silu(m[0](timestep_embedding(labels, cfg.nf).to(m[0].weight.dtype))))
        if not cfg.centered:
            x = 2 * x - 1.0
        i = 3
        hs = [m[2](x)]
        for level in range(len(cfg.ch_mult)):
            for _ in range(cfg.num_res_blocks):
                h = m[i](hs[-1], temb)
                i += 1
                if h.shape[-1] in cfg.attn_resolutions:
                    h = m[i](h)
                    i += 1
                hs.append(h)
            if level != len(cfg.ch_mult) - 1:
                hs.append(m[i](hs[-1], temb))
                i += 1
        h = m[i + 2](m[i + 1](m[i](hs[-1], temb)), temb)
        i += 3
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                h = m[i](torch.cat([h, hs.pop()], dim=1), temb)
                i += 1
            if h.shape[-1] in cfg.attn_resolutions:
                h = m[i](h)
                i += 1
            if level != 0:
                h = m[i](h, temb)
                i += 1
        h = m[i + 1](F.silu(m[i](h)))
        assert i + 2 == len(m) and not hs
        return h


def reduced_config(nf: int = 16, num_res_blocks: int = 1, **kw: Any) -> NCSNppConfig:
    """The published layout at reduced width and depth, for CPU tests (same blocks and key names)."""
    return NCSNppConfig(**{"nf": nf, "num_res_blocks": num_res_blocks, **kw})


def param_count(cfg: NCSNppConfig = CIFAR10_DDPMPP_DEEP) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in NCSNpp(cfg).parameters())


def state_layout(cfg: NCSNppConfig = CIFAR10_DDPMPP_DEEP) -> dict[str, Sequence[int]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in NCSNpp(cfg).state_dict().items()}
