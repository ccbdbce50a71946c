"""Plugins for the hidden-randomness probe (loaded with --defense tests/plugins/probe_plugins.py:NAME)."""
import torch
from torch import nn


class _PickyNoisy(nn.Module):
    """Stochastic (global RNG) and only for 224x224 images, as a real ImageNet-size model may be."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 10))

    def forward(self, x):
        if tuple(x.shape[-2:]) != (224, 224):
            raise ValueError(f"expected 224x224 images, got {tuple(x.shape[-2:])}")
        return self.net((x + 0.1 * torch.randn_like(x)).clamp(0, 1))


def picky_noisy():
    return _PickyNoisy()


class _Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("this module cannot classify anything")


def broken():
    return _Broken()
