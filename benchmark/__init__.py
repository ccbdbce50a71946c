"""purifybench: honest robustness evaluation of purification defenses.

Importing the package first makes torchvision importable on CPU-only torch builds
(see :mod:`benchmark.compat`).
"""
from . import compat as _compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"

_API = ("evaluate", "board", "Evaluation")


def __getattr__(name: str):  # PEP 562: `benchmark.evaluate` without importing torch for `bench --help`
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
