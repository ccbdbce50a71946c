"""Attacks sharing one interface; the noise policy says what the attacker knows.

Public API (see the modules for details):

* :func:`make_attack` / :class:`Attack` (presets with published budgets, :mod:`attacks.presets`)
* :func:`pgd`, :func:`stadv`, :func:`autoattack`, :func:`cw_l2` (families)
* :func:`register_family` / :class:`Family` / :class:`Column`: the one registration point of an
  attack family (threats, parameter rules, eps bounds, board columns; :mod:`attacks.family`)
* :class:`NoisePolicy`, :class:`Objective`, :class:`PolicyModel`, :func:`predict` (:mod:`attacks.core`)
"""
import benchmark.compat as _compat  # noqa: F401  (before torchvision)

from .core import NoisePolicy, Objective, PolicyModel, predict
from .family import Column, Family, register_family
from .presets import Attack, list_attacks, make_attack
from .pgd import pgd
from .stadv import stadv
from .autoattack import autoattack
from .cw import cw_l2

__all__ = ["Attack", "Column", "Family", "NoisePolicy", "Objective", "PolicyModel", "autoattack", "cw_l2", "list_attacks",
           "make_attack", "pgd", "predict", "register_family", "stadv"]
