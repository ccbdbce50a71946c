"""The threat vocabulary, in one place: names, default budgets, eps parsing and formatting.

Every layer reads it from here (attacks' validation, the run's default battery, the published
tables, the board, the report, the CLI), so a threat's default eps or the way ``8/255`` is
read and printed cannot differ between them.
"""
from __future__ import annotations

from typing import Any

from .errors import BenchError

THREATS: tuple[str, ...] = ("linf", "l2", "stadv")

# the published default budget of each threat (AToP, DiffPure, RobustBench: l-inf 8/255, l2 0.5;
# StAdv's flow budget 0.05, Xiao et al. 2018)
DEFAULT_EPS: dict[str, float] = {"linf": 8 / 255, "l2": 0.5, "stadv": 0.05}


def parse_fraction(text: str) -> float:
    """``"8/255"`` or ``"0.5"`` -> float; ValueError/ZeroDivisionError if it is neither (callers word the error)."""
    if "/" in text:
        a, b = text.split("/", 1)
        return float(a) / float(b)
    return float(text)


def parse_eps(value: Any, where: str) -> float:
    """A number or a fraction such as ``8/255`` -> float in (0, 1]; BenchError naming ``where``."""
    try:
        if isinstance(value, bool):
            raise ValueError
        eps = parse_fraction(value) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise BenchError(f"{where}: eps must be a number or a fraction like 8/255, got {value!r}") from None
    if not 0 < eps <= 1:
        raise BenchError(f"{where}: eps must be in (0, 1], got {value!r}")
    return eps


def eps_text(eps: float | None, threat: str) -> str:
    """How eps is printed everywhere: ``8/255`` for a whole number of l-inf 255ths, else ``%g``."""
    if eps is None:
        return "?"
    k = eps * 255
    if threat == "linf" and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"
