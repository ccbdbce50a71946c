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
    # factory keywords a paper fixed for a defense, e.g. ADDT's evaluation {addt: {variance: fixed_large}}
    defense_options: dict[str, Any] = field(default_factory=dict)
    # further single-threat runs of every defense, e.g. {stadv: {attacks: [stadv]}}: each is its own run
    # (its own record, board table and worst case), named DEFENSE@THREAT in the claims
    extra_threats: dict[str, Any] = field(default_factory=dict)
    # a reduced scale's cut per defense, over the defense's own (benchmark.scalecut), e.g.
    # {cpu: {diffpure: {defense_options: {steps: 10}}}} where the paper's settings need more steps
    scale_cuts: dict[str, Any] = field(default_factory=dict)
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
        for k, v in self.defense_options.items():
            if not isinstance(v, dict):
                raise ValueError(f"defense_options.{k} must be a mapping of factory keywords")
        for k, v in self.extra_threats.items():
            if k == self.threat:
                raise ValueError(f"extra_threats.{k} is the protocol's own threat")
            if not isinstance(v, dict) or set(v) - {"attacks", "eps"} or not v.get("attacks"):
                raise ValueError(f"extra_threats.{k} must be a mapping with 'attacks' (a list) and optionally 'eps'")
            if not isinstance(v["attacks"], list) or not all(isinstance(a, str) for a in v["attacks"]):
                raise ValueError(f"extra_threats.{k}.attacks must be a list of attack names")
            clash = sorted(set(v["attacks"]) & set(self.attacks))
            if clash:
                raise ValueError(f"extra_threats.{k}: attack name(s) {', '.join(clash)} also in the protocol's "
                                 "attacks; give each threat's attacks their own names")
            if v.get("eps") is not None and not 0 < float(v["eps"]) <= 1:
                raise ValueError(f"extra_threats.{k}.eps must be in (0, 1], got {v['eps']}")

        self._validate_scale_cuts()

    def _validate_scale_cuts(self) -> None:
        from .battery import SCALES

        keys = {"n", "defense_options", "square_queries"} | {k for lim in SCALES.values() for k in lim}
        for scale, per in self.scale_cuts.items():
            if scale not in SCALES or scale == "full":
                raise ValueError(f"scale_cuts.{scale}: not a reduced scale; known: "
                                 f"{', '.join(s for s in SCALES if s != 'full')}")
            if not isinstance(per, dict):
                raise ValueError(f"scale_cuts.{scale} must map defense names to cuts")
            for d, cut in per.items():
                if d not in self.defenses:
                    raise ValueError(f"scale_cuts.{scale}.{d}: not one of the protocol's defenses")
                if not isinstance(cut, dict) or set(cut) - keys:
                    raise ValueError(f"scale_cuts.{scale}.{d} must be a mapping with keys from "
                                     f"{', '.join(sorted(keys))}")
                if not isinstance(cut.get("defense_options", {}), dict):
                    raise ValueError(f"scale_cuts.{scale}.{d}.defense_options must be a mapping")
                for k, v in cut.items():
                    if k != "defense_options" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                        raise ValueError(f"scale_cuts.{scale}.{d}.{k} must be a positive integer, got {v!r}")

    def attacks_of(self, threat: str | None = None) -> list[str]:
        """The attacks of the protocol's own threat (None) or of one of its extra threats."""
        return list(self.attacks) if threat is None else list(self.extra_threats[threat]["attacks"])

    def all_attacks(self) -> list[str]:
        """Every attack name the protocol runs, over its own and its extra threats."""
        return [a for t, _ in self.runs() for a in self.attacks_of(t)]

    def runs(self) -> list[tuple[str | None, str]]:
        """(extra threat or None for the protocol's own, the suffix of its outcome name)."""
        return [(None, "")] + [(t, f"@{t}") for t in self.extra_threats]


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


def apply_protocol(spec: Any, name: str, explicit: set[str] = frozenset(), threat: str | None = None) -> Any:
    """The RunSpec with the protocol's settings, except for fields the user set explicitly.

    ``threat``: one of the protocol's ``extra_threats`` (its attacks and eps instead of the
    protocol's own). The protocol's ``defense_options`` for ``spec.defense`` go under the user's;
    its ``scale_cuts`` entry for ``spec.scale`` and ``spec.defense`` becomes ``spec.protocol_cut``."""
    p = load_protocol(name)
    threat_name, eps = p.threat, p.eps
    if threat is not None:
        if threat not in p.extra_threats:
            raise BenchError(f"protocol {p.name} has no extra threat {threat!r}; it has "
                             f"{', '.join(p.extra_threats) or 'none'}")
        threat_name, eps = threat, p.extra_threats[threat].get("eps")
    attacks = p.attacks_of(threat)
    upd: dict[str, Any] = {"protocol": p.name}
    for key, value in (("dataset", p.dataset), ("threat", threat_name), ("eps", eps), ("subset", p.subset),
                       ("attacks", attacks), ("eval_repeats", p.eval_repeats)):
        if key not in explicit and value is not None:
            upd[key] = value
    if threat is not None and "eps" not in explicit and eps is None:
        upd["eps"] = None  # the extra threat's own default eps, not the protocol's
    if p.source and spec.source is None:
        upd["source"] = p.source
    upd["attack_overrides"] = {**p.attack_overrides, **spec.attack_overrides}
    opts = p.defense_options.get(spec.defense) or {}
    if opts:
        upd["defense_options"] = {**opts, **spec.defense_options}
    cut = (p.scale_cuts.get(spec.scale) or {}).get(spec.defense)
    upd["protocol_cut"] = dict(cut or {})
    return replace(spec, **upd)
