"""Reduced-precision attack gradients (``bench run --precision bf16``), guarded by a check.

On CPUs with AVX512-BF16 (and on recent GPUs) a defense's forward/backward under
``torch.autocast(dtype=torch.bfloat16)`` is several times faster than in float32, and an attack
spends nearly all its time there. bf16 keeps float32's exponent range but only 8 bits of
mantissa, so whether the attack's *search direction* survives depends on the defense: before a
run uses it, :func:`choose_precision` compares the input gradient of the attack loss (CE) on a
probe batch (the run's first batch, one noise draw, the same global-RNG seed for both passes) in
bf16 and in float32, per sample, by cosine similarity; only if every sample reaches the threshold
(0.99) do the attacks get the :class:`AutocastDefense` view, else the run stays float32 and its
record says why (the measured cosines).

What runs in bf16 is the attack's side only: every forward/backward an attack makes through the
defense (gradients, EOT draws, BPDA's purify and classifier, the logits third-party libraries
see through ``PolicyModel``), including the misclassification flags it derives from those same
passes (PGD's early stop on a deterministic view). :meth:`attacks.core.Objective.evaluate`,
which picks each sample's best candidate and decides AutoAttack's still-robust samples, uses the
float32 defense (:func:`full_precision`), and so does every forward pass whose predictions are
reported (clean accuracy, :func:`attacks.core.predict` on the final x_adv): the reported
accuracy is always a float32 evaluation of an image inside the threat model, so bf16 can at
worst weaken the search, never misreport its outcome.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import BenchError

from .core import Objective, full_precision  # noqa: F401  (precision sits above core: imports run one way)

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
COSINE_THRESHOLD = 0.99


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise BenchError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    return name


class _Autocast(nn.Module):
    """``module`` called under autocast, float32 out (so losses and images stay float32)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.module(x)
        return out.float()


class AutocastDefense(nn.Module):
    """A defense as the attacks see it under ``--precision bf16``: ``forward``, ``purify`` and
    ``classifier`` run under ``torch.autocast(dtype)`` and return float32; everything else
    (noise sampling, ``stochastic``, ``noise_names``, ``info``...) is the wrapped defense's.
    :func:`full_precision` gives the wrapped float32 defense back."""

    def __init__(self, defense: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.inner = defense
        self.classifier = _Autocast(defense.classifier, dtype)
        self.dtype = dtype

    @property
    def full_precision(self) -> nn.Module:
        return self.inner

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules of this wrapper
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def purify(self, x: Tensor, noise: Any) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.inner.purify(x, noise)
        return out.to(x.dtype)

    def forward(self, x: Tensor, noise: Any = None, generator: torch.Generator | None = None) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.inner(x, noise, generator)
        return out.float()


def input_grad(defense: Any, x: Tensor, y: Tensor, noise: Any, *, grad_mode: str = "exact",
               global_seed: int = 0) -> Tensor:
    """Gradient of the summed CE loss w.r.t. ``x`` through the attacker's logits
    (:meth:`Objective.logits`, so BPDA is BPDA), with torch's global RNG seeded to
    ``global_seed`` (opaque modules draw the same noise in every call)."""
    obj = Objective(defense, grad_mode=grad_mode)
    xi = x.detach().clone().requires_grad_(True)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.manual_seed(global_seed)
        logits = obj.logits(xi, noise).float()
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xi)
    return g.detach().float()


def per_sample_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of each row pair (flattened); 1 where both are zero, 0 where one is."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(1) / (na * nb).clamp(min=1e-300)
    both_zero = (na == 0) & (nb == 0)
    return torch.where(both_zero, torch.ones_like(cos), torch.where((na == 0) | (nb == 0), torch.zeros_like(cos), cos))


def _finite_or_none(v: float) -> float | None:
    return round(v, 6) if math.isfinite(v) else None


@dataclass
class PrecisionCheck:
    """Outcome of the probe: what was asked, what the attacks use, and the measured cosines."""

    requested: str
    used: str
    threshold: float
    n: int
    grad_modes: tuple[str, ...]
    min_cosine: float
    mean_cosine: float
    per_mode: dict[str, dict[str, float | None]] = field(default_factory=dict)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.used == self.requested

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requested": self.requested, "used": self.used, "passed": self.passed, "loss": "ce",
            "threshold": self.threshold, "probe": f"first batch ({self.n} images), one noise draw",
            "grad_modes": list(self.grad_modes), "min_cosine": _finite_or_none(self.min_cosine),
            "mean_cosine": _finite_or_none(self.mean_cosine), "per_grad_mode": self.per_mode,
            "scope": "attack forward/backward passes only; evaluation (best candidate, reported accuracy) in fp32",
        }
        if self.error:
            out["error"] = self.error
        return out

    def text(self) -> str:
        cos = f"min cosine {self.min_cosine:.4f}, mean {self.mean_cosine:.4f} over {self.n} images"
        if self.passed:
            return f"attack gradients in {self.used} ({cos}; threshold {self.threshold})"
        why = self.error or f"{cos} < threshold {self.threshold}"
        return f"{self.requested} gradient check failed ({why}); attack gradients stay fp32"


def choose_precision(
    defense: Any,
    x: Tensor,
    y: Tensor,
    *,
    precision: str,
    generator: torch.Generator | None,
    global_seed: int = 0,
    grad_modes: Iterable[str] = ("exact",),
    threshold: float = COSINE_THRESHOLD,
) -> tuple[Any, PrecisionCheck | None]:
    """(the defense the attacks should get, the check) for ``precision``.

    fp32: ``(defense, None)``. Otherwise the CE input gradient on ``x`` is computed in float32 and
    under autocast, with one noise draw from ``generator`` and the same global-RNG seed, for each
    gradient mode the attacks use; the reduced precision is used only if every per-sample cosine
    is >= ``threshold``. An error in the reduced-precision pass fails the check (recorded)."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return defense, None
    modes = tuple(dict.fromkeys(grad_modes)) or ("exact",)
    noise = defense.sample_noise(x, generator)
    low = AutocastDefense(defense, dtype)
    cos_all: list[Tensor] = []
    per_mode: dict[str, dict[str, float | None]] = {}
    error = None
    for mode in modes:
        ref = input_grad(defense, x, y, noise, grad_mode=mode, global_seed=global_seed)
        try:
            got = input_grad(low, x, y, noise, grad_mode=mode, global_seed=global_seed)
        except RuntimeError as e:  # an op without a bf16 kernel here: stay fp32, say why
            error = f"{precision} pass raised {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            break
        cos = per_sample_cosine(ref, got)
        cos = torch.where(torch.isfinite(cos), cos, torch.full_like(cos, float("nan")))
        cos_all.append(cos)
        per_mode[mode] = {"min_cosine": _finite_or_none(float(cos.min())), "mean_cosine": _finite_or_none(float(cos.mean()))}
    if cos_all:
        c = torch.cat(cos_all)
        mn = float("nan") if bool(c.isnan().any()) else float(c.min())
        mean = float(c.mean())
    else:
        mn = mean = float("nan")
    ok = error is None and math.isfinite(mn) and mn >= threshold
    check = PrecisionCheck(precision, precision if ok else "fp32", float(threshold), int(x.shape[0]), modes,
                           mn, mean, per_mode, error)
    return (low if ok else defense), check
