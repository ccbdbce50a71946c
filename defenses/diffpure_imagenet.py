"""DiffPure on ImageNet as its authors run it: guided-diffusion's 256x256 unconditional UNet, reverse VP-SDE.

What NVlabs/DiffPure does for ImageNet (``eval_sde_adv.py`` with ``--diffusion_type sde``,
``runners/diffpure_sde.py``, ``run_scripts/imagenet/run_in_rand_inf*.sh``: ``--t 150``):

1. resize the 224 px image to 256 (bilinear, ``align_corners=False``), map to [-1, 1];
2. diffuse: ``x_t = sqrt(abar[t-1]) x + sqrt(1 - abar[t-1]) eps_f`` with t = 150 (t* = 0.15),
   ``abar = cumprod(1 - linspace(0.1/1000, 20/1000, 1000))``;
3. solve the reverse VP-SDE (beta 0.1..20) with torchsde's Euler(-Maruyama) method, default step
   dt = 1e-3, from s = 1 - t/1000 to s = 1 - 1e-5 (150 steps, the last one shorter), in the
   variable s = 1 - t: ``y <- y + f(s, y) h + g(s) sqrt(h) z`` with
   ``f = 0.5 beta(t) y - beta(t) eps(y, floor(1000 t)) / sqrt(1 - abar_c(t))``, ``g = sqrt(beta(t))``,
   ``abar_c(t) = exp(-0.5 (20 - 0.1) t^2 - 0.1 t)``; eps is the first 3 output channels of the UNet
   (learned sigma ignored). Times are float32 and the grid accumulates in float32, as torchsde does;
4. resize the result back to 224 (bilinear), classify ``(x + 1) / 2`` (no clipping) with a
   torchvision ResNet-50 or Wide-ResNet-50-2 behind ImageNet normalisation.

Noise parts (DW-box names as for our DDPM DiffPure): ``forward`` eps_f (N, 3, R, R) and
``reverse``: the K standard normal z of the solver steps (N, K, 3, R, R); with R = 256 and K = 150
that is 118 MB per image in float32. DiffPure differentiates with the adjoint method; we
backpropagate exactly through every step, each UNet call wrapped in gradient checkpointing.

Weights: ``weights=PATH`` to the published ``256x256_diffusion_uncond.pt`` (a plain state dict,
loaded with ``torch.load(weights_only=True)``); ``classifier_weights=PATH`` to torchvision's
``resnet50-0676ba61.pth`` / ``wide_resnet50_2-95faca4d.pth`` (IMAGENET1K_V1, what
``pretrained=True`` gives). ``unet=reduced`` builds the same layout at 32 px and 32 channels (CPU tests).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import BenchError, first_line
from benchmark.registry import register_defense

from .base import Defense, Noise, Stage, randn
from .classifiers import IMAGENETTE_IMAGENET_INDEX as IMAGENETTE_INDEX
from .diffusion import call_eps
from .guided_unet import IMAGENET_256_UNCOND, GuidedUNet, GuidedUNetConfig, reduced_config
from .weights import load_state_dict, sha256_file
from .classifiers import IMAGENET_MEAN, IMAGENET_STD, Normalize

UNET_FILE = "256x256_diffusion_uncond.pt"
UNET_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
UNET_PAGE = "https://github.com/openai/guided-diffusion (README, 'Download pre-trained models'); DiffPure's README links the same file"
# torchvision IMAGENET1K_V1 files (what DiffPure's models.<arch>(pretrained=True) loads); the hash in
# the name is the start of the file's sha256; published top-1 on ImageNet val
TV_FILES: dict[str, tuple[str, str, float]] = {
    "resnet50": ("resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth", 76.130),
    "wide_resnet50_2": ("wide_resnet50_2-95faca4d.pth", "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
                        78.468),
    "resnet18": ("resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth", 69.758),
}


# --------------------------------------------------------------------------- VP-SDE solver
class VPSDE:
    """DiffPure's RevVPSDE coefficients (beta_min 0.1, beta_max 20, N = 1000), float32 like its code."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        self.beta_min, self.beta_max, self.N = beta_min, beta_max, N

    def discrete_alpha_bar(self) -> Tensor:
        betas = torch.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)
        return torch.cumprod(1.0 - betas, dim=0)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha_bar(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * (self.beta_max - self.beta_min) * t**2 - self.beta_min * t)


def euler_grid(t0: float, t1: float, dt: float) -> list[tuple[Tensor, Tensor]]:
    """torchsde's fixed-step grid in float32: (s, next s) pairs, next = min(s + dt, t1)."""
    ts = torch.tensor([t0, t1], dtype=torch.float32)
    s, end, out = ts[0], ts[1], []
    while s < end:
        nxt = torch.minimum(s + dt, end)
        out.append((s, nxt))
        s = nxt
    return out


class DiffPureSDEPurifier(Stage):
    """[0,1] images -> resize to the UNet's size -> diffuse to t* -> Euler-Maruyama reverse VP-SDE -> back."""

    noise_names = ("forward", "reverse")

    def __init__(self, unet: nn.Module, image_size: int, *, t: int = 150, dt: float = 1e-3, t_end: float = 1e-5,
                 use_checkpoint: bool = True) -> None:
        super().__init__()
        if not 1 <= int(t) <= 1000:
            raise BenchError(f"t must be in 1..1000 (t* = t/1000; DiffPure ImageNet uses 150), got {t}")
        if not 0.0 < float(dt) <= 1.0:
            raise BenchError(f"dt must be in (0, 1] (DiffPure: torchsde's default 1e-3), got {dt}")
        self.unet, self.image_size, self.t, self.dt = unet, int(image_size), int(t), float(dt)
        self.use_checkpoint = use_checkpoint
        self.sde = VPSDE()
        self.abar_t = float(self.sde.discrete_alpha_bar()[self.t - 1])
        self.grid = euler_grid(1.0 - self.t / 1000.0, 1.0 - t_end, self.dt)
        self.steps = len(self.grid)

    def extra_repr(self) -> str:
        return f"t={self.t}, dt={self.dt}, steps={self.steps}, image_size={self.image_size}"

    def sample_noise(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        shape = (x.shape[0], x.shape[1], self.image_size, self.image_size)
        return {"forward": randn(shape, generator, x),
                "reverse": randn((x.shape[0], self.steps, *shape[1:]), generator, x)}

    def _eps(self, y: Tensor, t: Tensor) -> Tensor:
        disc = (t * self.sde.N).long().expand(y.shape[0]).to(y.device)  # DiffPure's _scale_timesteps
        out = call_eps(self.unet, y, disc, self.use_checkpoint)
        return out[:, : y.shape[1]].to(y.dtype)

    def forward(self, x: Tensor, noise: Noise) -> Tensor:
        size = x.shape[-2:]
        h = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        y = self.abar_t**0.5 * (2.0 * h - 1.0) + (1.0 - self.abar_t) ** 0.5 * noise["forward"]
        z = noise["reverse"]
        for i, (s, nxt) in enumerate(self.grid):
            t = 1.0 - s
            beta = float(self.sde.beta(t))
            step = float(nxt - s)
            eps = self._eps(y, t)
            drift = 0.5 * beta * y - beta * eps / float(torch.sqrt(1.0 - self.sde.alpha_bar(t)))
            y = y + drift * step + beta**0.5 * step**0.5 * z[:, i]
        out = F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)
        return (out + 1.0) / 2.0


# --------------------------------------------------------------------------- loading
def _check_named_hash(path: Path, digest: str) -> None:
    m = re.fullmatch(r".+-([0-9a-f]{8,})\.pth?", path.name)
    if m and not digest.startswith(m.group(1)):
        raise BenchError(f"{path}: sha256 {digest[:16]}... does not start with the hash in its published name "
                         f"({m.group(1)}): corrupt or not the published file")


def load_guided_unet(weights: str | Path | None, cfg: GuidedUNetConfig, *, use_fp16: bool = False) -> tuple[GuidedUNet, str]:
    """The UNet from a guided-diffusion state dict (weights_only load); returns it and the file's sha256."""
    if not weights:
        raise BenchError(
            f"diffpure_imagenet needs guided-diffusion's {UNET_FILE} (2.2 GB; no sha256 published): download "
            f"{UNET_URL} ({UNET_PAGE}) and pass --defense-opt weights=PATH"
        )
    path = Path(weights)
    if not path.is_file():
        raise BenchError(f"UNet weights {path} not found; the published file is {UNET_FILE} from {UNET_URL}")
    state = load_state_dict(path)
    model = GuidedUNet(cfg)
    ref = model.state_dict()
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    bad = [k for k in ref if k in state and tuple(state[k].shape) != tuple(ref[k].shape)]
    if missing or unexpected or bad:
        raise BenchError(f"{path} does not fit guided-diffusion's UNet ({'256x256 uncond' if cfg == IMAGENET_256_UNCOND else 'reduced'}"
                         f" layout): missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad[:3]}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    if use_fp16:
        model.convert_to_fp16()
    return model.eval(), sha256_file(path)


class ImageNetClassifier(nn.Module):
    """A torchvision ImageNet model behind ImageNet normalisation; for ImageNette, the logits of its 10 classes."""

    def __init__(self, net: nn.Module, index: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.net = net
        self.index = list(index) if index is not None else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(self.normalize(x))
        return out[:, self.index] if self.index is not None else out


def load_torchvision_classifier(arch: str, weights: str | Path | None, dataset: str) -> tuple[nn.Module, str]:
    if arch not in TV_FILES:
        raise BenchError(f"unknown torchvision classifier {arch!r}; known: {', '.join(TV_FILES)}")
    fname, url, _ = TV_FILES[arch]
    if not weights:
        raise BenchError(f"classifier {arch} needs torchvision's {fname} (sha256 starts with the hash in its name): "
                         f"download {url} and pass --defense-opt classifier_weights=PATH")
    path = Path(weights)
    if not path.is_file():
        raise BenchError(f"classifier weights {path} not found; the published file is {fname} from {url}")
    import benchmark.compat  # noqa: F401  (torchvision on CPU-only torch)
    from torchvision import models

    digest = sha256_file(path)
    _check_named_hash(path, digest)
    net = getattr(models, arch)(weights=None)
    state = load_state_dict(path)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise BenchError(f"{path} does not fit torchvision's {arch}: {first_line(e)}") from None
    return ImageNetClassifier(net, IMAGENETTE_INDEX if dataset == "imagenette" else None).eval(), digest


# --------------------------------------------------------------------------- registry
_OPTIONS = ("weights", "checkpoint", "classifier", "classifier_weights", "t", "t_star", "dt", "fp16", "unet",
            "grad_checkpoint")


@register_defense("diffpure_imagenet", datasets=("imagenet", "imagenette"), stochastic=True,
                  summary=f"DiffPure ImageNet: weights=PATH to guided-diffusion's {UNET_FILE} ({UNET_URL}), t*=0.15, "
                  "reverse VP-SDE Euler dt=1e-3, torchvision ResNet-50 / WRN-50-2 (classifier_weights=PATH to "
                  "resnet50-0676ba61.pth / wide_resnet50_2-95faca4d.pth from download.pytorch.org/models)")
def make_diffpure_imagenet(*, dataset: str = "imagenet", device: str | torch.device = "cpu", weights: str | None = None,
                           checkpoint: str | None = None, classifier: str | None = None,
                           classifier_weights: str | None = None, t: int | None = None, t_star: float | None = None,
                           dt: float | None = None, fp16: bool | str | None = None, unet: str | None = None,
                           grad_checkpoint: bool | None = None, **unknown: Any) -> Defense:
    """DiffPure (ImageNet, authors' process): guided-diffusion 256x256 uncond UNet + reverse VP-SDE + torchvision classifier."""
    named = dict(weights=weights, checkpoint=checkpoint, classifier=classifier, classifier_weights=classifier_weights,
                 t=t, t_star=t_star, dt=dt, fp16=fp16, unet=unet, grad_checkpoint=grad_checkpoint)
    cfg = {**{k: v for k, v in named.items() if v is not None}, **unknown}
    unknown = [k for k in cfg if k not in _OPTIONS]
    if unknown:
        raise BenchError(f"diffpure_imagenet: unknown option {unknown[0]!r}; options: {', '.join(_OPTIONS)}")
    if dataset not in ("imagenet", "imagenette"):
        raise BenchError(f"diffpure_imagenet exists for imagenet and imagenette, not {dataset!r}")
    if "t" in cfg and "t_star" in cfg:
        raise BenchError("diffpure_imagenet: give t (1..1000) or t_star, not both")
    t = int(cfg["t"]) if "t" in cfg else int(round(float(cfg.get("t_star", 0.15)) * 1000))
    unet_kind = str(cfg.get("unet", "256_uncond"))
    if unet_kind not in ("256_uncond", "reduced"):
        raise BenchError(f"diffpure_imagenet: unet must be 256_uncond (published) or reduced (CPU tests), got {unet_kind!r}")
    ucfg = IMAGENET_256_UNCOND if unet_kind == "256_uncond" else reduced_config()
    fp16 = cfg.get("fp16", "auto")
    use_fp16 = str(torch.device(device).type) == "cuda" if fp16 == "auto" else bool(fp16)
    unet, unet_sha = load_guided_unet(cfg.get("weights") or cfg.get("checkpoint"), ucfg, use_fp16=use_fp16)
    purifier = DiffPureSDEPurifier(unet, ucfg.image_size, t=t, dt=float(cfg.get("dt", 1e-3)),
                                   use_checkpoint=bool(cfg.get("grad_checkpoint", True)))
    cls_name = str(cfg.get("classifier", "resnet50"))
    if cls_name in TV_FILES:
        classifier, cls_sha = load_torchvision_classifier(cls_name, cfg.get("classifier_weights"), dataset)
    else:
        from benchmark.registry import CLASSIFIERS, load_builtins

        if cfg.get("classifier_weights"):
            raise BenchError(f"classifier_weights applies to the torchvision classifiers ({', '.join(TV_FILES)})")
        load_builtins()
        classifier = CLASSIFIERS.create(cls_name, device=device)
        cls_sha = getattr(classifier, "weights_sha256", None)
    info = {"t": t, "t_star": t / 1000, "sde": "VP beta 0.1..20", "solver": "euler-maruyama", "dt": purifier.dt,
            "steps": purifier.steps, "unet": unet_kind, "unet_config": ucfg.to_dict(), "unet_sha256": unet_sha,
            "unet_fp16": use_fp16, "classifier": cls_name, "classifier_sha256": cls_sha,
            "unet_params": sum(p.numel() for p in unet.parameters())}
    return Defense(classifier, purifier=purifier, name="diffpure_imagenet", info=info).to(device).freeze()
