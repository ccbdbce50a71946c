"""Attacks sharing one interface; the noise policy says what the attacker knows.

Public API (see the modules for details):

* :func:`make_attack` / :class:`Attack` (presets with published budgets, :mod:`attacks.presets`)
* :func:`pgd`, :func:`stadv`, :func:`autoattack`, :func:`cw_l2` (families)
* :class:`NoisePolicy`, :class:`Objective`, :class:`PolicyModel`, :func:`predict` (:mod:`attacks.core`)
"""
import benchmark.compat as _compat  # noqa: F401  (before torchvision)

from .core import NoisePolicy, Objective, PolicyModel, predict
from .presets import Attack, list_attacks, make_attack
from .pgd import pgd
from .stadv import stadv
from .autoattack import autoattack
from .cw import cw_l2

__all__ = ["Attack", "NoisePolicy", "Objective", "PolicyModel", "autoattack", "cw_l2", "list_attacks",
           "make_attack", "pgd", "predict", "stadv"]
