"""Known-answer trap defenses for the default `bench run` battery (tests/test_traps.py).

Every trap wraps the same tiny deterministic classifier, a ridge-regression linear model fitted
in closed form on the 1,000 embedded CIFAR-10 test images (no training run, no weights file):
without a trap, PGD at L-inf 8/255 leaves none of the images it fits standing, so the known
answer of every broken trap is "about 0% robust", and the constant classifier's is
"robust accuracy = clean accuracy, exactly".

Load with ``--defense tests/plugins/traps.py:NAME``: ``linear`` (no trap), ``quantized`` (input
quantization: zero gradients), ``opaque_noise`` (hidden global-RNG noise in an nn.Module),
``huge_logits`` (logits x 1e4: cross-entropy gradients underflow in fp32), ``noisy_draws``
(declared Gaussian noise loud enough that single draws are often wrong on clean images) and
``constant`` (always class 0: truly robust).
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from defenses.base import Defense, Stage, randn

RIDGE = 1.0  # dual ridge on 1000 x 3072 inputs: fits every image, far from robust


@lru_cache(maxsize=1)
def _ridge_weights() -> tuple[torch.Tensor, torch.Tensor]:
    from benchmark.data import load_eval_set

    ev = load_eval_set("cifar10")
    X = (ev.images.flatten(1).double() - 0.5)
    Y = torch.nn.functional.one_hot(ev.labels, 10).double() - 0.1
    alpha = torch.linalg.solve(X @ X.t() + RIDGE * torch.eye(X.shape[0], dtype=X.dtype), Y)
    return (X.t() @ alpha).t().float().contiguous(), torch.zeros(10)


class Linear(nn.Module):
    """logits = W (x - 0.5) * scale; ``scale`` 1e4 is the saturated-logits trap."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        w, b = _ridge_weights()
        self.register_buffer("w", w.clone())
        self.register_buffer("b", b.clone())
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * ((x.flatten(1) - 0.5) @ self.w.t() + self.b)


class Quantize(Stage):
    """Input quantization to ``levels`` + 1 grey levels: torch.round has zero gradient."""

    def __init__(self, levels: int = 16) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x, noise):
        return torch.round(x * self.levels) / self.levels


class Gaussian(Stage):
    """x + sigma N(0, 1) with declared noise (clipped to [0, 1] if ``clamp``); the one toy noise
    stage of the suite's known-answer defenses (also tests/diag_toys.py, tests/test_stochastic_eval.py)."""

    noise_names = ("gaussian",)

    def __init__(self, sigma: float, clamp: bool = False) -> None:
        super().__init__()
        self.sigma, self.clamp = sigma, clamp

    def sample_noise(self, x, generator):
        return {"gaussian": randn(x.shape, generator, x)}

    def forward(self, x, noise):
        out = x + self.sigma * noise["gaussian"]
        return out.clamp(0, 1) if self.clamp else out


class _OpaqueNoise(nn.Module):
    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.net = Linear()
        self.sigma = sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


class _Constant(nn.Module):
    """Always class 0, whatever the input (the 0 * x term keeps the autograd graph connected)."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 10, device=x.device, dtype=x.dtype)
        logits[:, 0] = 1.0
        return logits + 0.0 * x.flatten(1).sum(1, keepdim=True)


def linear():
    return Defense(Linear(), name="trap_linear")


def quantized():
    return Defense(Linear(), transform=Quantize(16), name="trap_quantized")


def opaque_noise():
    return _OpaqueNoise(0.03)


def huge_logits():
    return Defense(Linear(1e4), name="trap_huge_logits")


def noisy_draws():
    return Defense(Linear(), transform=Gaussian(0.08), name="trap_noisy_draws")


def constant():
    return Defense(_Constant(), name="trap_constant")
