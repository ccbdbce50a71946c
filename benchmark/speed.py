"""Cost savers a run applies to its defense, each checked before it is trusted.

* **Memory format.** On this 2-core CPU, channels-last weights made an exact input gradient
  1.11-1.33x faster (``benchmarks/layout.py``, 16 images, 2026-12-01: the airbench classifier
  1.22x, pyautoattack's ResNet-18 1.11x, the AToP GAN defense 1.33x, 2-step DiffPure 1.33x). The
  math is the same up to float rounding, but a module with a ``.view`` on a non-contiguous activation fails and a
  plugin may do anything, so ``auto`` converts only after a probe: the logits of the first batch
  must match the contiguous ones (max abs difference <= ``1e-3 * max(1, max |logit|)``), else the
  defense is converted back and the record says why. ``auto`` means channels-last on CPU and
  contiguous on CUDA (not measured on a GPU here).
* **torch.compile** (``compile=True``) of the classifier: opt-in. On this CPU it gave nothing on
  top of channels-last (``benchmarks/layout.py --compile``, airbench classifier, batch 32: 0.988x)
  after 16-62 s of compilation; never used in tests.

Both change numbers only at float-rounding level, so the choice is part of the run's record and
hash (a resumed run never mixes layouts).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import BenchError

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
PROBE_TOLERANCE = 1e-3


@dataclass
class SpeedChoice:
    memory_format: str  # what the run uses
    reason: str
    compiled: bool = False

    def record(self) -> dict[str, Any]:
        return {"memory_format": self.memory_format, "memory_format_reason": self.reason, "compile": self.compiled}


def _logits(defense: Any, x: torch.Tensor, noise: Any, seed: int) -> torch.Tensor:
    # opaque plugins draw from the global RNG: the same seed for both probes
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        return defense(x, noise).float()


def choose_memory_format(defense: Any, x: torch.Tensor, *, requested: str, seed: int,
                         generator: torch.Generator | None) -> SpeedChoice:
    """Convert ``defense`` (in place) to the requested layout when the probe on ``x`` agrees."""
    if requested not in MEMORY_FORMATS:
        raise BenchError(f"unknown memory format {requested!r}; choose from {', '.join(MEMORY_FORMATS)}")
    want = requested
    if requested == "auto":
        want = "channels_last" if x.device.type == "cpu" else "contiguous"
    if want == "contiguous":
        return SpeedChoice("contiguous", "requested" if requested == "contiguous" else f"auto on {x.device.type}")
    noise = defense.sample_noise(x, generator)
    defense.to(memory_format=torch.contiguous_format)  # the same probe (and record) whatever layout it had
    ref = _logits(defense, x, noise, seed)
    defense.to(memory_format=torch.channels_last)
    try:
        got = _logits(defense, x, noise, seed)
        diff = float((got - ref).abs().max()) if got.shape == ref.shape else float("inf")
    except RuntimeError as e:  # e.g. a .view on a channels-last activation
        diff, err = float("inf"), f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    else:
        err = ""
    limit = PROBE_TOLERANCE * max(1.0, float(ref.abs().max()))
    if diff <= limit:
        return SpeedChoice("channels_last", f"probe max |logit diff| {diff:.2e} <= {limit:.2e}")
    defense.to(memory_format=torch.contiguous_format)
    why = err or f"probe max |logit diff| {diff:.2e} > {limit:.2e}"
    if requested == "channels_last":
        raise BenchError(f"channels_last changes this defense's logits ({why}); use --memory-format contiguous")
    return SpeedChoice("contiguous", f"auto fell back: {why}")


def compile_classifier(defense: Any) -> None:
    """Wrap the defense's classifier in ``torch.compile`` (opt-in; see the module docstring)."""
    defense.classifier = torch.compile(defense.classifier)
