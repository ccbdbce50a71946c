"""Published evaluation protocols (``configs/protocols/*.yaml``), applied onto a RunSpec.

A protocol fixes what a paper fixed: dataset, subset, threat, eps, the attacks and their
budgets, and the number of final forward passes. Explicit CLI flags still win, and
``--scale`` may shrink it for a CPU; the run record keeps protocol and scale, so a scaled
run is never mistaken for the published setting.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import load_config
from .errors import BenchError
from .resources import configs_dir, resolve_config_path

PROTOCOL_DIR = configs_dir("protocols")  # inside the installed package, not beside the checkout


@dataclass
class Protocol:
    name: str
    citation: str
    dataset: str = "cifar10"
    threat: str = "linf"
    eps: float | None = None
    subset: str | None = None
    source: str | None = None
    attacks: list[str] = field(default_factory=list)
    attack_overrides: dict[str, Any] = field(default_factory=dict)
    eval_repeats: int = 1
    defenses: list[str] = field(default_factory=list)
    claims: list[dict] = field(default_factory=list)
    notes: str = ""

    def validate(self) -> None:
        if not self.attacks:
            raise ValueError("a protocol needs at least one attack")
        if self.eps is not None and not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        for k, v in self.attack_overrides.items():
            if not isinstance(v, dict):
                raise ValueError(f"attack_overrides.{k} must be a mapping")


def protocol_names() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def load_protocol(name: str) -> Protocol:
    path = resolve_config_path(name) if name.endswith((".yaml", ".yml")) else PROTOCOL_DIR / f"{name}.yaml"
    try:
        present = path.exists()
    except OSError:  # a name too long for the file system, say
        present = False
    if not present:
        raise BenchError(f"unknown protocol {name!r}; known: {', '.join(protocol_names()) or 'none'}")
    return load_config(path, Protocol)


def apply_protocol(spec: Any, name: str, explicit: set[str] = frozenset()) -> Any:
    """The RunSpec with the protocol's settings, except for fields the user set explicitly."""
    p = load_protocol(name)
    upd: dict[str, Any] = {"protocol": p.name}
    for key, value in (("dataset", p.dataset), ("threat", p.threat), ("eps", p.eps), ("subset", p.subset),
                       ("attacks", list(p.attacks)), ("eval_repeats", p.eval_repeats)):
        if key not in explicit and value is not None:
            upd[key] = value
    if p.source and spec.source is None:
        upd["source"] = p.source
    upd["attack_overrides"] = {**p.attack_overrides, **spec.attack_overrides}
    return replace(spec, **upd)
