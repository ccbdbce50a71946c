"""Seeds derived from names, so results never depend on execution order.

A run's randomness for (batch, attack, purpose) comes from ``derive_seed(run_seed, ...)``:
re-running one batch after a crash, or on another rank, draws the same numbers.
"""
from __future__ import annotations

import hashlib

import torch

from .errors import BenchError

# Every seed the tool takes (``--seed``, ``random:N:SEED``, a training config's ``seed``) lies in
# [0, 2**32): numpy's RandomState (subsets, KID subsets) takes no more, and training derives
# per-step seeds by arithmetic on it (seed * 1_000_003 + step) that must stay inside 64 bits.
SEED_LIMIT = 2**32


def check_seed(seed: object, where: str = "--seed") -> int:
    """``seed`` as an int in [0, SEED_LIMIT), or a BenchError naming ``where``: the one range check."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BenchError(f"{where} must be an integer, got {seed!r}")
    if not 0 <= seed < SEED_LIMIT:
        raise BenchError(f"{where} must be in 0..{SEED_LIMIT - 1} (2**32 - 1), got {seed}")
    return seed


def derive_seed(seed: int, *keys: object) -> int:
    blob = repr((int(seed), *keys)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded from ``derive_seed(seed, *keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g
