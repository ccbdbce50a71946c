"""Files the package reads at run time, found through the installed packages, not the checkout.

``configs/`` stays at the repository top level (the product owner's layout) and ships as the
package ``configs`` (package data in pyproject.toml), so an installed wheel finds the
protocols, the CI baseline and the training configs wherever the user's working directory is.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

CONFIG_PREFIX = "configs/"


def configs_dir(*parts: str) -> Path:
    """The shipped ``configs/`` folder (or a sub-folder), a real directory in a wheel or a checkout."""
    return Path(str(resources.files("configs"))).joinpath(*parts)


def resolve_config_path(path: str | Path) -> Path:
    """``path`` as given when it exists; else a ``configs/...`` path resolved inside the package.

    So ``bench train classifier --config configs/train/cifar10_standard.yaml`` works from the
    checkout (the user's own edited copy wins) and from any folder after ``pip install``."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    text = p.as_posix()
    if text.startswith(CONFIG_PREFIX):
        shipped = configs_dir(*Path(text[len(CONFIG_PREFIX):]).parts)
        if shipped.exists():
            return shipped
    return p


def cache_dir() -> Path:
    """Where downloads and converted checkpoints go (``$PURIFYBENCH_CACHE`` or ~/.cache/purifybench)."""
    return Path(os.environ.get("PURIFYBENCH_CACHE", Path.home() / ".cache" / "purifybench"))
