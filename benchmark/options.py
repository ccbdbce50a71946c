"""Typed checking of a factory's options (``--defense-opt KEY=VALUE``), read from its signature.

A defense factory (or a plugin's callable) declares its options as keyword parameters with
annotations or defaults; :func:`option_schema` reads them with ``inspect.signature``, and
:func:`check_options` turns a bad key or a value of the wrong type into one error line that
lists every option with its type, before the factory runs (a factory would otherwise fail
deep inside with ``could not convert string to float``).
"""
from __future__ import annotations

import inspect
import math
import types
import typing
from pathlib import PurePath
from typing import Any, Callable

from .errors import BenchError

# keywords the tool passes itself, never options
_RESERVED = frozenset({"dataset", "device", "name"})
_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}


def _types_of(annotation: Any, default: Any) -> tuple[type, ...] | None:
    """The plain types an option accepts (None: anything, e.g. no annotation and no default)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        if default is inspect.Parameter.empty or default is None:
            return None
        return (type(default),) if type(default) in _NAMES else None
    origin = typing.get_origin(annotation)
    members = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    out: list[type] = []
    for m in members:
        if m is type(None):
            continue
        if isinstance(m, type) and issubclass(m, PurePath):
            m = str
        if m not in _NAMES:
            return None  # a type the command line cannot spell (a module, a device): not checked here
        out.append(m)
    return tuple(out) or None


def option_schema(factory: Callable[..., Any]) -> dict[str, tuple[type, ...] | None] | None:
    """{option: accepted types} from ``factory``'s keyword parameters; None when the factory
    names no options and takes ``**kwargs`` (it checks them itself)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    schema: dict[str, tuple[type, ...] | None] = {}
    has_var_kw = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            has_var_kw = True
        elif p.name not in _RESERVED and (p.kind is p.KEYWORD_ONLY or
                                          (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)):
            schema[p.name] = _types_of(hints.get(p.name, p.annotation), p.default)
    if not schema and has_var_kw:
        return None
    return schema


def describe(schema: dict[str, tuple[type, ...] | None]) -> str:
    """``steps:int, t_star:float, ...`` (sorted), for error messages and help."""
    if not schema:
        return "none"
    return ", ".join(f"{k}:{'|'.join(_NAMES[t] for t in v) if v else 'any'}" for k, v in sorted(schema.items()))


def _fits(value: Any, accepted: tuple[type, ...]) -> Any:
    """``value`` converted to the first accepted type it fits, or raises ValueError."""
    if value is None:
        return None  # ``KEY=null``: the factory's default
    for t in accepted:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                continue
            return float(value)
        if t is str and isinstance(value, str):
            return value
    raise ValueError


def check_options(label: str, factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``factory``'s signature (converted where exact: 1 -> 1.0 for a
    float); a BenchError naming ``label`` (e.g. ``defense 'diffpure'``) and the allowed options."""
    schema = option_schema(factory)
    if schema is None or not options:
        return dict(options)
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in schema:
            raise BenchError(f"{label}: unknown option {key!r}; options: {describe(schema)}")
        accepted = schema[key]
        if accepted is None:
            out[key] = value
            continue
        try:
            out[key] = _fits(value, accepted)
        except ValueError:
            nonfinite = isinstance(value, float) and not math.isfinite(value)
            kinds = " or ".join("an int" if t is int else "a finite float" if t is float and nonfinite
                                else f"a {_NAMES[t]}" for t in accepted)
            raise BenchError(f"{label}: option {key} must be {kinds} (got {value!r}); "
                             f"options: {describe(schema)}") from None
    return out
