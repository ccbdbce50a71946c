"""Name -> factory registries (in the spirit of timm's ``register_model``).

Every public thing a user can name on the command line (defense, classifier, attack,
dataset) is registered here by a decorator at import time of its module. Unknown names
raise a BenchError listing the known ones, so the CLI can print one clear line.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import BenchError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        return (self.factory.__doc__ or "").strip().splitlines()[0] if self.factory.__doc__ else ""


class Registry(Generic[F]):
    """A named collection of factories with helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **meta: Any) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._entries and self._entries[name].factory is not fn:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, fn, dict(meta))
            return fn

        return deco

    def add(self, name: str, factory: Callable[..., Any], **meta: Any) -> None:
        self.register(name, **meta)(factory)  # type: ignore[arg-type]

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            known = ", ".join(sorted(self._entries)) or "none"
            raise BenchError(f"unknown {self.kind} {name!r}{hint}; known: {known}") from None

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).factory(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)


DEFENSES: Registry = Registry("defense")
CLASSIFIERS: Registry = Registry("classifier")
ATTACKS: Registry = Registry("attack")
DATASETS: Registry = Registry("dataset")


def register_defense(name: str, **meta: Any) -> Callable[[F], F]:
    """Register ``factory(*, dataset, device, **cfg) -> Defense`` under ``name``."""
    return DEFENSES.register(name, **meta)


def register_classifier(name: str, **meta: Any) -> Callable[[F], F]:
    """Register ``factory(*, device) -> nn.Module`` ([0,1] images -> logits)."""
    return CLASSIFIERS.register(name, **meta)


def register_attack(name: str, **meta: Any) -> Callable[[F], F]:
    return ATTACKS.register(name, **meta)


def register_dataset(name: str, **meta: Any) -> Callable[[F], F]:
    return DATASETS.register(name, **meta)


_BUILTIN_PACKAGES = ("defenses", "attacks")
_LOADED: dict[str, bool] = {}


def load_builtins() -> None:
    """Import every module of the ``defenses`` and ``attacks`` packages so their
    ``@register_*`` decorators run. Modules whose names start with ``_`` are skipped."""
    import importlib
    import pkgutil

    if _LOADED.get("done"):
        return
    for pkg_name in _BUILTIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")
    _LOADED["done"] = True
