"""Known-answer toy defenses for the attack-failure diagnostics (tests/test_diagnostics.py).

Each toy's right verdict is known by construction (closed form or by design), so a test can
say which flags must, and must not, be raised."""
import torch
from torch import nn

from benchmark.data import EvalSet
from defenses.base import Defense, Stage
from tests.plugins.traps import Gaussian

N_CLASSES = 10


def tiny_net(seed: int = 0) -> nn.Module:
    """A linear classifier on 3x8x8 images with N(0, 1) weights: logits of order 10 that an
    L-inf 8/255 perturbation moves by ~5, so every image is easy to fool (an undefended model)."""
    torch.manual_seed(seed)
    lin = nn.Linear(3 * 8 * 8, N_CLASSES)
    with torch.no_grad():
        lin.weight.normal_()
        lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin)


def labelled(model, n: int = 8, seed: int = 1, x: torch.Tensor | None = None) -> EvalSet:
    """Random 8x8 images (or ``x``) labelled by ``model``'s own (deterministic) prediction: clean accuracy 100%."""
    if x is None:
        x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    n = x.shape[0]
    return EvalSet(x, y, [f"img{i}" for i in range(n)], "toy", "random", f"first:{n}",
                   [str(i) for i in range(N_CLASSES)])


class Quantize(Stage):
    """Input quantization to ``levels`` grey levels: its gradient is zero almost everywhere
    (shattered), while its forward pass keeps the images (spacing 1/15 < 2 * 8/255, so an
    8/255 perturbation can move most pixels by one level)."""

    def __init__(self, levels: int = 16) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x, noise):
        k = self.levels - 1
        return torch.round(x * k) / k


def BigNoise(sigma: float) -> Gaussian:
    """x + sigma N(0, 1), clipped: passes on the same image disagree often."""
    return Gaussian(sigma, clamp=True)


class Scaled(nn.Module):
    """A classifier's logits times ``factor``: a saturated softmax whose CE gradient is exactly 0."""

    def __init__(self, net: nn.Module, factor: float = 1e4) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x):
        return self.net(x) * self.factor


class Constant(nn.Module):
    """Always the same logits (class 3), whatever the input: robust at any budget."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], N_CLASSES, device=x.device)
        logits[:, 3] = 1.0
        return logits + 0.0 * x.flatten(1).sum(1, keepdim=True)  # zero (not missing) input gradient


class MeanBrightness(nn.Module):
    """Class c = the image's mean brightness nearest c/9: logit_c = -100 (mean - c/9)^2.

    An image whose mean is within 0.02 of c/9 is exactly robust at L-inf 8/255 (the mean moves by at most
    8/255 = 0.031 < 0.056 - 0.02) and broken at 64/255 (0.25 > 0.056):
    a healthy model with real robust accuracy = clean accuracy, with smooth gradients."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        centers = torch.arange(N_CLASSES, device=x.device, dtype=x.dtype) / (N_CLASSES - 1)
        return -100.0 * (m - centers) ** 2


def brightness_images(n: int = 8, seed: int = 2) -> torch.Tensor:
    """Images with mean c/9 + 0.01 for classes c = 1..8 (small +-0.01 texture, no clipping): 0.046
    from the nearest class boundary, more than 8/255 = 0.031."""
    g = torch.Generator().manual_seed(seed)
    c = (torch.arange(n) % 8 + 1).float() / (N_CLASSES - 1) + 0.01
    t = (torch.rand(n, 3, 8, 8, generator=g) * 2 - 1) * 0.01
    t = t - t.flatten(1).mean(1).view(-1, 1, 1, 1)
    return (c.view(-1, 1, 1, 1) + t).clamp(0, 1)


def quantized() -> Defense:
    return Defense(tiny_net(), transform=Quantize(), name="quantized").freeze()


def huge_logits() -> Defense:
    return Defense(Scaled(tiny_net()), name="huge_logits").freeze()


def noisy(sigma: float = 0.3) -> Defense:
    return Defense(tiny_net(), transform=BigNoise(sigma), name="noisy").freeze()


def healthy() -> Defense:
    return Defense(tiny_net(), name="healthy").freeze()


def constant() -> Defense:
    return Defense(Constant(), name="constant").freeze()


def brightness() -> Defense:
    return Defense(MeanBrightness(), name="brightness").freeze()
