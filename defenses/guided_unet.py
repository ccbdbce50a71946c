"""guided-diffusion's UNet (Dhariwal & Nichol 2021), our code with the authors' state-dict key names.

DiffPure's ImageNet purifier is guided-diffusion's unconditional 256x256 model
``256x256_diffusion_uncond.pt`` (https://github.com/openai/guided-diffusion), built from the flags of
DiffPure's ``configs/imagenet.yml``: attention_resolutions 32,16,8, class_cond False,
diffusion_steps 1000, image_size 256, learn_sigma True, noise_schedule linear, num_channels 256,
num_head_channels 64, num_res_blocks 2, resblock_updown True, use_fp16 True,
use_scale_shift_norm True (channel_mult (1, 1, 2, 2, 4, 4) for 256 px, dropout 0, legacy
attention order). The module tree mirrors ``guided_diffusion/unet.py`` so that the published
``.pt`` (a plain state dict) loads as is: ``time_embed.{0,2}``, ``input_blocks.N.M...``,
``middle_block.{0,1,2}``, ``output_blocks.N.M...``, ``out.{0,2}``; a ResBlock has
``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection``; an attention
block ``norm``, ``qkv``, ``proj_out`` (1-D convolutions).

Numerics as in the authors' code: GroupNorm(32) computed in float32, sinusoidal timestep
embedding ``[cos, sin]``, legacy QKV attention (heads split before q/k/v, scale 1/sqrt(sqrt(ch))
on q and k, softmax in float32). With ``use_fp16`` the convolutions of the torso (input, middle and
output blocks) hold float16 weights and the torso runs in float16, as ``convert_to_fp16`` does;
the time embedding, the ``out`` head and the normalisations stay float32.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class GuidedUNetConfig:
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6  # learn_sigma: eps and the variance interpolation
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # in pixels, as the flag
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    num_head_channels: int = 64
    num_heads: int = 4
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    dropout: float = 0.0
    groups: int = 32  # GroupNorm groups (32 in guided-diffusion; smaller only for reduced-width tests)

    @property
    def attention_ds(self) -> tuple[int, ...]:
        return tuple(self.image_size // r for r in self.attention_resolutions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# DiffPure configs/imagenet.yml with guided-diffusion's defaults (script_util.create_model)
IMAGENET_256_UNCOND = GuidedUNetConfig()


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in its weights' dtype (float32: never converted to fp16), result in the
    input's dtype (guided-diffusion's GroupNorm32)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(self.weight.dtype)).type(x.dtype)


def timestep_embedding(t: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """[cos(t f), sin(t f)] with f = max_period^(-k/half), k = 0..half-1 (zero-padded for odd dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class _Resample(nn.Module):
    """Parameter-free 2x nearest upsampling or 2x2 average pooling (ResBlock up/down paths)."""

    def __init__(self, up: bool) -> None:
        super().__init__()
        self.up = up

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.up else F.avg_pool2d(x, 2, 2)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, ch: int, emb_ch: int, out_ch: int, *, scale_shift: bool, dropout: float, groups: int,
                 up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.updown = up or down
        if self.updown:
            self.h_upd, self.x_upd = _Resample(up), _Resample(up)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch))
        self.out_layers = nn.Sequential(GroupNorm32(groups, out_ch), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection: nn.Module = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)
        self.scale_shift = scale_shift

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over positions, legacy head order (heads split before q, k, v)."""

    def __init__(self, ch: int, *, head_channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.heads = ch // head_channels if head_channels > 0 else num_heads
        self.norm = GroupNorm32(groups, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        ch = c // self.heads
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.to(torch.promote_types(w.dtype, torch.float32)), dim=-1).type(w.dtype)  # fp32 (or fp64)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class EmbedSequential(nn.Sequential):
    """guided-diffusion's TimestepEmbedSequential: ResBlocks get the embedding, others not."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class GuidedUNet(nn.Module):
    """eps (and sigma-interpolation) model: ``forward(x, t)`` with x in [-1, 1], t integer timesteps."""

    def __init__(self, cfg: GuidedUNetConfig = IMAGENET_256_UNCOND, *, use_fp16: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        mc, emb_ch = cfg.model_channels, 4 * cfg.model_channels
        kw = dict(scale_shift=cfg.use_scale_shift_norm, dropout=cfg.dropout, groups=cfg.groups)
        attn = dict(head_channels=cfg.num_head_channels, num_heads=cfg.num_heads, groups=cfg.groups)
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        ch = input_ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, int(mult * mc), **kw)]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, **attn))
                self.input_blocks.append(EmbedSequential(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = ResBlock(ch, emb_ch, ch, down=True, **kw) if cfg.resblock_updown else Downsample(ch)
                self.input_blocks.append(EmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(ResBlock(ch, emb_ch, ch, **kw), AttentionBlock(ch, **attn),
                                            ResBlock(ch, emb_ch, ch, **kw))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb_ch, int(mc * mult), **kw)]
                ch = int(mc * mult)
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, **attn))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb_ch, ch, up=True, **kw) if cfg.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(cfg.groups, ch), nn.SiLU(), nn.Conv2d(input_ch, cfg.out_channels, 3, padding=1))
        if use_fp16:
            self.convert_to_fp16()

    @property
    def dtype(self) -> torch.dtype:
        """The torso's dtype (float16 after :meth:`convert_to_fp16`), that of its first convolution."""
        return self.input_blocks[0][0].weight.dtype

    def convert_to_fp16(self) -> None:
        """float16 weights for the torso's convolutions (guided-diffusion's ``convert_to_fp16``)."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.half()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(self.time_embed[0].weight.dtype))
        h, hs = x.type(self.dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


def reduced_config(channels: int = 32, image_size: int = 32, **kw: Any) -> GuidedUNetConfig:
    """The published layout at reduced width and size, for CPU tests (same blocks and key names)."""
    base: dict[str, Any] = dict(image_size=image_size, model_channels=channels, num_head_channels=16,
                                channel_mult=(1, 1, 2), attention_resolutions=(image_size // 4,), groups=32)
    base.update(kw)
    return GuidedUNetConfig(**base)


def param_count(cfg: GuidedUNetConfig = IMAGENET_256_UNCOND) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GuidedUNet(cfg).parameters())


def state_layout(cfg: GuidedUNetConfig = IMAGENET_256_UNCOND) -> dict[str, Sequence[int]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in GuidedUNet(cfg).state_dict().items()}
