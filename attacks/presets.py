"""Named attack presets with their published budgets, and the uniform :class:`Attack` object.

``make_attack(name, threat=None, **overrides)`` returns an :class:`Attack`: a callable
``attack(defense, x, y, *, generator, eval_noise=None) -> x_adv`` that also carries its full
parameter dict (``attack.params``, ``attack.record()``) for run records. Presets are registered
with :func:`benchmark.registry.register_attack`; each entry's metadata holds the default threat,
the supported threats, the defaults (a value, or a ``{threat: value}`` mapping when it depends
on the threat) and the source of the published setting, for ``bench list attacks``.

A ``step_size`` default of None means eps/4 (eps for one step); an ``eps`` default per threat is
8/255 for L-inf and 0.5 for L2 unless a paper says otherwise.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from benchmark.errors import BenchError
from benchmark.registry import ATTACKS, register_attack
from benchmark.threats import DEFAULT_EPS
from defenses.base import Defense, Noise

from .autoattack import autoattack
from .core import NoisePolicy, check_threat, parse_number, validate_params
from .family import FAMILIES, Column, Family, register_family
from .cw import cw_l2
from .pgd import default_step_size, pgd
from .square import square
from .stadv import stadv


def policy_of(params: Mapping[str, Any]) -> NoisePolicy:
    """The noise policy of a stored attack; fresh for a record whose policy text does not parse
    (the board reads stored runs and shows them rather than failing on one odd record)."""
    try:
        return NoisePolicy.of(params)
    except BenchError:
        return NoisePolicy()


def _variants(base: str) -> Callable[[Mapping[str, Any]], str]:
    """The board column of a gradient attack: DW-box when the attacker knows fixed noise, CW for
    the margin loss, FGSM for one step, else ``base`` (FGSM, CW-L-inf and DW-box are PGD presets,
    but they answer different questions)."""
    def column(p: Mapping[str, Any]) -> str:
        if policy_of(p).fixes_any:
            return "dwbox"
        if p.get("loss") == "cw":
            return "cw"
        if p.get("steps") == 1:
            return "fgsm"
        return base
    return column


def _positive_int_or_none(key: str, v: Any) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
        raise BenchError(f"{key} must be a positive integer or None, got {v!r}")


def _autoattack_version(key: str, v: Any) -> None:
    if v not in ("standard", "rand"):
        raise BenchError(f"unknown AutoAttack version {v!r}; known: standard, rand")


def board_column(family: str | None, params: Mapping[str, Any]) -> str:
    """The leaderboard column of a stored attack (``family`` as recorded; an unregistered one,
    e.g. a plugin's, is classified like a gradient attack with ``other`` as its base)."""
    fam = FAMILIES.get(family) if isinstance(family, str) else None
    return fam.column(params) if fam is not None else _variants("other")(params)


_CW = Column("cw", "CW", 40)
register_family(Family("pgd", pgd, ("linf", "l2"),
                       columns=(Column("pgd", "PGD", 20), Column("fgsm", "FGSM", 30), _CW,
                                Column("dwbox", "DW-box", 60), Column("bpda", "BPDA+EOT", 70)),
                       column_of=_variants("pgd"), rules={"surrogate_steps": _positive_int_or_none}))
register_family(Family("stadv", stadv, ("stadv",), columns=(Column("stadv", "StAdv", 50),)))
register_family(Family("autoattack", autoattack, ("linf", "l2"), columns=(Column("autoattack", "AutoAttack", 10),),
                       rules={"version": _autoattack_version}))
register_family(Family("cw", cw_l2, ("l2",), columns=(_CW,)))
register_family(Family("square", square, ("linf", "l2"), column_of=_variants("other")))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """CLI overrides arrive as strings: turn them into the parameter's type."""
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null") and optional):
        if not optional:
            raise BenchError(f"{key}: a value is required")
        return None
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        raise BenchError(f"{key}: expected true/false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise BenchError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise BenchError(f"{key}: expected an integer, got {value!r}")
    if base is float:
        return parse_number(value, key)
    if base is str:
        if isinstance(value, NoisePolicy):
            return str(value)
        if not isinstance(value, str):
            raise BenchError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _for_threat(value: Any, threat: str) -> Any:
    if isinstance(value, Mapping):
        if threat not in value:
            raise BenchError(f"no default for threat {threat!r}; given for {', '.join(value)}")
        return value[threat]
    return value


@dataclass
class Attack:
    """A configured attack: ``attack(defense, x, y, *, generator, eval_noise=None) -> x_adv``.

    ``params`` is the complete parameter dict passed to the family function (besides threat,
    generator and eval_noise). ``policy`` is the parsed noise policy: the runner draws the
    evaluation noise first when :meth:`needs_eval_noise` and scores x_adv with
    :func:`attacks.core.predict` under the same policy.
    """

    name: str
    family: Family
    threat: str
    params: dict[str, Any]
    source: str = ""
    summary: str = ""

    @property
    def policy(self) -> NoisePolicy:
        return NoisePolicy.parse(self.params.get("noise_policy", "fresh"))

    @property
    def noise_policy(self) -> str:
        return str(self.policy)

    def needs_eval_noise(self, defense: Defense) -> bool:
        """True when the attack must be given the evaluation noise of ``defense``."""
        return defense.stochastic and bool(self.policy.fixed_names(defense))

    def __call__(self, defense: Defense, x: Tensor, y: Tensor, *, generator: torch.Generator | None,
                 eval_noise: Noise | None = None) -> Tensor:
        return self.family.fn(defense, x, y, threat=self.threat, generator=generator, eval_noise=eval_noise,
                              **self.params)

    def record(self) -> dict[str, Any]:
        """JSON-friendly description for run records."""
        return {"attack": self.name, "family": self.family.name, "threat": self.threat,
                "params": dict(self.params), "source": self.source}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Attack({self.name!r}, threat={self.threat!r}, {inner})"


def build_attack(name: str, family: str, *, threat: str | None, default_threat: str,
                 defaults: Mapping[str, Any], source: str = "", summary: str = "",
                 overrides: Mapping[str, Any] | None = None) -> Attack:
    """Resolve family defaults < preset defaults (per threat) < overrides, then validate."""
    fam = FAMILIES[family]
    threat = default_threat if threat is None else str(threat).lower()
    check_threat(threat, fam.threats)
    types = fam.param_types()
    params = dict(fam.param_defaults())
    for k, v in defaults.items():
        params[k] = _for_threat(v, threat)
    for k, v in (overrides or {}).items():
        if k in ("threat",):
            continue
        if k not in params:
            raise BenchError(f"attack {name!r} has no parameter {k!r}; parameters: {', '.join(sorted(params))}")
        params[k] = _coerce(k, v, types.get(k, Any))
    if "noise_policy" in params:
        params["noise_policy"] = str(NoisePolicy.parse(params["noise_policy"]))
    validate_params(threat, params, fam.threats, family=fam.name)
    if family == "pgd" and params.get("step_size") is None:
        params["step_size"] = default_step_size(float(params["eps"]), int(params["steps"]))
    return Attack(name, fam, threat, params, source, summary)


def _preset(name: str, family: str, *, threat: str, defaults: dict[str, Any], source: str, summary: str) -> None:
    fam = FAMILIES[family]
    default_threat = threat

    def factory(*, threat: str | None = None, **overrides: Any) -> Attack:
        return build_attack(name, family, threat=threat, default_threat=default_threat, defaults=defaults,
                            source=source, summary=summary, overrides=overrides)

    factory.__doc__ = summary
    factory.__name__ = f"make_{name}"
    register_attack(name, threat=threat, threats=fam.threats, family=family, defaults=dict(defaults),
                    source=source, summary=summary)(factory)


EPS = {t: DEFAULT_EPS[t] for t in ("linf", "l2")}  # the gradient attacks' threats

_preset("pgd", "pgd", threat="linf",
        defaults=dict(eps=EPS, steps=20, step_size={"linf": 2 / 255, "l2": None}, restarts=1, random_init=True,
                      loss="ce", noise_policy="fresh", grad_mode="exact"),
        source="Madry et al. 2018; AToP Table 7 (PGD-20, l-inf 8/255, step 2/255)",
        summary="PGD-20 with random start, cross-entropy")
_preset("pgd_eot", "pgd", threat="linf",
        defaults=dict(eps=EPS, steps=20, step_size={"linf": 2 / 255, "l2": None}, restarts=1, random_init=False,
                      loss="ce", noise_policy="eot:10", grad_mode="exact"),
        source="ADDT (OpenReview rebuttal Q1: PGD20+EoT10); step 2/255 and zero start as in the "
               "authors' attack scripts (LYMDLUT/ADDT Robustness_test)",
        summary="PGD-20 + EOT-10")
_preset("pgd200_eot20", "pgd", threat="linf",
        defaults=dict(eps=EPS, steps=200, step_size={"linf": 0.007, "l2": None}, restarts=1, random_init=False,
                      loss="ce", noise_policy="eot:20", grad_mode="exact"),
        source="Lee & Kim 2023 (PGD-200 + EOT-20, step 0.007), as requested in the ADDT reviews",
        summary="PGD-200 + EOT-20, step 0.007")
_preset("bpda_eot", "pgd", threat="linf",
        defaults=dict(eps=EPS, steps=50, step_size={"linf": 2 / 255, "l2": None}, restarts=1, random_init=False,
                      loss="ce", noise_policy="eot:15", grad_mode="bpda"),
        source="DiffPure (Nie et al. 2022) BPDA+EOT setting: 50 steps, step 2/255, EOT-15; "
               "BPDA of Athalye et al. 2018",
        summary="BPDA + EOT-15, 50 steps")
_preset("fgsm", "pgd", threat="linf",
        defaults=dict(eps=EPS, steps=1, step_size=None, restarts=1, random_init=False, loss="ce",
                      noise_policy="fresh", grad_mode="exact"),
        source="Goodfellow et al. 2015; AToP Tables 7 and 9 (l-inf 8/255)",
        summary="FGSM: one signed-gradient step of size eps")
_preset("cw100", "pgd", threat="linf",
        defaults=dict(eps=EPS, steps=100, step_size={"linf": 2 / 255, "l2": None}, restarts=1, random_init=True,
                      loss="cw", kappa=50.0, noise_policy="fresh", grad_mode="exact"),
        source="AToP Tables 7 and 9 (CW-100, l-inf 8/255): PGD on the CW margin loss (Carlini & Wagner "
               "2017; kappa 50 as in Madry et al.'s CIFAR-10 challenge)",
        summary="CW-L-inf: PGD-100 on the margin loss")
_preset("cw_l2", "cw", threat="l2",
        defaults=dict(eps=0.5, steps=100, c=1.0, kappa=0.0, lr=0.01, noise_policy="fresh", grad_mode="exact"),
        source="Carlini & Wagner 2017 via torchattacks.CW (c=1, kappa=0, lr=0.01; 100 steps); "
               "result projected onto the L2 ball",
        summary="CW-L2 (torchattacks), projected to eps")
_preset("autoattack_standard", "autoattack", threat="linf",
        defaults=dict(eps={"linf": 8 / 255, "l2": 0.5}, version="standard", steps=100, restarts=None,
                      noise_policy="fresh", grad_mode="exact", eval_iter=20, square_queries=5000),
        source="Croce & Hein 2020 (standard: APGD-CE, APGD-T, FAB-T, Square-5000); AToP Table 6",
        summary="AutoAttack standard (pyautoattack)")
_preset("autoattack_rand", "autoattack", threat="linf",
        defaults=dict(eps={"linf": 8 / 255, "l2": 0.5}, version="rand", steps=100, restarts=None,
                      noise_policy="eot:20", grad_mode="exact", eval_iter=20, square_queries=5000),
        source="Croce & Hein 2020 (rand: APGD-CE + APGD-DLR, EOT-20); repeated robustness check with "
               "eval_iter=20 as in the ADDT authors' auto-attack PR #105",
        summary="AutoAttack rand with EOT-20 (pyautoattack)")
_preset("square", "square", threat="linf",
        defaults=dict(eps={"linf": 8 / 255, "l2": 0.5}, square_queries=5000, p_init=0.8, restarts=1,
                      noise_policy="fresh", eval_iter=20),
        source="Andriushchenko et al. 2020 (Square, 5000 queries, p_init 0.8, as in AutoAttack standard); "
               "pyautoattack's SquareAttack. Gradient-free: added by the diagnostics when gradients are shattered",
        summary="Square attack, 5000 queries (gradient-free)")
_preset("stadv", "stadv", threat="stadv",
        defaults=dict(eps=0.05, steps=100, lr=0.01, tau=0.05, noise_policy="fresh", grad_mode="exact"),
        source="Xiao et al. 2018; settings of Laidlaw et al. 2021 (perceptual_advex StAdvAttack: bound 0.05, "
               "Adam lr 0.01, flow-loss weight 0.0025/bound) adopted by AToP Table 6",
        summary="StAdv flow attack, bound 0.05 (grid units)")
_preset("pgd_eot_surrogate", "pgd", threat="linf",
        defaults=dict(eps=EPS, steps=20, step_size={"linf": 2 / 255, "l2": None}, restarts=1, random_init=False,
                      loss="ce", noise_policy="eot:10", grad_mode="exact", surrogate_steps=10),
        source="Lee & Kim 2023 (surrogate process: gradients through fewer denoising steps than the defense "
               "purifies with; exact, checkpointed); PGD-20 + EOT-10 budget of ADDT",
        summary="PGD-20 + EOT-10, gradients through a 10-step surrogate of the purifier")
for _name, _policy, _what in (("dwbox_fwd", "fixed:forward+eot:10", "forward"),
                              ("dwbox_rev", "fixed:reverse+eot:10", "reverse"),
                              ("dwbox_both", "fixed:all+eot:10", "all")):
    _preset(_name, "pgd", threat="linf",
            defaults=dict(eps=EPS, steps=20, step_size={"linf": 2 / 255, "l2": None}, restarts=1, random_init=False,
                          loss="ce", noise_policy=_policy, grad_mode="exact"),
            source=f"ADDT DW-box (OpenReview rebuttal: DW_Fwd / DW_Rev / DW_Both) on PGD20+EoT10; "
                   f"attacker knows the evaluation's {_what} noise",
            summary=f"DW-box PGD-20+EOT-10, {_what} noise fixed")


def make_attack(name: str, threat: str | None = None, **overrides: Any) -> Attack:
    """The preset ``name`` for ``threat`` (None: the preset's), with parameter overrides."""
    return ATTACKS.create(name, threat=threat, **overrides)


def list_attacks() -> list[dict[str, Any]]:
    """One dict per registered attack: name, family, threats, defaults, source, summary."""
    out = []
    for e in ATTACKS:
        out.append({"name": e.name, **e.meta})
    return out
