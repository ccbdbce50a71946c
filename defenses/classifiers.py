"""The model zoo: our classifier architectures, shipped weights, and safe checkpoint loaders.

Architectures (``ARCHS``, all mapping [0,1] images to logits, normalisation inside):

- ``airnet``: the airbench94 network of Keller Jordan (2x2 "whitening" conv, three conv
  groups conv-pool-BN-GELU-conv-BN-GELU, global max pool, linear head scaled by 1/9),
  with configurable widths and number of groups. It trains to ~94% on CIFAR-10 in seconds
  on a GPU and stays cheap for attacks on a CPU (~2M parameters, ~0.12 GMAC at 32 px).
  ``input_size`` makes the model resize any other input size (bilinear, antialiased) to
  the size it was trained at: the ImageNette model is trained on 64 px images but takes the
  dataset's native 224 px images, so a defense in front of it sees the native images.
- ``resnet18_cifar``: the CIFAR ResNet-18 layout of pyautoattack's ``examples/resnet.py``
  (same parameter names), for users' own checkpoints.
- ``tv_resnet18`` / ``tv_resnet50``: torchvision ResNets with ImageNet normalisation; an
  ImageNet (1000-class) state dict is mapped onto the 10 ImageNette classes by their wnids.

Shipped models are listed in ``defenses/weights/manifest.json`` (see :func:`register_shipped`)
and registered as classifiers (``cifar10_standard``...) and as no-purifier defenses
(``standard``, ``at_pgd``) per dataset.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import BenchError
from benchmark.commands import train_command
from benchmark.registry import register_classifier, register_defense
from defenses.base import Defense
from defenses.weights import MANIFEST, WEIGHTS_DIR, load_state_dict, manifest, save_safetensors, sha256_file
from defenses.weights import load_shipped

REPO_ROOT = Path(__file__).resolve().parent.parent

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ImageNette's 10 classes in label order, and their indices among the 1000 ImageNet-1k
# classes (the sorted-wnid order torchvision's ImageNet models use).
IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)
IMAGENETTE_IMAGENET_INDEX = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)

DATASETS: dict[str, dict[str, Any]] = {
    "cifar10": {"num_classes": 10, "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "size": 32},
    "cifar100": {"num_classes": 100, "mean": CIFAR100_MEAN, "std": CIFAR100_STD, "size": 32},
    "imagenette": {"num_classes": 10, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "size": 224},
}


def dataset_info(dataset: str) -> dict[str, Any]:
    if dataset not in DATASETS:
        raise BenchError(f"unknown dataset {dataset!r} for a classifier; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[dataset]


def resize_images(x: Tensor, size: int) -> Tensor:
    """Bilinear, antialiased resize of float images to size x size (differentiable).

    The one resize used both to pack the ImageNette training images and inside the models,
    so the training and evaluation inputs go through the same filter.
    """
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Normalize(nn.Module):
    """(x - mean) / std, with an optional resize first (see :func:`resize_images`)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_size: int | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = input_size

    def forward(self, x: Tensor) -> Tensor:
        if self.input_size is not None:
            x = resize_images(x, self.input_size)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


# ----------------------------------------------------------------------------- airnet
class _Conv(nn.Conv2d):
    """3x3 'same' conv without bias, identity (dirac) init on its first in-channels filters, as in airbench."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[: min(w.size(0), w.size(1))])


class _BatchNorm(nn.BatchNorm2d):
    def __init__(self, c: int, momentum: float, eps: float, train_weight: bool) -> None:
        super().__init__(c, eps=eps, momentum=momentum)
        self.weight.requires_grad_(train_weight)


class _ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, bn_momentum: float, bn_eps: float, bn_weight: bool) -> None:
        super().__init__()
        self.conv1 = _Conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _BatchNorm(c_out, bn_momentum, bn_eps, bn_weight)
        self.conv2 = _Conv(c_out, c_out)
        self.norm2 = _BatchNorm(c_out, bn_momentum, bn_eps, bn_weight)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    """airbench94-style net (see module doc). Parameters whose name contains ``norm`` are
    BatchNorm parameters (the trainer gives them their own learning rate, as airbench does)."""

    def __init__(
        self,
        widths: Sequence[int] = (64, 256, 256),
        num_classes: int = 10,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        input_size: int | None = None,
        bn_momentum: float = 0.4,
        bn_eps: float = 1e-12,
        bn_weight: bool = False,
        logit_scale: float = 1 / 9,
        whiten_width: int = 24,
        whiten_kernel: int = 2,
        tta_flip: bool = False,
    ) -> None:
        super().__init__()
        # test-time augmentation as airbench evaluates: in eval mode the logits are the mean over
        # the image and its mirror. Part of the model's forward, so every attack differentiates
        # through both views; training (train mode) is unaffected.
        self.tta_flip = tta_flip
        self.normalize = Normalize(mean, std, input_size)
        self.whiten = nn.Conv2d(3, whiten_width, kernel_size=whiten_kernel, padding=0, bias=True)
        self.act = nn.GELU()
        chans = [whiten_width, *widths]
        self.groups = nn.Sequential(*[
            _ConvGroup(chans[i], chans[i + 1], bn_momentum, bn_eps, bn_weight) for i in range(len(widths))
        ])
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x: Tensor) -> Tensor:
        if self.tta_flip and not self.training:
            return 0.5 * (self._logits(x) + self._logits(x.flip(3)))
        return self._logits(x)

    def _logits(self, x: Tensor) -> Tensor:
        x = self.act(self.whiten(self.normalize(x)))
        x = self.groups(x)
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * self.logit_scale

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """airbench's data-dependent init: the first conv's filters whiten the input patches
        (eigenvectors of the patch covariance, +/-, scaled by 1/sqrt(eigenvalue + eps)).
        The trainer then freezes these weights. ``images``: float [0,1] NCHW (a few thousand)."""
        w = self.whiten.weight
        if w.shape[0] != 2 * w[0].numel():
            raise ValueError(f"whitening init needs whiten_width = 2*3*k*k = {2 * w[0].numel()}, got {w.shape[0]}")
        c, (h, k) = images.shape[1], w.shape[2:]
        cov = torch.zeros(c * h * k, c * h * k, dtype=torch.float64, device=w.device)
        count = 0
        for i in range(0, images.shape[0], 256):  # chunks: bounded memory at any image size
            x = self.normalize(images[i:i + 256].float().to(w.device))
            flat = x.unfold(2, h, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * h * k).double()
            cov += flat.T @ flat
            count += flat.shape[0]
        evals, evecs = torch.linalg.eigh(cov / count)
        evals, evecs = evals.flip(0).view(-1, 1, 1, 1), evecs.T.reshape(-1, c, h, k).flip(0)
        scaled = evecs / torch.sqrt(evals + eps)
        w.copy_(torch.cat((scaled, -scaled)).to(w.dtype))


# ------------------------------------------------------------------ resnet18_cifar
class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """The CIFAR ResNet of pyautoattack's ``examples/resnet.py`` (kuangliu layout, identical
    state-dict keys), with optional input normalisation (none by default, as there)."""

    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std) if mean is not None and std is not None else nn.Identity()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(_BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.linear(out)


# ------------------------------------------------------------- torchvision resnets
class TorchvisionClassifier(nn.Module):
    """A torchvision ImageNet model behind ImageNet normalisation (and an optional resize)."""

    def __init__(self, net: nn.Module, input_size: int | None = None) -> None:
        super().__init__()
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD, input_size)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def _torchvision_resnet(depth: int, num_classes: int) -> nn.Module:
    import benchmark.compat  # noqa: F401  (torchvision on CPU-only torch)
    from torchvision import models

    fn = {18: models.resnet18, 50: models.resnet50}[depth]
    return fn(weights=None, num_classes=num_classes)


def _map_imagenet_head(state: dict[str, Tensor], dataset: str) -> dict[str, Tensor]:
    """Keep only the ImageNette rows of a 1000-class ``fc`` (logits of those 10 classes)."""
    if dataset != "imagenette" or "fc.weight" not in state or state["fc.weight"].shape[0] != 1000:
        return state
    idx = torch.tensor(IMAGENETTE_IMAGENET_INDEX)
    state = dict(state)
    state["fc.weight"] = state["fc.weight"][idx].clone()
    if "fc.bias" in state:
        state["fc.bias"] = state["fc.bias"][idx].clone()
    return state


# ------------------------------------------------------------------------ ARCHS
def _airnet(*, num_classes: int, dataset: str, **kw: Any) -> nn.Module:
    info = dataset_info(dataset)
    kw.setdefault("mean", info["mean"])
    kw.setdefault("std", info["std"])
    return AirNet(num_classes=num_classes, **kw)


def _resnet18_cifar(*, num_classes: int, dataset: str, normalize: bool = False, **kw: Any) -> nn.Module:
    if kw:
        raise BenchError(f"resnet18_cifar takes only 'normalize'; got {sorted(kw)}")
    info = dataset_info(dataset)
    if normalize:
        return ResNetCifar(num_classes=num_classes, mean=info["mean"], std=info["std"])
    return ResNetCifar(num_classes=num_classes)


def _tv(depth: int) -> Callable[..., nn.Module]:
    def build(*, num_classes: int, dataset: str, input_size: int | None = None, **kw: Any) -> nn.Module:
        if kw:
            raise BenchError(f"tv_resnet{depth} takes only 'input_size'; got {sorted(kw)}")
        return TorchvisionClassifier(_torchvision_resnet(depth, num_classes), input_size)

    build.__doc__ = f"torchvision ResNet-{depth} with ImageNet normalisation"
    return build


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "airnet": _airnet,
    "resnet18_cifar": _resnet18_cifar,
    "tv_resnet18": _tv(18),
    "tv_resnet50": _tv(50),
}


def build_arch(arch: str, *, dataset: str, num_classes: int | None = None, seed: int | None = None,
               **kwargs: Any) -> nn.Module:
    """An untrained model of a named architecture. With ``seed``, the init is reproducible and
    the global RNG state is left as it was."""
    if arch not in ARCHS:
        raise BenchError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    n = num_classes if num_classes is not None else dataset_info(dataset)["num_classes"]
    if seed is None:
        return ARCHS[arch](num_classes=n, dataset=dataset, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHS[arch](num_classes=n, dataset=dataset, **kwargs)


def _load_into(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    ref = model.state_dict()
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    if missing or unexpected:
        raise BenchError(
            f"{what} does not fit the architecture: missing keys {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected keys {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    bad = [k for k in ref if tuple(ref[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise BenchError(f"{what} does not fit the architecture: {k} has shape {tuple(state[k].shape)}, "
                         f"expected {tuple(ref[k].shape)}")
    model.load_state_dict({k: v.to(ref[k].dtype) if v.is_floating_point() else v for k, v in state.items()})


def load_checkpoint_classifier(
    path: str | Path,
    arch: str,
    *,
    dataset: str,
    num_classes: int | None = None,
    sha256: str | None = None,
    **arch_kwargs: Any,
) -> nn.Module:
    """A user's checkpoint (state dict; safetensors or a weights-only ``.pt``) in a named
    architecture, in eval mode. Checked against ``sha256`` when given; never unpickled.
    For ``tv_resnet*`` on ImageNette, a 1000-class ImageNet state dict is mapped to the
    10 ImageNette classes."""
    model = build_arch(arch, dataset=dataset, num_classes=num_classes, **arch_kwargs)
    state = load_state_dict(path, sha256=sha256)
    if arch.startswith("tv_"):
        state = {k.removeprefix("net."): v for k, v in state.items()}
        state = {f"net.{k}": v for k, v in _map_imagenet_head(state, dataset).items()}
    _load_into(model, state, f"checkpoint {path}")
    model.weights_sha256 = sha256_file(path)  # type: ignore[attr-defined]
    return model.eval()


def load_torchvision_resnet(
    path: str | Path,
    arch: str = "resnet18",
    *,
    sha256: str | None = None,
    dataset: str = "imagenette",
    input_size: int | None = None,
) -> nn.Module:
    """A torchvision ResNet from a local ImageNet state dict, as a [0,1]-input classifier
    (ImageNet normalisation inside; for ImageNette, logits of its 10 classes by wnid)."""
    names = {"resnet18": "tv_resnet18", "resnet50": "tv_resnet50"}
    if arch not in names:
        raise BenchError(f"torchvision arch {arch!r} not supported; choose from {', '.join(names)}")
    num_classes = 10 if dataset == "imagenette" else 1000
    return load_checkpoint_classifier(path, names[arch], dataset=dataset, num_classes=num_classes,
                                      sha256=sha256, input_size=input_size)


def load_run_classifier(run_dir: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The classifier of a finished ``bench train classifier`` run folder (weights.safetensors +
    recipe.json, whose config names the architecture), in eval mode; sha256 checked."""
    p = Path(run_dir)
    if not (p / "recipe.json").is_file() or not (p / "weights.safetensors").is_file():
        raise BenchError(f"{p} is not a finished classifier run (needs weights.safetensors and recipe.json)")
    rec = json.loads((p / "recipe.json").read_text())
    cfg = rec.get("config", {})
    model_cfg = cfg.get("model", {})
    sha = rec.get("weights", {}).get("sha256")
    model = load_checkpoint_classifier(p / "weights.safetensors", model_cfg.get("arch", ""), dataset=cfg.get("dataset", ""),
                                       num_classes=model_cfg.get("num_classes"), sha256=sha,
                                       **model_cfg.get("kwargs", {}))
    return model.to(device)


# ------------------------------------------------------------------ shipped zoo
# name -> (dataset, training config that makes its weights)
SHIPPED: dict[str, tuple[str, str]] = {
    "cifar10_standard": ("cifar10", "configs/train/cifar10_standard.yaml"),
    "cifar10_at_pgd": ("cifar10", "configs/train/cifar10_at_pgd.yaml"),
    "imagenette_standard": ("imagenette", "configs/train/imagenette_standard.yaml"),
    "cifar100_standard": ("cifar100", "configs/train/cifar100_standard.yaml"),
}


def _missing_weights(name: str) -> BenchError:
    dataset, config = SHIPPED[name]
    return BenchError(
        f"no shipped weights for {name!r} (no entry in defenses/weights/manifest.json); make them with "
        f"`{train_command('classifier', config, device='cuda', out=f'runs/train/{name}')}` then "
        f"`python scripts/ship_weights.py runs/train/{name} {name}`"
    )


def load_shipped_classifier(name: str, *, device: str | torch.device = "cpu") -> nn.Module:
    """A shipped zoo model by manifest name, in eval mode on ``device`` (sha256 checked)."""
    entry = manifest().get(name)
    if entry is None:
        if name in SHIPPED:
            raise _missing_weights(name)
        raise BenchError(f"no shipped weights named {name!r}; shipped: {', '.join(sorted(manifest())) or 'none'}")
    model = build_arch(entry["arch"], dataset=entry["dataset"], num_classes=entry.get("num_classes"),
                       **entry.get("arch_kwargs", {}))
    _load_into(model, load_shipped(name), f"shipped weights {entry['file']}")
    model.weights_sha256 = entry["sha256"]  # type: ignore[attr-defined]
    return model.eval().to(device)


def _classifier_factory(name: str) -> Callable[..., nn.Module]:
    def make(*, device: str | torch.device = "cpu") -> nn.Module:
        return load_shipped_classifier(name, device=device)

    dataset, config = SHIPPED[name]
    make.__doc__ = f"our {dataset} model trained by {config} (shipped weights)"
    return make


for _name, (_ds, _cfg) in SHIPPED.items():
    register_classifier(_name, dataset=_ds, config=_cfg)(_classifier_factory(_name))


def _zoo_defense(kind: str, datasets: Sequence[str], dataset: str, device: str | torch.device,
                 cfg: Mapping[str, Any]) -> Defense:
    if cfg:
        raise BenchError(f"defense {kind!r} takes no options; got {sorted(cfg)}")
    if dataset not in datasets:
        raise BenchError(f"defense {kind!r} exists for datasets {', '.join(datasets)}; got {dataset!r}")
    name = f"{dataset}_{kind}"
    model = load_shipped_classifier(name, device=device)
    entry = manifest()[name]
    info = {"classifier": name, "weights_sha256": entry["sha256"], "recipe": entry.get("recipe"),
            "train_config": entry.get("config")}
    return Defense(model, name=kind, info=info).freeze()


@register_defense("standard", datasets=("cifar10", "cifar100", "imagenette"), stochastic=False,
                  summary="our standard-trained classifier, no purifier (the undefended baseline)")
def standard(*, dataset: str = "cifar10", device: str | torch.device = "cpu", **cfg: Any) -> Defense:
    """Our standard-trained classifier, no purifier (the undefended baseline)."""
    return _zoo_defense("standard", ("cifar10", "cifar100", "imagenette"), dataset, device, cfg)


# A robust model keeps ~40% of the images through APGD, so AutoAttack's Square (5000 queries, one
# forward each) dominates its cpu run: 404 s on 2 idle cores with 5000 queries. The cut says so.
AT_SCALE_CUTS: dict[str, Any] = {"cpu": {"square_queries": 1000}}


@register_defense("at_pgd", datasets=("cifar10",), stochastic=False, scale_cuts=AT_SCALE_CUTS,
                  summary="our PGD adversarially trained classifier (Linf 8/255), no purifier")
def at_pgd(*, dataset: str = "cifar10", device: str | torch.device = "cpu", **cfg: Any) -> Defense:
    """Our PGD adversarially trained classifier (Linf 8/255), no purifier."""
    return _zoo_defense("at_pgd", ("cifar10",), dataset, device, cfg)


# ------------------------------------------------------------------ shipping
def cast_weights(t: Tensor, dtype: str) -> Tensor:
    """Shipping precision: with ``float16``, weight matrices/kernels (>= 2 dims, nearly all
    the bytes) become fp16; 1-D tensors (BatchNorm statistics, biases) stay fp32, since a
    running variance can be far below fp16's normal range. ``load_shipped`` returns fp32."""
    if not t.is_floating_point():
        return t
    if dtype == "float16" and t.dim() >= 2:
        return t.to(torch.float16)
    return t.to(torch.float32)


def register_shipped(
    name: str,
    weights_file: str | Path,
    recipe: str | Path | Mapping[str, Any],
    *,
    dtype: str = "float16",
    metrics: Mapping[str, Any] | None = None,
    weights_dir: Path = WEIGHTS_DIR,
    extra_arch_kwargs: Mapping[str, Any] | None = None,
    arch: str | None = None,
    extra_entry: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Copy a finished run's weights (cast by :func:`cast_weights`) and its recipe into the shipped
    weights folder and add/replace the manifest entry (file, sha256, arch, dataset, recipe,
    metrics, plus ``extra_entry``, e.g. a diffusion UNet's config and schedule). Returns the entry."""
    recipe_dict = dict(json.loads(Path(recipe).read_text()) if not isinstance(recipe, Mapping) else recipe)
    cfg = recipe_dict.get("config", {})
    model_cfg = cfg.get("model", {})
    state = load_state_dict(weights_file)
    if dtype not in ("float16", "float32"):
        raise BenchError(f"dtype must be float16 or float32, got {dtype!r}")
    state = {k: cast_weights(v, dtype) for k, v in state.items()}
    weights_dir.mkdir(parents=True, exist_ok=True)
    fname = f"{name}.safetensors"
    digest = save_safetensors(state, weights_dir / fname, metadata={"name": name, "dtype": dtype})
    recipe_name = f"{name}.recipe.json"
    (weights_dir / recipe_name).write_text(json.dumps(recipe_dict, indent=2, sort_keys=True))
    entry = {
        "file": fname,
        "sha256": digest,
        "bytes": (weights_dir / fname).stat().st_size,
        "dtype": dtype,
        "arch": arch or model_cfg.get("arch"),
        "arch_kwargs": {**model_cfg.get("kwargs", {}), **dict(extra_arch_kwargs or {})},
        "dataset": cfg.get("dataset"),
        "num_classes": model_cfg.get("num_classes") or dataset_info(cfg.get("dataset", "cifar10"))["num_classes"],
        "recipe": recipe_name,
        "config": recipe_dict.get("config_path"),
        "metrics": dict(metrics if metrics is not None else recipe_dict.get("metrics", {})),
        **dict(extra_entry or {}),
    }
    mpath = weights_dir / MANIFEST.name
    entries = json.loads(mpath.read_text()) if mpath.is_file() else {}
    entries[name] = entry
    tmp = mpath.with_name(mpath.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    shutil.move(str(tmp), str(mpath))
    return entry
