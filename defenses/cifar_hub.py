"""The pytorch-cifar-models zoo (chenyaofo, BSD 3-Clause) by its torch.hub names, from local files.

Published CIFAR-10/100 classifiers with known accuracies, so that CIFAR-100 (and CIFAR-10) have
real, non-toy baselines offline. Our own code of the authors' architectures, with their exact
state-dict key names (facts read from ``pytorch_cifar_models/*.py``), so the published ``.pt``
files (plain state dicts) load unchanged with ``torch.load(weights_only=True)``:

- ``{cifar10,cifar100}_resnet{20,32,44,56}``: CIFAR ResNet (BasicBlock, [n, n, n] blocks with
  16/32/64 channels, 3x3 stem without max-pool, 1x1-conv+BN projection shortcuts).
- ``..._vgg{11,13,16,19}_bn``: VGG-BN features, classifier 512-512-512-classes, no avg-pool.
- ``..._mobilenetv2_x{0_5,0_75,1_0,1_4}``: torchvision's MobileNetV2 with stem and second stage
  stride 1 (the authors' CIFAR change); the layout is torchvision's, so torchvision builds it.
- ``..._shufflenetv2_x{0_5,1_0,1_5,2_0}``: torchvision's ShuffleNetV2 with stem stride 1 and no
  max-pool (the authors' CIFAR change).

(The project's RepVGG models are not supported.) Inputs are [0, 1] images; the normalisation the
authors trained with (``conf/cifar10.conf`` / ``conf/cifar100.conf`` of
chenyaofo/image-classification-codebase) is inside the model, as in RobustBench.

``cifar100_resnet56-f2eff4c8.pt`` ships in ``defenses/weights`` (unmodified, sha256 checked; its
licence notice is ``defenses/weights/cifar100_resnet56-f2eff4c8.NOTICE``). Every other model loads
from a local file: ``--defense cifar_hub --defense-opt model=cifar10_resnet20 --defense-opt
weights=PATH``. A file whose name is the published one (``<model>-<hash8>.pt``) must have a sha256
starting with that hash (torch.hub's convention); any other file is loaded and marked as not the
published file in the run record.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from benchmark.errors import BenchError
from benchmark.registry import register_classifier, register_defense

from .base import Defense
from .classifiers import Normalize, _load_into
from .weights import WEIGHTS_DIR, load_state_dict, manifest, sha256_file

PROJECT = "https://github.com/chenyaofo/pytorch-cifar-models"
RELEASES = f"{PROJECT}/releases/download"
# training normalisation of the authors' codebase (conf/cifar10.conf, conf/cifar100.conf)
NORM = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761)),
}
# published file name hash prefixes (= sha256[:8]) and CIFAR test top-1 (%) from the project README
_FILES: dict[str, tuple[str, float]] = {
    "cifar10_resnet20": ("4118986f", 92.60), "cifar10_resnet32": ("ef93fc4d", 93.53),
    "cifar10_resnet44": ("2a3cabcb", 94.01), "cifar10_resnet56": ("187c023a", 94.37),
    "cifar100_resnet20": ("23dac2f1", 68.83), "cifar100_resnet32": ("84213ce6", 70.16),
    "cifar100_resnet44": ("ffe32858", 71.63), "cifar100_resnet56": ("f2eff4c8", 72.63),
    "cifar10_vgg11_bn": ("eaeebf42", 92.79), "cifar10_vgg13_bn": ("c01e4a43", 94.00),
    "cifar10_vgg16_bn": ("6ee7ea24", 94.16), "cifar10_vgg19_bn": ("57191229", 93.91),
    "cifar100_vgg11_bn": ("57d0759e", 70.78), "cifar100_vgg13_bn": ("5ebe5778", 74.63),
    "cifar100_vgg16_bn": ("7d8c4031", 74.00), "cifar100_vgg19_bn": ("b98f7bd7", 73.87),
    "cifar10_mobilenetv2_x0_5": ("ca14ced9", 92.88), "cifar10_mobilenetv2_x0_75": ("a53c314e", 93.72),
    "cifar10_mobilenetv2_x1_0": ("fe6a5b48", 93.79), "cifar10_mobilenetv2_x1_4": ("3bbbd6e2", 94.22),
    "cifar100_mobilenetv2_x0_5": ("9f915757", 70.88), "cifar100_mobilenetv2_x0_75": ("d7891e60", 73.61),
    "cifar100_mobilenetv2_x1_0": ("1311f9ff", 74.20), "cifar100_mobilenetv2_x1_4": ("8a269f5e", 75.98),
    "cifar10_shufflenetv2_x0_5": ("1308b4e9", 90.13), "cifar10_shufflenetv2_x1_0": ("98807be3", 92.98),
    "cifar10_shufflenetv2_x1_5": ("296694dd", 93.55), "cifar10_shufflenetv2_x2_0": ("ec31611c", 93.81),
    "cifar100_shufflenetv2_x0_5": ("1977720f", 67.82), "cifar100_shufflenetv2_x1_0": ("9ae22beb", 72.39),
    "cifar100_shufflenetv2_x1_5": ("e2c85ad8", 73.91), "cifar100_shufflenetv2_x2_0": ("e7e584cd", 75.35),
}


@dataclass(frozen=True)
class HubModel:
    name: str
    dataset: str
    family: str
    variant: str
    hash8: str
    top1: float

    @property
    def num_classes(self) -> int:
        return 10 if self.dataset == "cifar10" else 100

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.hash8}.pt"

    @property
    def url(self) -> str:
        return f"{RELEASES}/{self.family}/{self.file_name}"


def _parse(name: str, hash8: str, top1: float) -> HubModel:
    dataset, arch = name.split("_", 1)
    family = re.sub(r"\d+$", "", arch.split("_")[0]) if arch.startswith(("resnet", "vgg")) else arch.split("_")[0]
    return HubModel(name, dataset, family, arch, hash8, top1)


HUB: dict[str, HubModel] = {n: _parse(n, h, a) for n, (h, a) in _FILES.items()}


def hub_model(name: str) -> HubModel:
    if name not in HUB:
        raise BenchError(f"unknown pytorch-cifar-models name {name!r}; known: {', '.join(HUB)} "
                         "(repvgg_* is not supported)")
    return HUB[name]


# ---------------------------------------------------------------------------- architectures
class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (``downsample``: 1x1 conv + BN where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """The CIFAR ResNet-(6n+2) of pytorch-cifar-models; ``width`` scales 16/32/64 (tests)."""

    def __init__(self, blocks: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = (width, 2 * width, 4 * width)
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        cin = w[0]
        for i, (c, s) in enumerate(zip(w, (1, 2, 2)), start=1):
            layers = [BasicBlock(cin, c, s)] + [BasicBlock(c, c) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            cin = c
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13_bn": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                 512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG-BN on 32x32: five pooled stages to 1x1x512, then Linear 512-512-512-classes (dropout 0.5)."""

    def __init__(self, cfg: Sequence[int | str], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin, 512), nn.ReLU(True), nn.Dropout(), nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def _mobilenetv2(width_mult: float, num_classes: int) -> nn.Module:
    import benchmark.compat  # noqa: F401  (torchvision on CPU-only torch)
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult)
    net.features[0][0].stride = (1, 1)        # stem stride 2 -> 1 (authors' CIFAR change)
    net.features[2].conv[1][0].stride = (1, 1)  # first block of the 24-channel stage: stride 2 -> 1
    return net


def _shufflenetv2(variant: str, num_classes: int) -> nn.Module:
    import benchmark.compat  # noqa: F401
    from torchvision.models import shufflenetv2 as sv2

    fn = {"x0_5": sv2.shufflenet_v2_x0_5, "x1_0": sv2.shufflenet_v2_x1_0, "x1_5": sv2.shufflenet_v2_x1_5,
          "x2_0": sv2.shufflenet_v2_x2_0}[variant]
    net = fn(weights=None, num_classes=num_classes)
    net.conv1[0].stride = (1, 1)  # stem stride 2 -> 1
    net.maxpool = nn.Identity()    # no max-pool (authors' CIFAR change)
    return net


def build_hub_net(name: str, *, width: int | None = None) -> nn.Module:
    """The bare network of a hub model (the authors' layout; no normalisation). ``width`` (ResNets
    only) builds a narrower copy for fast tests."""
    m = hub_model(name)
    if m.family == "resnet":
        depth = int(m.variant.removeprefix("resnet"))
        return CifarResNet((depth - 2) // 6, m.num_classes, width=width or 16)
    if width is not None:
        raise BenchError("width applies to the resnet family only")
    if m.family == "vgg":
        return CifarVGG(VGG_CFGS[m.variant], m.num_classes)
    if m.family == "mobilenetv2":
        return _mobilenetv2(float(m.variant.split("_x")[1].replace("_", ".")), m.num_classes)
    return _shufflenetv2(m.variant.split("_", 1)[1], m.num_classes)


class HubClassifier(nn.Module):
    """[0, 1] images -> the authors' normalisation -> network (its state dict is the authors')."""

    def __init__(self, net: nn.Module, dataset: str) -> None:
        super().__init__()
        mean, std = NORM[dataset]
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


# ---------------------------------------------------------------------------- loading
def missing_file_error(m: HubModel, path: Path | None = None) -> BenchError:
    where = f"{path} does not exist; " if path is not None else ""
    return BenchError(
        f"{where}{m.name} needs its published weights file {m.file_name} (sha256 starts {m.hash8}), from "
        f"{m.url} (project page {PROJECT}); pass it with --defense-opt weights=PATH"
    )


def load_hub_classifier(name: str, weights: str | Path | None = None, *, width: int | None = None,
                        device: str | torch.device = "cpu") -> nn.Module:
    """A hub model from a local file (default: its shipped file, listed in the weights manifest), eval mode.

    Sets ``weights_sha256`` and ``published_file`` (True when the sha256 starts with the published
    hash prefix) on the returned model."""
    m = hub_model(name)
    if weights is None:
        entry = manifest().get(name)
        if entry is None or entry.get("arch") != "pytorch_cifar_models":
            raise missing_file_error(m)
        path, sha = WEIGHTS_DIR / entry["file"], entry["sha256"]
    else:
        path, sha = Path(weights), None
        if not path.is_file():
            raise missing_file_error(m, path)
    state = load_state_dict(path, sha256=sha)
    digest = sha or sha256_file(path)
    named = re.fullmatch(r"(.+)-([0-9a-f]{8})\.pth?", path.name)
    if named and named.group(1) == name and not digest.startswith(named.group(2)):
        raise BenchError(f"{path}: sha256 {digest[:16]}... does not start with the hash in its published name "
                         f"({named.group(2)}): corrupt or not the published file")
    net = build_hub_net(name, width=width)
    _load_into(net, state, f"weights {path} for {name}")
    model = HubClassifier(net, m.dataset)
    model.weights_sha256 = digest  # type: ignore[attr-defined]
    model.published_file = digest.startswith(m.hash8)  # type: ignore[attr-defined]
    return model.eval().to(device)


def _defense(name: str, weights: str | Path | None, dataset: str, device: str | torch.device,
             label: str) -> Defense:
    m = hub_model(name)
    if dataset != m.dataset:
        raise BenchError(f"{name} is a {m.dataset} model; got dataset {dataset!r}")
    model = load_hub_classifier(name, weights, device=device)
    info = {"classifier": name, "weights": str(weights) if weights else f"shipped:{m.file_name}",
            "weights_sha256": model.weights_sha256, "published_file": model.published_file,  # type: ignore[attr-defined]
            "published_top1": m.top1, "source": m.url,
            "params": sum(p.numel() for p in model.parameters())}
    return Defense(model, name=label, info=info).freeze()


@register_defense("cifar100_resnet56", datasets=("cifar100",), stochastic=False,
                  summary="pytorch-cifar-models ResNet-56 (published, shipped; 72.63% CIFAR-100 top-1), no purifier")
def make_cifar100_resnet56(*, dataset: str = "cifar100", device: str | torch.device = "cpu",
                           weights: str | None = None, checkpoint: str | None = None) -> Defense:
    """The published CIFAR-100 ResNet-56 of pytorch-cifar-models (shipped file, sha256 checked), no purifier."""
    return _defense("cifar100_resnet56", weights or checkpoint, dataset, device, "cifar100_resnet56")


@register_defense("cifar_hub", datasets=("cifar10", "cifar100"), stochastic=False,
                  summary="a pytorch-cifar-models classifier by torch.hub name, no purifier: model=<hub name> weights=PATH "
                  "(the release file <hub name>-<sha8>.pt from github.com/chenyaofo/pytorch-cifar-models/releases)")
def make_cifar_hub(*, dataset: str = "cifar10", device: str | torch.device = "cpu", model: str | None = None,
                   weights: str | None = None, checkpoint: str | None = None) -> Defense:
    """A pytorch-cifar-models classifier by hub name (default <dataset>_resnet56) from a local file."""
    name = model or f"{dataset}_resnet56"
    return _defense(name, weights or checkpoint, dataset, device, name)


@register_classifier("cifar100_resnet56", dataset="cifar100", config=f"published: {PROJECT}")
def classifier_cifar100_resnet56(*, device: str | torch.device = "cpu") -> nn.Module:
    """pytorch-cifar-models' published CIFAR-100 ResNet-56 (shipped file)"""
    return load_hub_classifier("cifar100_resnet56", device=device)
