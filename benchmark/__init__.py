"""purifybench: honest robustness evaluation of purification defenses.

Importing the package first makes torchvision importable on CPU-only torch builds
(see :mod:`benchmark.compat`).
"""
from . import compat as _compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
