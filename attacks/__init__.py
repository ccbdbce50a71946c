"""Attacks sharing one interface; the noise policy says what the attacker knows."""
import benchmark.compat as _compat  # noqa: F401  (before torchvision)
