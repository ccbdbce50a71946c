"""AToP's purifier as its authors run it: the DeepFillv2 generator of nipponjo/deepfillv2-pytorch at 256 px.

glin2022/atop (``model/networks.py``, ``Finetuning-AToP/*.ipynb``) fine-tunes the PyTorch DeepFillv2
``Generator(cnum_in=5, cnum=48)``, starting from deepfillv2-pytorch's Places2 weights
``states_pt_places2.pth``. Facts from that code, reproduced here in our own implementation with the
same state-dict keys (``stage1.*`` coarse network, ``stage2.*`` fine network with a convolution branch
``conv_*`` and a contextual-attention branch ``ca_*``; every gated conv is ``<name>.conv.{weight,bias}``;
the buffer ``stage2.contextual_attention.fuse_weight``): 4,052,478 parameters (the paper rounds to
4.2M), gated convolutions ``elu(f) * sigmoid(g)`` (``to_rgb`` and ``ca_conv_bn1`` differ: no gate and
ReLU-gated respectively), contextual attention with ksize 3, rate 2, fuse 3, softmax scale 10.

The process (``cifar-miss.ipynb`` = RT1, ``cifar-miss-gau*.ipynb`` = RT2): CIFAR images are resized
to 256 x 256 (``transforms.Resize(256)``), RT2 adds Gaussian noise sigma 0.25 and clips to [0, 1];
the image is mapped to [-1, 1]; a mask of 32 px blocks (an 8 x 8 grid, missing rate 0.25: 16 of
64 blocks; 1 = missing) zeroes pixels; the generator gets ``[x (1 - m), 1, m]`` (5 channels) and
its stage-2 output (tanh, [-1, 1], not pasted onto the known pixels) is the purified image.

Differences, stated: the authors draw one mask per batch; we draw one per image (the noise part
``mask``), and compute contextual attention's "patch available" map per image (their code takes
the batch's first mask, the same thing when the mask is shared). By default the purified image is
mapped to [0, 1] and resized back to the input size for our classifiers (``output=raw`` keeps
their [-1, 1] 256 px output, which their notebooks feed to a ResNet that applies ``x*2-1`` itself).

Checkpoints: the training scripts save ``{'G': ..., 'D': ..., 'G_optim': ..., 'D_optim': ...,
'n_iter': ...}`` where G is the generator's state dict (pretrained file) or that of the notebook's
wrapper holding ``generator.*`` and the classifier ``res.*`` (fine-tuned files); both load
(weights_only), keeping only the generator.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import BenchError
from benchmark.registry import register_defense

from .base import Defense, Noise, Stage, rand, randn
from .weights import load_container, load_state_dict, sha256_file
from benchmark.registry import CLASSIFIERS, load_builtins

PRETRAINED_FILE = "states_pt_places2.pth"
PRETRAINED_PAGE = ("https://github.com/nipponjo/deepfillv2-pytorch (README, 'Pretrained models': the PyTorch-trained "
                   "Places2 weights)")
ATOP_PAGE = "https://github.com/glin2022/atop (no fine-tuned checkpoint is published: fine-tune with its notebooks)"
PARAMS = 4_052_478


class GConv(nn.Module):
    """Gated conv: act(f) * sigmoid(g) from one conv to 2*cout channels; plain conv when cout == 3 or act is None."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, rate: int = 1, padding: int | None = None,
                 act: str | None = "elu") -> None:
        super().__init__()
        pad = rate * (k - 1) // 2 if padding is None else padding
        self.gated = not (cout == 3 or act is None)
        self.cout, self.act = cout, act
        self.conv = nn.Conv2d(cin, 2 * cout if self.gated else cout, k, stride=stride, padding=pad, dilation=rate)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if not self.gated:
            return x
        f, g = torch.split(x, self.cout, dim=1)
        f = F.elu(f) if self.act == "elu" else F.relu(f)
        return f * torch.sigmoid(g)


class GDown(nn.Module):
    def __init__(self, cin: int, cout: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = cout if hidden is None else hidden
        self.conv1_downsample = GConv(cin, hidden, 3, 2)
        self.conv2 = GConv(hidden, cout, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1_downsample(x))


class GDeConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = GConv(cin, cout, 3, 1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class GUp(nn.Module):
    def __init__(self, cin: int, cout: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = cout if hidden is None else hidden
        self.conv1_upsample = GDeConv(cin, hidden)
        self.conv2 = GConv(hidden, cout, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1_upsample(x))


def _bottleneck(obj: nn.Module, prefix: str, c: int) -> None:
    for i, rate in enumerate((1, 2, 4, 8, 16), start=1):
        setattr(obj, f"{prefix}{i}", GConv(c, c, 3, rate=rate, padding=rate))


class CoarseGenerator(nn.Module):
    def __init__(self, cin: int, cnum: int) -> None:
        super().__init__()
        self.conv1 = GConv(cin, cnum // 2, 5, 1, padding=2)
        self.down_block1 = GDown(cnum // 2, cnum)
        self.down_block2 = GDown(cnum, 2 * cnum)
        _bottleneck(self, "conv_bn", 2 * cnum)
        self.conv_bn6 = GConv(2 * cnum, 2 * cnum, 3, 1)
        self.conv_bn7 = GConv(2 * cnum, 2 * cnum, 3, 1)
        self.up_block1 = GUp(2 * cnum, cnum)
        self.up_block2 = GUp(cnum, cnum // 4, hidden=cnum // 2)
        self.conv_to_rgb = GConv(cnum // 4, 3, 3, 1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down_block2(self.down_block1(self.conv1(x)))
        for i in range(1, 8):
            x = getattr(self, f"conv_bn{i}")(x)
        return torch.tanh(self.conv_to_rgb(self.up_block2(self.up_block1(x))))


class ContextualAttention(nn.Module):
    """Yu et al.'s contextual attention (ksize 3, stride 1, rate 2, fuse 3, softmax scale 10, n_down 2),
    with the 'patch available' map computed per image."""

    def __init__(self, ksize: int = 3, rate: int = 2, fuse_k: int = 3, softmax_scale: float = 10.0, n_down: int = 2) -> None:
        super().__init__()
        self.ksize, self.rate, self.fuse_k, self.scale, self.n_down = ksize, rate, fuse_k, softmax_scale, n_down
        self.register_buffer("fuse_weight", torch.eye(fuse_k).view(1, 1, fuse_k, fuse_k))

    @staticmethod
    def _patches(x: Tensor, k: int, stride: int) -> Tensor:
        """[N, L, C, k, k] patches with 'same' padding (as extract_image_patches)."""
        n, c = x.shape[:2]
        p = F.unfold(x, kernel_size=k, padding=(k - 1) // 2, stride=stride)
        return p.view(n, c, k, k, -1).permute(0, 4, 1, 2, 3)

    def _fuse(self, y: Tensor, hb: int, wb: int, hf: int, wf: int) -> Tensor:
        pad = (self.fuse_k - 1) // 2
        y = F.conv2d(y.view(1, 1, hb * wb, hf * wf), self.fuse_weight, padding=pad)
        y = y.view(1, hb, wb, hf, wf).permute(0, 2, 1, 4, 3).reshape(1, 1, hb * wb, hf * wf)
        y = F.conv2d(y, self.fuse_weight, padding=pad)
        return y.view(1, wb, hb, wf, hf).permute(0, 2, 1, 4, 3)

    def forward(self, f: Tensor, b: Tensor, mask: Tensor) -> Tensor:
        kernel = 2 * self.rate
        raw = F.unfold(b, kernel_size=kernel, padding=(kernel - 1) // 2, stride=self.rate)
        raw = raw.view(b.shape[0], b.shape[1], kernel, kernel, -1).permute(0, 4, 1, 2, 3)
        fs = F.interpolate(f, scale_factor=1.0 / self.rate, mode="nearest")
        bs = F.interpolate(b, scale_factor=1.0 / self.rate, mode="nearest")
        hf, wf, hb, wb = fs.shape[2], fs.shape[3], bs.shape[2], bs.shape[3]
        w = self._patches(bs, self.ksize, 1)
        m = F.interpolate(mask, scale_factor=1.0 / ((2**self.n_down) * self.rate), mode="nearest")
        mp = self._patches(m, self.ksize, 1)  # [N, L, 1, k, k]
        mm_all = (mp.mean(dim=(2, 3, 4)) == 0.0).to(f.dtype)  # [N, L]: 1 where the patch has no missing pixel
        out = []
        for i in range(f.shape[0]):
            wi = w[i]
            wi = wi / torch.sqrt((wi**2).sum(dim=(1, 2, 3), keepdim=True)).clamp_min(1e-4)
            yi = F.conv2d(fs[i : i + 1], wi, padding=(self.ksize - 1) // 2)
            yi = self._fuse(yi, hb, wb, hf, wf).reshape(1, hb * wb, hf, wf)
            mm = mm_all[i].view(1, -1, 1, 1)
            yi = F.softmax(yi * mm * self.scale, dim=1) * mm
            out.append(F.conv_transpose2d(yi, raw[i], stride=self.rate, padding=1) / 4.0)
        return torch.cat(out, dim=0).view(f.shape)


class FineGenerator(nn.Module):
    def __init__(self, cnum: int) -> None:
        super().__init__()
        self.conv_conv1 = GConv(3, cnum // 2, 5, 1, padding=2)
        self.conv_down_block1 = GDown(cnum // 2, cnum, hidden=cnum // 2)
        self.conv_down_block2 = GDown(cnum, 2 * cnum, hidden=cnum)
        _bottleneck(self, "conv_conv_bn", 2 * cnum)
        self.ca_conv1 = GConv(3, cnum // 2, 5, 1, padding=2)
        self.ca_down_block1 = GDown(cnum // 2, cnum, hidden=cnum // 2)
        self.ca_down_block2 = GDown(cnum, 2 * cnum)
        self.ca_conv_bn1 = GConv(2 * cnum, 2 * cnum, 3, 1, act="relu")
        self.contextual_attention = ContextualAttention()
        self.ca_conv_bn4 = GConv(2 * cnum, 2 * cnum, 3, 1)
        self.ca_conv_bn5 = GConv(2 * cnum, 2 * cnum, 3, 1)
        self.conv_bn6 = GConv(4 * cnum, 2 * cnum, 3, 1)
        self.conv_bn7 = GConv(2 * cnum, 2 * cnum, 3, 1)
        self.up_block1 = GUp(2 * cnum, cnum)
        self.up_block2 = GUp(cnum, cnum // 4, hidden=cnum // 2)
        self.conv_to_rgb = GConv(cnum // 4, 3, 3, 1, act=None)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.conv_down_block2(self.conv_down_block1(self.conv_conv1(x)))
        for i in range(1, 6):
            h = getattr(self, f"conv_conv_bn{i}")(h)
        a = self.ca_conv_bn1(self.ca_down_block2(self.ca_down_block1(self.ca_conv1(x))))
        a = self.ca_conv_bn5(self.ca_conv_bn4(self.contextual_attention(a, a, mask)))
        y = self.conv_bn7(self.conv_bn6(torch.cat([h, a], dim=1)))
        return torch.tanh(self.conv_to_rgb(self.up_block2(self.up_block1(y))))


class DeepFillGenerator(nn.Module):
    """``forward(x5, mask) -> (stage1, stage2)``; x5 = [image in [-1,1] * (1-m), ones, m], mask 1 = missing."""

    def __init__(self, cnum_in: int = 5, cnum: int = 48) -> None:
        super().__init__()
        self.stage1 = CoarseGenerator(cnum_in, cnum)
        self.stage2 = FineGenerator(cnum)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x1 = self.stage1(x)
        xin = x1 * mask + x[:, :3] * (1.0 - mask)
        return x1, self.stage2(xin, mask)


# --------------------------------------------------------------------------- purifier
class AToPDeepFillPurifier(Stage):
    """RT1/RT2 at the generator's resolution -> DeepFillv2 stage 2 -> [0, 1] at the input size (see module doc)."""

    def __init__(self, generator: DeepFillGenerator, *, rt: str = "rt2", size: int = 256, grid: int = 8,
                 rate: float = 0.25, sigma: float = 0.25, output: str = "01") -> None:
        super().__init__()
        if rt not in ("rt1", "rt2"):
            raise BenchError(f"rt must be rt1 (mask) or rt2 (noise + mask), got {rt!r}")
        if output not in ("01", "raw"):
            raise BenchError(f"output must be 01 or raw, got {output!r}")
        if size % grid or size % 8:
            raise BenchError(f"size {size} must be divisible by the mask grid {grid} and by 8")
        self.g, self.rt, self.size, self.grid, self.rate, self.output = generator, rt, size, grid, rate, output
        self.sigma = sigma if rt == "rt2" else 0.0
        self.n_missing = int(rate * grid * grid)  # int(), as the notebooks' nums[:int(rate*len)]
        self.noise_names = ("mask",) if rt == "rt1" else ("mask", "gaussian")

    def extra_repr(self) -> str:
        return f"rt={self.rt}, size={self.size}, grid={self.grid}, missing={self.n_missing}, sigma={self.sigma}"

    def sample_noise(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        n, g2 = x.shape[0], self.grid * self.grid
        rank = rand((n, g2), generator, x).argsort(dim=1).argsort(dim=1)
        parts = {"mask": (rank < self.n_missing).to(x.dtype).view(n, 1, self.grid, self.grid)}  # 1 = missing
        if self.rt == "rt2":
            parts["gaussian"] = randn((n, x.shape[1], self.size, self.size), generator, x)
        return parts

    def forward(self, x: Tensor, noise: Noise) -> Tensor:
        size = tuple(x.shape[-2:])
        h = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False) if size != (self.size,) * 2 else x
        if self.rt == "rt2":
            h = (h + self.sigma * noise["gaussian"]).clamp(0.0, 1.0)
        h = 2.0 * h - 1.0
        block = self.size // self.grid
        m = noise["mask"].repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)
        ones = torch.ones_like(h[:, :1])
        _, out = self.g(torch.cat([h * (1.0 - m), ones, ones * m], dim=1), m)
        if self.output == "raw":
            return out
        out = (out + 1.0) / 2.0
        if size != (self.size,) * 2:
            out = F.interpolate(out, size=size, mode="bilinear", antialias=True, align_corners=False)
        return out


def load_deepfill(weights: str | Path | None, cnum: int = 48) -> tuple[DeepFillGenerator, str]:
    """The generator from the authors' container ({'G': state, ...}; 'generator.' prefix and 'res.*' handled)."""
    if not weights:
        raise BenchError(
            f"atop_deepfill needs a DeepFillv2 generator checkpoint: AToP fine-tunes deepfillv2-pytorch's "
            f"{PRETRAINED_FILE} ({PRETRAINED_PAGE}; no sha256 published); {ATOP_PAGE}. Pass --defense-opt weights=PATH"
        )
    path = Path(weights)
    if not path.is_file():
        raise BenchError(f"generator checkpoint {path} not found (pretrained: {PRETRAINED_FILE}, {PRETRAINED_PAGE})")
    if path.suffix == ".safetensors":
        state = load_state_dict(path)
    else:
        obj = load_container(path)
        g = obj.get("G", obj) if isinstance(obj, dict) else obj
        if not isinstance(g, dict) or not all(isinstance(v, Tensor) for v in g.values()):
            raise BenchError(f"{path}: expected the authors' container {{'G': generator state dict, ...}} or a state dict")
        state = g
    state = {k.removeprefix("module.").removeprefix("generator."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k.startswith(("stage1.", "stage2."))}
    model = DeepFillGenerator(cnum=cnum)
    ref = model.state_dict()
    missing = [k for k in ref if k not in state]
    bad = [k for k in ref if k in state and tuple(state[k].shape) != tuple(ref[k].shape)]
    extra = [k for k in state if k not in ref]
    if missing or bad or extra:
        raise BenchError(f"{path} does not fit the DeepFillv2 generator (cnum={cnum}): missing {missing[:3]}, "
                         f"wrong shape {bad[:3]}, unexpected {extra[:3]}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), sha256_file(path)


_OPTIONS = ("weights", "checkpoint", "classifier", "rt", "size", "cnum", "output")


@register_defense("atop_deepfill", datasets=("cifar10", "cifar100", "imagenette"), stochastic=True,
                  summary="AToP with the authors' DeepFillv2 generator at 256 px, RT1/RT2: weights=PATH to a glin2022/atop "
                  "states_*.pth or deepfillv2-pytorch's states_pt_places2.pth (github.com/nipponjo/deepfillv2-pytorch)")
def make_atop_deepfill(*, dataset: str = "cifar10", device: str | torch.device = "cpu", weights: str | None = None,
                       checkpoint: str | None = None, classifier: str | None = None, rt: str | None = None,
                       size: int | None = None, cnum: int | None = None, output: str | None = None,
                       **unknown: Any) -> Defense:
    """AToP as glin2022/atop runs it: RT at 256 px -> DeepFillv2 generator (authors' checkpoint) -> classifier."""
    named = dict(weights=weights, checkpoint=checkpoint, classifier=classifier, rt=rt, size=size, cnum=cnum, output=output)
    cfg = {**{k: v for k, v in named.items() if v is not None}, **unknown}
    unknown = [k for k in cfg if k not in _OPTIONS]
    if unknown:
        raise BenchError(f"atop_deepfill: unknown option {unknown[0]!r}; options: {', '.join(_OPTIONS)}")
    cnum = int(cfg.get("cnum", 48))
    gen, sha = load_deepfill(cfg.get("weights") or cfg.get("checkpoint"), cnum)
    pur = AToPDeepFillPurifier(gen, rt=str(cfg.get("rt", "rt2")), size=int(cfg.get("size", 256)),
                               output=str(cfg.get("output", "01")))
    load_builtins()
    default_cls = {"cifar10": "cifar10_standard", "cifar100": "cifar100_resnet56", "imagenette": "imagenette_standard"}
    cls_name = str(cfg.get("classifier", default_cls.get(dataset, "cifar10_standard")))
    classifier = CLASSIFIERS.create(cls_name, device=device)
    info = {"purifier": "deepfillv2 (glin2022/atop, nipponjo/deepfillv2-pytorch)", "rt": pur.rt, "size": pur.size,
            "mask_grid": pur.grid, "missing_blocks": pur.n_missing, "sigma": pur.sigma, "output": pur.output,
            "weights_sha256": sha, "generator_params": sum(p.numel() for p in gen.parameters()), "cnum": cnum,
            "classifier": cls_name}
    return Defense(classifier, purifier=pur, name="atop_deepfill", info=info).to(device).freeze()
