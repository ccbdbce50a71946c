"""YAML configs mapped onto dataclasses, with errors that name the bad key.

A config file is plain YAML. ``load_config(path, Cls)`` parses it and builds ``Cls``;
nested dataclass fields are built recursively. An unknown key, a wrong type or a value
that fails the dataclass's ``validate()`` becomes a BenchError naming the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import BenchError
from .resources import resolve_config_path

T = TypeVar("T")


# What one YAML document may expand to, counting every alias as a copy of its anchor: the
# shipped configs have a few hundred nodes; an alias bomb (a "billion laughs") has billions and
# would take minutes and gigabytes before failing, so it is refused before it is constructed.
MAX_YAML_NODES = 100_000


def _expanded_size(root: Any, where: str, limit: int) -> int:
    """Nodes in the document tree ``root`` once every alias is expanded (memoized, iterative)."""
    size: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            kids = node.value if isinstance(node, yaml.SequenceNode) else \
                [n for kv in node.value for n in kv] if isinstance(node, yaml.MappingNode) else []
            size[key] = 1 + sum(size[id(k)] for k in kids)
            if size[key] > limit:
                raise BenchError(f"{where}: the YAML expands to more than {limit:,} nodes (aliases counted as "
                                 "copies); refusing it (an alias bomb?)")
            continue
        if key in size:
            continue
        if key in active:
            raise BenchError(f"{where}: the YAML refers to itself through an alias (recursive anchor)")
        active.add(key)
        stack.append((node, True))
        kids = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for kv in node.value for n in kv] if isinstance(node, yaml.MappingNode) else []
        stack.extend((k, False) for k in kids if id(k) not in size)
    return size[id(root)]


def load_yaml_text(text: str, where: str, *, max_nodes: int = MAX_YAML_NODES) -> Any:
    """``yaml.safe_load`` of ``text``, refusing documents that expand past ``max_nodes``.

    The one YAML loader of the tool (configs, protocols, baselines, published tables, ``--set``
    values): python tags are refused by the safe loader, aliases are bounded here, and every
    failure is a BenchError naming ``where``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where, max_nodes)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # both wordings: "bad YAML in" (configs) and "not valid YAML" (baselines) are what users grep for
        raise BenchError(f"bad YAML in {where}{at} (not valid YAML): "
                         f"{getattr(e, 'problem', None) or str(e).splitlines()[0]}") from None
    except RecursionError:
        raise BenchError(f"{where}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The YAML document in ``path`` (UTF-8, bounded; see :func:`load_yaml_text`)."""
    from .safe_io import read_text

    p = resolve_config_path(path)  # configs/... also from outside the checkout
    if not p.exists():
        raise BenchError(f"{what} not found: {p}")
    return load_yaml_text(read_text(p, what), str(p))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except BenchError as e:
                errors.append(str(e))
        raise BenchError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BenchError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise BenchError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return (tuple if (origin or tp) is tuple else list)(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise BenchError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BenchError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise BenchError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BenchError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise BenchError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise BenchError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error naming the allowed ones."""
    if not isinstance(data, dict):
        raise BenchError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise BenchError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    if "seed" in kwargs and hints.get("seed") is int:  # every config's seed: the one range of benchmark.seeds
        from .seeds import check_seed

        check_seed(kwargs["seed"], f"{where}.seed")
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise BenchError(f"{where}: missing required key {missing[0]!r}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except (ValueError, AssertionError) as e:
            raise BenchError(f"{where}: {e}") from None
    return obj


def load_config(path: str | Path, cls: type[T]) -> T:
    data = read_yaml(path)
    if data is None:
        data = {}
    return from_dict(cls, data, where=str(path))


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def config_hash(obj: Any) -> str:
    """A stable sha256 of a config (dataclass or plain data), for run records."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
