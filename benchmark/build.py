"""Turn a defense name from the CLI or a config into a Defense.

Names are registry entries (``rn18_aa_example``, ``atop_gan``...) or ``robustbench:<Name>``.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import BenchError
from .registry import DEFENSES, load_builtins


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device {device!r} requested but CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise BenchError(f"unknown device {device!r}; use cpu, cuda or auto")
    return torch.device(device)


def make_defense(
    name: str,
    *,
    dataset: str = "cifar10",
    device: torch.device | str = "cpu",
    checkpoint: str | None = None,
    options: dict[str, Any] | None = None,
):
    """Build and freeze the named defense for ``dataset`` on ``device``."""
    options = dict(options or {})
    if name.startswith("robustbench:"):
        from defenses.zoo import make_robustbench_defense

        return make_robustbench_defense(name.split(":", 1)[1], dataset=dataset, device=device,
                                        checkpoint=checkpoint, **options)
    load_builtins()
    entry = DEFENSES.get(name)
    datasets = entry.meta.get("datasets")
    if datasets and dataset not in datasets:
        raise BenchError(f"defense {name!r} exists for {', '.join(datasets)}, not for dataset {dataset!r}")
    if checkpoint is not None:
        options["checkpoint"] = checkpoint
    try:
        return entry.factory(dataset=dataset, device=device, **options)
    except TypeError as e:
        raise BenchError(f"defense {name!r}: bad options {sorted(options)} ({e})") from None
