"""The attack battery: which attacks a run gets, at what budget, on how many images.

One object owns the rules that ``run``, ``sweep`` and ``reproduce`` all apply, so they cannot
drift apart: the default battery per threat and its eps, the reduced scales (``smoke``, ``cpu``)
with a defense's own cut at a scale (:mod:`benchmark.scalecut`), the step/eps rule under an eps
override, the EOT cap, and the image limit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from attacks.core import NoisePolicy

from .errors import BenchError
from .threats import DEFAULT_EPS

if TYPE_CHECKING:
    from .runner import RunSpec

# The default battery per threat: (attack preset for deterministic defenses, for stochastic ones).
THREAT_DEFAULTS: dict[str, dict[str, Any]] = {
    "linf": {"eps": DEFAULT_EPS["linf"], "deterministic": ["autoattack_standard", "pgd"], "stochastic": ["autoattack_rand", "pgd_eot"]},
    "l2": {"eps": DEFAULT_EPS["l2"], "deterministic": ["autoattack_standard", "pgd"], "stochastic": ["autoattack_rand", "pgd_eot"]},
    "stadv": {"eps": DEFAULT_EPS["stadv"], "deterministic": ["stadv"], "stochastic": ["stadv"]},
}

# `--scale cpu`: what a 2-core CPU finishes in minutes. Every number it prints says so.
SCALES: dict[str, dict[str, Any]] = {
    "full": {},
    "cpu": {"n": 64, "steps": 10, "eot": 4, "eval_iter": 4, "autoattack_steps": 20},
    "smoke": {"n": 8, "steps": 2, "eot": 2, "eval_iter": 2, "autoattack_steps": 2},
}

# StAdv on a random defense averages this many draws per gradient unless told otherwise (as PGD-EOT)
STADV_STOCHASTIC_EOT = 10


@dataclass(frozen=True)
class Battery:
    """The battery rules; :data:`BATTERY` is the one in use."""

    threat_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: THREAT_DEFAULTS)
    scales: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: SCALES)

    # ------------------------------------------------------------------ defaults and limits
    def default_names(self, threat: str, stochastic: bool) -> list[str]:
        return list(self.threat_defaults[threat]["stochastic" if stochastic else "deterministic"])

    def default_eps(self, threat: str) -> float:
        return float(self.threat_defaults[threat]["eps"])

    def limits(self, spec: "RunSpec") -> dict[str, Any]:
        """The scale's limits with the defense's cut in force (stored as the record's ``scale_limits``)."""
        from .scalecut import scale_limits

        return scale_limits(spec)

    def apply_cut(self, spec: "RunSpec") -> "RunSpec":
        """The defense's declared options at this scale, where the user set none (in place)."""
        from .scalecut import apply_scale_cut

        return apply_scale_cut(spec)

    # ------------------------------------------------------------------ the budget rules
    @staticmethod
    def step_for_eps(ref_params: Mapping[str, Any], eps: float) -> float | None:
        """The step size at ``eps`` that keeps the preset's step/eps ratio (None: nothing to rescale).

        A fixed 2/255 step at eps 1/255 only jumps between the box's corners and under-attacks
        (standard, PGD-20, 64 images: 51.6% vs 45.3%)."""
        if ref_params.get("eps") and ref_params.get("step_size") is not None and float(ref_params["eps"]) != float(eps):
            return float(ref_params["step_size"]) * float(eps) / float(ref_params["eps"])
        return None

    @staticmethod
    def eot_policy(params: Mapping[str, Any], eot: int | None, cap: int | None) -> NoisePolicy | None:
        """The attack's noise policy with the run's EOT (``--eot``) or the scale's cap; None: unchanged."""
        policy = NoisePolicy.of(params)
        if policy.eot > 1:
            k = policy.eot
            return policy.with_eot(eot if eot is not None else (min(k, cap) if cap else k))
        if eot is not None and "noise_policy" in params and eot > 1:
            return policy.with_eot(eot)
        return None

    # ------------------------------------------------------------------ the attacks
    def attacks(self, spec: "RunSpec", stochastic: bool) -> list[Any]:
        """Attack objects for the run, with eps/steps/eot overrides and the scale applied."""
        from attacks import make_attack

        from .registry import ATTACKS

        names = spec.attacks if spec.attacks is not None else self.default_names(spec.threat, stochastic)
        scale = self.limits(spec)
        out = []
        for name in names:
            if name == "clean":
                continue
            ov: dict[str, Any] = dict(spec.attack_overrides.get(name, {}))
            preset = str(ov.pop("preset", name))  # a protocol may alias a preset, e.g. pgd1000 = pgd with steps 1000
            entry = ATTACKS.get(preset)
            family = entry.meta.get("family")
            threat = spec.threat
            if threat not in entry.meta.get("threats", (threat,)):
                raise BenchError(f"attack {name!r} does not support threat {threat!r} (it supports {', '.join(entry.meta.get('threats', ()))})")
            if stochastic and family == "stadv" and "noise_policy" not in ov:
                ov["noise_policy"] = NoisePolicy(eot=STADV_STOCHASTIC_EOT)
            eps = spec.eps if spec.eps is not None else ov.get("eps")
            if eps is None and threat != "stadv":
                eps = self.default_eps(threat)
            if eps is not None:
                ov["eps"] = eps
            user_step = "step_size" in ov
            base = make_attack(preset, threat, **ov)
            params = dict(base.params)
            if spec.eps is not None and not user_step and params.get("step_size") is not None:
                ref = make_attack(preset, threat, **{k: v for k, v in ov.items() if k != "eps"}).params
                step = self.step_for_eps(ref, spec.eps)
                if step is not None:
                    ov["step_size"] = step
            if spec.steps is not None and "steps" in params:
                ov["steps"] = spec.steps
            elif "steps" in params and scale.get("steps") and family != "autoattack":
                ov["steps"] = min(int(params["steps"]), scale["steps"]) if int(params["steps"]) > 1 else params["steps"]
            if family == "autoattack" and scale.get("autoattack_steps") and spec.steps is None:
                ov["steps"] = min(int(params.get("steps", 100)), scale["autoattack_steps"])
            if "eval_iter" in params and scale.get("eval_iter"):
                ov["eval_iter"] = min(int(params["eval_iter"]), scale["eval_iter"])
            if "square_queries" in params and scale.get("square_queries") and "square_queries" not in ov:
                ov["square_queries"] = min(int(params["square_queries"]), int(scale["square_queries"]))
            policy = self.eot_policy(params, spec.eot, scale.get("eot"))
            if policy is not None:
                ov["noise_policy"] = policy
            atk = make_attack(preset, threat, **ov)
            out.append(dataclasses.replace(atk, name=name) if name != preset else atk)
        return out

    # ------------------------------------------------------------------ the images
    def evalset(self, spec: "RunSpec", *, cut_given_subset: bool = False, n: int | None = None) -> tuple[Any, str | None]:
        """The images of a run and a note when the scale (or ``n``) cut them.

        With no subset the scale's first n are taken and recorded in ``spec.subset`` (``first:n``).
        A given subset is kept whole unless ``cut_given_subset`` (``reproduce`` at a reduced
        scale): then its first n are taken and the evaluation set's label says so (``...[:n]``).
        ``n`` (``reproduce --n``) replaces the scale's limit and always cuts a given subset; more
        images than the subset has is an error. The first n of ``first:K`` are read as ``first:n``,
        so a source smaller than K (the embedded 1,000) still serves them."""
        from .data import load_eval_set
        from .data.subsets import parse_subset

        self.apply_cut(spec)  # the defense's declared cut at this scale (recorded in scale_limits)
        n_limit = n or self.limits(spec).get("n")
        if spec.subset is None:
            evalset = load_eval_set(spec.dataset, None, source=spec.source, root=spec.data_root)
            if not n_limit or len(evalset) <= n_limit:
                return evalset, None
            spec.subset = f"first:{n_limit}"  # recorded: the table and record name the subset used
            return load_eval_set(spec.dataset, spec.subset, source=spec.source, root=spec.data_root), None
        if not n_limit or not (cut_given_subset or n):
            return load_eval_set(spec.dataset, spec.subset, source=spec.source, root=spec.data_root), None
        sub = parse_subset(spec.subset)
        total = sub.count if sub.kind == "first" and sub.count is not None else None
        if n and total is not None and n > total:  # before loading: first:K may be larger than the source
            raise BenchError(f"--n {n}: the protocol's subset {sub.spec} has only {total} images")
        if total is not None:
            evalset = load_eval_set(spec.dataset, f"first:{min(n_limit, sub.count)}", source=spec.source,
                                    root=spec.data_root)
            label = sub.spec
            evalset = dataclasses.replace(evalset, subset=label)
        else:
            evalset = load_eval_set(spec.dataset, spec.subset, source=spec.source, root=spec.data_root)
            total, label = len(evalset), evalset.subset
            if n and n > total:
                raise BenchError(f"--n {n}: the protocol's subset {label} has only {total} images")
        if len(evalset) <= n_limit and total <= n_limit:
            return evalset, None
        why = f"--n {n}" if n else f"scale {spec.scale}"
        note = (f"{why}: evaluating the first {n_limit} of the protocol's {total} images ({label})"
                + ("" if n else "; the published setting is scale full"))
        cut = dataclasses.replace(evalset, images=evalset.images[:n_limit], labels=evalset.labels[:n_limit],
                                  ids=evalset.ids[:n_limit], subset=f"{label}[:{n_limit}]")
        return cut, note


BATTERY = Battery()
