"""The one registration point of an attack family: :func:`register_family` with a :class:`Family`.

A family record carries everything the rest of the program asks about a family, so adding one
touches only the module that registers it (``attacks/presets.py`` for the built-in ones):

* ``fn`` and ``threats``: the attack function and the threats it supports (presets, ``bench list``);
* ``rules`` and ``eps_max``: its own parameter checks and eps bounds, which
  :func:`attacks.core.validate_params` applies;
* ``columns`` and ``column_of``: the leaderboard columns (key, display label, position) its stored
  records fall into and which one a record's parameters pick (``leaderboards.board.attack_family``,
  the board's labels and the family names ``leaderboards.published`` accepts).

This module is the floor of ``attacks`` (below :mod:`attacks.core`, which reads it): it imports
nothing from the package. The registry is filled at import time of :mod:`attacks.presets`, which
``import attacks`` (and so any ``attacks.*`` import) runs first.
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from torch import Tensor

from benchmark.errors import BenchError

# Arguments every family takes from the call, not from the preset.
CALL_ARGS = frozenset({"defense", "x", "y", "threat", "generator", "eval_noise", "return_flow"})

# A parameter check: ``rule(name, value)`` raises BenchError when the value is not allowed.
Rule = Callable[[str, Any], None]


@dataclass(frozen=True)
class Column:
    """A leaderboard column (an attack family as the board groups it): key, label, position."""

    key: str
    label: str
    rank: int = 500  # columns are shown by rank; "other" (1000) is last


OTHER = Column("other", "other", 1000)


@dataclass(frozen=True)
class Family:
    """An attack function, the threats it supports, its parameter rules and its board columns."""

    name: str
    fn: Callable[..., Tensor]
    threats: tuple[str, ...]
    columns: tuple[Column, ...] = ()
    column_of: Callable[[Mapping[str, Any]], str] | None = None  # params -> a column key
    rules: Mapping[str, Rule] = field(default_factory=dict)
    eps_max: Mapping[str, float] = field(default_factory=dict)  # threat -> largest eps (default: core's)

    @property
    def label(self) -> str:
        """The family's display label: its first column's."""
        return self.columns[0].label if self.columns else self.name

    def column(self, params: Mapping[str, Any]) -> str:
        """The leaderboard column of a stored attack of this family with ``params``."""
        if self.column_of is not None:
            return self.column_of(params)
        return self.columns[0].key if self.columns else OTHER.key

    def param_defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in sig.parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in CALL_ARGS}

    def param_types(self) -> dict[str, Any]:
        hints = typing.get_type_hints(self.fn)
        return {k: hints.get(k, Any) for k in self.param_defaults()}


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Register ``family`` (its name must be new; a column key shared with another family must
    carry the same label and rank, e.g. ``cw`` for the CW-L2 family and PGD on the CW loss)."""
    if family.name in FAMILIES and FAMILIES[family.name] is not family:
        raise ValueError(f"attack family {family.name!r} is registered twice")
    known = {c.key: c for f in FAMILIES.values() for c in f.columns}
    known[OTHER.key] = OTHER
    for c in family.columns:
        if c.key in known and known[c.key] != c:
            raise ValueError(f"board column {c.key!r} of family {family.name!r} differs from the registered "
                             f"{known[c.key]}")
    FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests that register a throwaway one)."""
    FAMILIES.pop(name, None)


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise BenchError(f"unknown attack family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None


def columns() -> list[Column]:
    """Every board column of the registered families, by rank, ``other`` last."""
    out: dict[str, Column] = {}
    for f in FAMILIES.values():
        for c in f.columns:
            out.setdefault(c.key, c)
    out.setdefault(OTHER.key, OTHER)
    return sorted(out.values(), key=lambda c: c.rank)


class ColumnLabels(Mapping[str, str]):
    """Column key -> display label, read from the registry at each use (a family registered
    later, e.g. by a plugin or a test, shows at once)."""

    def __getitem__(self, key: str) -> str:
        for c in columns():
            if c.key == key:
                return c.label
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter([c.key for c in columns()])

    def __len__(self) -> int:
        return len(columns())

    def __repr__(self) -> str:
        return f"ColumnLabels({dict(self)!r})"


LABELS = ColumnLabels()
