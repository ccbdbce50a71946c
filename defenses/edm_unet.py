"""EDM's SongUNet (DDPM++) behind EDMPrecond, our code with the authors' state-dict key names.

ADDT's EDM purifier family (LYMDLUT/ADDT ``Robustness_test/main_code/EDM/get_edm_nets.py``,
``get_edm_cifar_uncond``; the network code is NVlabs/edm ``training/networks.py``) is
``EDMPrecond(img_resolution=32, img_channels=3, label_dim=0, model_type='SongUNet',
embedding_type='positional', encoder_type='standard', decoder_type='standard', channel_mult_noise=1,
resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2], augment_dim=9)`` with SongUNet's
defaults num_blocks 4, attn_resolutions [16], channel_mult_emb 4 (EDM's ``--arch=ddpmpp`` for
CIFAR-10, the ``edm-cifar10-32x32-uncond-vp`` network). sigma_data 0.5, sigma_min 0, sigma_max inf,
fp32 (``use_fp16`` off in ADDT's eval).

Key names: ``model.map_augment`` (bias-free, unused at inference), ``model.map_layer0/1``,
``model.enc.<R>x<R>_conv|_down|_block<i>``, ``model.dec.<R>x<R>_in0|_in1|_up|_block<i>|_aux_norm|_aux_conv``;
a UNetBlock has ``norm0, conv0, affine, norm1, conv1`` (+ ``skip``, + ``norm2, qkv, proj`` with
attention); the up/down convolutions keep their ``resample_filter`` buffer (a 2x2 box filter
for [1, 1]), which is part of the state dict.

Numerics as the authors': GroupNorm(min(32, C/4), eps 1e-6); positional embedding with endpoint
(freqs (1/10^4)^(k/(C/2 - 1)), [cos, sin] then swapped to [sin, cos]); block
``silu(norm1(conv0(silu(norm0(x))) + affine(emb)))`` -> conv1, + skip, x sqrt(1/2); single-head
attention with the q/k/v channels interleaved as ``reshape(N, C, 3, HW)``, softmax in float32,
x sqrt(1/2); preconditioning ``D(x, s) = c_skip x + c_out F(c_in x, log(s)/4)``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class SongUNetConfig:
    img_resolution: int = 32
    channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    augment_dim: int = 9
    sigma_data: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ADDT get_edm_cifar_uncond = EDM's ddpmpp CIFAR-10 uncond VP network
EDM_CIFAR10_DDPMPP = SongUNetConfig()


class Conv2d(nn.Module):
    """EDM's Conv2d: optional 2x resampling with the [1, 1] box filter (buffer kept), then the kernel."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.c_in, self.up, self.down = c_in, up, down
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel) * (c_in * kernel * kernel) ** -0.5) if kernel else None
        self.bias = nn.Parameter(torch.zeros(c_out)) if kernel else None
        f = torch.ones(2)
        self.register_buffer("resample_filter", (f.outer(f)[None, None] / f.sum() ** 2) if up or down else None)

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            f = self.resample_filter.to(x.dtype)
            x = F.conv_transpose2d(x, (f * 4).tile([self.c_in, 1, 1, 1]), groups=self.c_in, stride=2)
        if self.down:
            f = self.resample_filter.to(x.dtype)
            x = F.conv2d(x, f.tile([self.c_in, 1, 1, 1]), groups=self.c_in, stride=2)
        if self.weight is not None:
            x = F.conv2d(x, self.weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    def __init__(self, ch: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.groups, self.eps = min(32, ch // 4), eps
        self.weight = nn.Parameter(torch.ones(ch))
        self.bias = nn.Parameter(torch.zeros(ch))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """SongUNet's block: adaptive_scale off, resample_proj on, skip_scale sqrt(1/2), one attention head."""

    def __init__(self, c_in: int, c_out: int, emb_ch: int, *, up: bool = False, down: bool = False,
                 attention: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.attention = c_in, c_out, attention
        self.norm0 = GroupNorm(c_in)
        self.conv0 = Conv2d(c_in, c_out, 3, up=up, down=down)
        self.affine = nn.Linear(emb_ch, c_out)
        self.norm1 = GroupNorm(c_out)
        self.conv1 = Conv2d(c_out, c_out, 3)
        self.skip = Conv2d(c_in, c_out, 1, up=up, down=down) if c_out != c_in or up or down else None
        if attention:
            self.norm2 = GroupNorm(c_out)
            self.qkv = Conv2d(c_out, 3 * c_out, 1)
            self.proj = Conv2d(c_out, c_out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None].to(x.dtype)))
        x = self.conv1(x)
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * math.sqrt(0.5)
        if self.attention:
            n, c = x.shape[:2]
            q, k, v = self.qkv(self.norm2(x)).reshape(n, c, 3, -1).unbind(2)
            w = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(c)).float()).softmax(dim=2).to(q.dtype)
            a = torch.einsum("nqk,nck->ncq", w, v)
            x = (self.proj(a.reshape(*x.shape)) + x) * math.sqrt(0.5)
        return x


def positional_embedding(x: Tensor, ch: int, max_positions: int = 10000) -> Tensor:
    """EDM's PositionalEmbedding(endpoint=True) followed by SongUNet's sin/cos swap: [sin, cos]."""
    freqs = torch.arange(ch // 2, dtype=torch.float32, device=x.device) / (ch // 2 - 1)
    freqs = (1 / max_positions) ** freqs
    args = x.float().outer(freqs.to(x.dtype))
    return torch.cat([args.sin(), args.cos()], dim=1)


class SongUNet(nn.Module):
    def __init__(self, cfg: SongUNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc, emb_ch = cfg.model_channels, cfg.model_channels * cfg.channel_mult_emb
        self.map_augment = nn.Linear(cfg.augment_dim, mc, bias=False) if cfg.augment_dim else None
        self.map_layer0 = nn.Linear(mc, emb_ch)
        self.map_layer1 = nn.Linear(emb_ch, emb_ch)
        self.enc = nn.ModuleDict()
        cout = cfg.channels
        for level, mult in enumerate(cfg.channel_mult):
            res = cfg.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, mc, 3)
                cout = mc
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, emb_ch, down=True)
            for i in range(cfg.num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(cout, mc * mult, emb_ch, attention=res in cfg.attn_resolutions)
                cout = mc * mult
        skips = [b.out_channels if isinstance(b, UNetBlock) else mc for b in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = cfg.img_resolution >> level
            if level == len(cfg.channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, emb_ch, attention=True)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, emb_ch)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, emb_ch, up=True)
            for i in range(cfg.num_blocks + 1):
                cin = cout + skips.pop()
                cout = mc * mult
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(
                    cin, cout, emb_ch, attention=i == cfg.num_blocks and res in cfg.attn_resolutions)
            if level == 0:
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, cfg.channels, 3)

    def forward(self, x: Tensor, noise_labels: Tensor) -> Tensor:
        emb = positional_embedding(noise_labels, self.cfg.model_channels).to(x.dtype)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        out = None
        for name, block in self.dec.items():
            if name.endswith("aux_norm"):
                out = block(x)
            elif name.endswith("aux_conv"):
                out = block(F.silu(out))
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


class EDMPrecond(nn.Module):
    """``forward(x, sigma)``: the denoised image D(x; sigma) for x in [-1, 1] plus noise of std sigma."""

    def __init__(self, cfg: SongUNetConfig = EDM_CIFAR10_DDPMPP) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = SongUNet(cfg)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sd = self.cfg.sigma_data
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        f = self.model((c_in * x).to(x.dtype), (sigma.log() / 4).flatten())
        return c_skip * x + c_out * f.to(x.dtype)


def reduced_config(model_channels: int = 16, num_blocks: int = 1, **kw: Any) -> SongUNetConfig:
    """The published layout at reduced width and depth, for CPU tests (same blocks and key names)."""
    return SongUNetConfig(**{"model_channels": model_channels, "num_blocks": num_blocks, **kw})


def param_count(cfg: SongUNetConfig = EDM_CIFAR10_DDPMPP) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in EDMPrecond(cfg).parameters())


def state_layout(cfg: SongUNetConfig = EDM_CIFAR10_DDPMPP) -> dict[str, Sequence[int]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in EDMPrecond(cfg).state_dict().items()}
