"""Plugin defenses for runner tests (loaded with --defense tests/plugins/toy_defenses.py:NAME)."""
import torch
from torch import nn

from defenses.base import Defense, Stage, randn


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(128, 10))


class Gaussian(Stage):
    noise_names = ("gaussian",)

    def sample_noise(self, x, generator):
        return {"gaussian": randn(x.shape, generator, x)}

    def forward(self, x, noise):
        return (x + 0.1 * noise["gaussian"]).clamp(0, 1)


def tiny():
    """A deterministic tiny CNN as a plain nn.Module."""
    return _net()


def noisy():
    """A stochastic Defense with declared noise."""
    return Defense(_net(), transform=Gaussian(), name="noisy")


class _Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        return self.net((x + 0.1 * torch.randn_like(x)).clamp(0, 1))


def opaque():
    """A stochastic module whose randomness is hidden in the global RNG."""
    return _Opaque()


class _NaN(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 10), float("nan"))


def nan_model():
    return _NaN()


def not_a_model():
    return "hello"
