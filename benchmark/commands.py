"""The spelling of ``bench`` commands that error hints print, shared with the CLI's parser.

Defenses sit below the CLI and cannot import it, so the command names and flags both use live
here; ``tests/test_commands.py`` parses every hint with the real parser, so a hint cannot drift.
"""
from __future__ import annotations

TRAIN_KINDS: tuple[str, ...] = ("classifier", "atop", "ddpm", "addt")
# bench train's options (cli.build_parser adds exactly these)
TRAIN_FLAGS: tuple[str, ...] = ("config", "device", "out", "data_root")


def train_command(kind: str, config: str, **options: str) -> str:
    """``bench train KIND --config CONFIG [--device D] [--out DIR] ...``, e.g. in a missing-weights hint."""
    if kind not in TRAIN_KINDS:
        raise ValueError(f"unknown train kind {kind!r}")
    bad = set(options) - set(TRAIN_FLAGS)
    if bad:
        raise ValueError(f"bench train has no option {sorted(bad)}")
    opts = "".join(f" --{k.replace('_', '-')} {v}" for k, v in options.items())
    return f"bench train {kind} --config {config}{opts}"
