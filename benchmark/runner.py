"""Evaluate a defense on a fixed evaluation set.

Randomness is drawn per batch from generators derived from (seed, batch index, purpose),
so a batch gives the same result whatever order batches run in.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .errors import BenchError
from .seeds import generator


@dataclass
class CleanResult:
    ids: list[str]
    labels: torch.Tensor
    preds: torch.Tensor  # (repeats, N)
    wall_s: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def correct(self) -> int:
        """Correct under the first (or only) forward pass."""
        return int((self.preds[0] == self.labels).sum())


def check_logits(logits: torch.Tensor, batch: int) -> None:
    if not torch.isfinite(logits).all():
        raise BenchError(f"the defense returned NaN or inf logits on batch {batch}; stopping")


def clean_predictions(
    defense: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 100,
    device: torch.device | str = "cpu",
    seed: int = 0,
    repeats: int = 1,
    on_batch: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Predictions (repeats, N) of the defense on clean images; fresh noise per repeat."""
    if batch_size <= 0:
        raise BenchError(f"batch size must be positive, got {batch_size}")
    preds = []
    n = images.shape[0]
    with torch.no_grad():
        for b, start in enumerate(range(0, n, batch_size)):
            x = images[start:start + batch_size].to(device)
            reps = []
            for r in range(repeats):
                g = generator(seed, "clean", b, r, device=x.device)
                logits = defense(x, generator=g)
                check_logits(logits, b)
                reps.append(logits.argmax(1).cpu())
            preds.append(torch.stack(reps))
            if on_batch:
                on_batch(b, x.shape[0])
    return torch.cat(preds, dim=1)


def evaluate_clean(defense: torch.nn.Module, evalset: Any, **kw: Any) -> CleanResult:
    t0 = time.perf_counter()
    preds = clean_predictions(defense, evalset.images, evalset.labels, **kw)
    return CleanResult(list(evalset.ids), evalset.labels.clone(), preds, time.perf_counter() - t0)
