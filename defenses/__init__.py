"""Defenses: transform -> purifier -> classifier with explicit noise (see defenses.base)."""
import benchmark.compat as _compat  # noqa: F401  (before torchvision)
