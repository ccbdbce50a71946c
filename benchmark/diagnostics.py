"""Attack-failure indicators: after each run, a short list of flags saying where the attack may have failed.

A robust-accuracy number is only as good as the attack behind it. These checks look for the
classic ways an attack fails silently (Athalye et al. 2018; Carlini et al. 2019; Tramer et al.
2020) and say so in the run's summary, its printed table and the leaderboard. Each flag has a
stable id, a one-line reason with the measured numbers, and an entry in ``docs/FLAGS.md``
(anchor = id) on what to do about it.

Two stages, both deterministic given the spec (seeds from ``benchmark.seeds``; torch's global
RNG forked and reseeded), so a resumed or sharded run stores the same record and summary:

* :func:`battery_probe`, before the run, on the first ``PROBE_N`` images: input gradients of
  the margin and cross-entropy losses. Shattered gradients make the *default* battery grow by
  what breaks them (Square, gradient-free, at its full budget, and a BPDA PGD when the defense
  has a declared purification stage); the probe and the added attacks are part of the record
  (and its hash), so every resume attacks with the same battery.
* :func:`diagnose`, after the run, reuses the stored per-sample rows (gradient-free vs gradient
  attacks, BPDA vs exact, repeated evaluation passes) and probes a seeded sample of at most
  ``SAMPLE_N`` survivors: the run's PGD again (loss before/after), at twice the EOT draws (a
  stochastic defense) or twice the steps (a deterministic one), and at a very large budget, plus repeated passes on a stochastic defense.

Images whose logits do not depend on the input (a constant classifier) are left out of the
gradient, loss and large-budget checks: such a model is robust at any budget and nothing
failed. ``bench run --no-diagnostics`` turns all of this off (recorded and hashed).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .seeds import derive_seed, generator

DOC = "docs/FLAGS.md"
PROBE_N = 8  # images in the pre-run gradient probe
SAMPLE_N = 8  # survivors in the post-run probes
BIG_EPS = {"linf": 64 / 255, "l2": 4.0}  # "very large budget"
THRESHOLDS: dict[str, float] = {
    "shattered_share": 0.25,  # share of probed input-dependent images with zero/NaN/inf margin gradient
    "saturated_share": 0.25,  # share with a zero/non-finite CE gradient but a healthy margin gradient
    "silent_share": 0.5,  # share of standing survivors whose loss did not rise
    "silent_rel_tol": 1e-3,  # "rose": by more than 0.1% of |initial loss| (and 1e-6): beyond rounding
    "row_min_images": 2,  # row-based flags: at least this many images ...
    "row_share": 0.05,  # ... and this share of the attacked images
    "under_min_images": 2,  # 2x budget breaks at least this many more sampled survivors ...
    "under_share": 0.25,  # ... and this share of the sample
    "big_share": 0.10,  # accuracy at the large budget above this is "not about 0%"
    "split_minority": 0.25,  # passes are split when the minority labels hold >= 25% of them
    "split_share": 0.25,  # flag when this share of the checked images has split passes
}
SPLIT_PASSES = 8  # evaluation passes of the pass-disagreement probe

FLAG_IDS = ("shattered-gradients", "saturated-logits", "silent-failure", "gradient-masking", "bpda-beats-exact",
            "under-attacked", "large-budget-not-zero", "pass-disagreement")


def flag(fid: str, reason: str) -> dict[str, str]:
    assert fid in FLAG_IDS, fid
    return {"id": fid, "reason": reason, "doc": f"{DOC}#{fid}"}


def _share(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f}%)" if n else "0/0"


def _num(v: float) -> float | None:
    v = float(v)
    return round(v, 6) if math.isfinite(v) else None


# ------------------------------------------------------------------ measurements
def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - z_j for the single runner-up j (ties broken by index): unlike a max, whose gradient
    splits over tied runners-up and can cancel exactly, this is zero only when the logits' is."""
    j = logits.detach().scatter(1, y[:, None], float("-inf")).argmax(1, keepdim=True)
    return logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, j).squeeze(1)


def _forward(defense: Any, x: Tensor, seed: int, dev: torch.device) -> Tensor:
    """Logits with one noise draw from ``seed`` (the global RNG reseeded too, for opaque modules)."""
    torch.manual_seed(seed)
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    return defense(x, defense.sample_noise(x.detach(), g))


@torch.no_grad()
def input_dependent(defense: Any, x: Tensor, seed: int, threat: str, l0: Tensor | None = None) -> Tensor:
    """Per image: do its logits change at a random point of the large ball (same noise draw)?

    False only for a model that ignores its input there (e.g. a constant classifier). ``l0``:
    the logits at ``x`` under ``seed`` when already computed."""
    dev = x.device
    l0 = _forward(defense, x, seed, dev).float() if l0 is None else l0
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, "points"))
    eps = BIG_EPS.get(threat, BIG_EPS["linf"])
    r = (torch.rand(x.shape, generator=g) * 2 - 1).to(dev, x.dtype)
    if threat == "l2":
        r = r / r.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (x.dim() - 1))) * eps
    else:
        r = r * eps
    l1 = _forward(defense, (x + r).clamp(0, 1), seed, dev).float()
    tol = 1e-6 * (1 + l0.abs().amax(1))
    return (l1 - l0).abs().amax(1) > tol


def gradient_health(defense: Any, x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(margin gradient bad, CE gradient bad, logits) per image, from one forward and one backward
    pass: bad = all zero, any NaN/inf, or no gradient at all. The CE gradient is J^T (softmax - onehot),
    so it is bad when that logit-space vector is below 1e-12 (a saturated softmax: the true class's
    probability rounds to 1 in fp32) or the
    margin gradient (J^T of another vector) already is."""
    n = x.shape[0]
    xi = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        lg = _forward(defense, xi, seed, x.device).float()
        try:
            (g,) = torch.autograd.grad((-_margin(lg, y)).sum(), xi, allow_unused=True)
        except RuntimeError:  # the output does not depend differentiably on the input
            g = None
    if g is None:
        mbad = torch.ones(n, dtype=torch.bool, device=x.device)
    else:
        flat = g.detach().flatten(1)
        mbad = ~torch.isfinite(flat).all(1) | (flat.abs().amax(1) == 0)
    lg = lg.detach()
    v = torch.softmax(lg, 1) - F.one_hot(y, lg.shape[1]).float()
    cbad = mbad | ~torch.isfinite(v).all(1) | (v.abs().amax(1) < 1e-12)
    return mbad, cbad, lg


# ------------------------------------------------------------------ before the run
@dataclass
class BatteryProbe:
    record: dict[str, Any]  # goes into record.json (hashed)
    extra: list[Any]  # attacks added to the battery
    seconds: float
    flags: list[dict[str, str]]


def battery_probe(spec: Any, defense: Any, evalset: Any, device: torch.device, attacks: list[Any]) -> BatteryProbe:
    """The pre-run gradient probe and the attacks it adds to the default battery (see module doc)."""
    if not spec.diagnostics:
        return BatteryProbe({"enabled": False}, [], 0.0, [])
    t0 = time.perf_counter()
    hi = min(len(evalset), PROBE_N)
    x, y = evalset.images[:hi].to(device), evalset.labels[:hi].to(device)
    seed = derive_seed(spec.seed, "diagnostics-probe")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        mbad, cbad, l0 = gradient_health(defense, x, y, seed)
        dep = input_dependent(defense, x, seed, spec.threat, l0)
    nd = int(dep.sum())
    n_sh = int((mbad & dep).sum())
    n_sat = int((cbad & ~mbad & dep).sum())
    shattered = nd > 0 and n_sh / nd >= THRESHOLDS["shattered_share"]
    saturated = nd > 0 and n_sat / nd >= THRESHOLDS["saturated_share"]
    names: list[str] = []
    ov: dict[str, dict[str, Any]] = {}
    if shattered and spec.attacks is None and spec.threat in ("linf", "l2"):
        have = {a.name for a in attacks}
        if "square" not in have and not any(a.family.name == "square" for a in attacks):
            names.append("square")
        if getattr(defense, "has_purifier", False):
            bp = "bpda_eot" if defense.stochastic else "pgd_bpda"
            if bp not in have:
                names.append(bp)
                if bp == "pgd_bpda":
                    ov[bp] = {"preset": "pgd", "grad_mode": "bpda"}
    extra: list[Any] = []
    if names:
        from .runner import build_attacks

        extra = build_attacks(dataclasses.replace(spec, attacks=names, attack_overrides=ov), defense.stochastic)
    rec = {"enabled": True, "probe_ids": [str(i) for i in evalset.ids[:hi]], "input_dependent": nd,
           "zero_or_nonfinite_margin_grad": n_sh, "zero_or_nonfinite_ce_grad_only": n_sat,
           "shattered": bool(shattered), "saturated": bool(saturated), "added_attacks": [a.name for a in extra]}
    flags = []
    if shattered:
        added = (f"; the battery adds {', '.join(rec['added_attacks'])}" if extra else
                 "; nothing added (explicit --attacks or non-Lp threat): add square or a BPDA attack")
        flags.append(flag("shattered-gradients", f"input gradient of the margin loss is zero, NaN or inf on "
                          f"{_share(n_sh, nd)} probed images{added}"))
    if saturated:
        flags.append(flag("saturated-logits", f"cross-entropy gradient vanishes (saturated softmax) while the "
                          f"margin gradient does not on {_share(n_sat, nd)} probed images: CE-only attacks fail "
                          "here; scale-invariant losses (DLR, margin) do not"))
    return BatteryProbe(rec, extra, time.perf_counter() - t0, flags)


# ------------------------------------------------------------------ after the run
def _majority(preds: list[int], label: int) -> bool:
    return sum(p == label for p in preds) * 2 > len(preds)


def _gradient_free(a: dict[str, Any]) -> bool:
    return a.get("family") == "square"


def _exact_gradient(a: dict[str, Any]) -> bool:
    p = a.get("params", {})
    if a.get("family") == "autoattack":
        return p.get("version") == "rand" and p.get("grad_mode", "exact") == "exact"  # APGD only
    return a.get("family") in ("pgd", "cw", "stadv") and p.get("grad_mode", "exact") == "exact"


def _bpda(a: dict[str, Any]) -> bool:
    return a.get("params", {}).get("grad_mode") == "bpda"


def _split(preds: list[int]) -> bool:
    if len(preds) < 2:
        return False
    top = max(preds.count(p) for p in set(preds))
    return (len(preds) - top) / len(preds) >= THRESHOLDS["split_minority"]


def row_flags(rows: list[dict[str, Any]], record: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Flags read off the stored rows alone: gradient masking, BPDA beating exact gradients, split passes."""
    atks = record.get("attacks", [])
    attacked = [r for r in rows if atks and all(r.get(a["attack"], {}).get("preds") for a in atks)]
    na = len(attacked)
    stochastic = bool(record.get("stochastic"))
    need = lambda k: k >= THRESHOLDS["row_min_images"] and na and k / na >= THRESHOLDS["row_share"]  # noqa: E731

    def broken(r: dict[str, Any], a: dict[str, Any]) -> bool:
        return not _majority(r[a["attack"]]["preds"], r["label"])

    out: dict[str, Any] = {"attacked": na}
    flags = []
    for key, fid, group_b, what in (("masking", "gradient-masking", _gradient_free, "gradient-free"),
                                    ("bpda", "bpda-beats-exact", _bpda, "BPDA")):
        b = [a for a in atks if group_b(a)]
        ex = [a for a in atks if _exact_gradient(a)]
        if not b or not ex:
            continue
        k = sum(1 for r in attacked if any(broken(r, a) for a in b) and not any(broken(r, a) for a in ex))
        out[key] = {"broken_only_by": [a["attack"] for a in b], "vs": [a["attack"] for a in ex], "images": k}
        if need(k):
            flags.append(flag(fid, f"{what} attack(s) {', '.join(a['attack'] for a in b)} broke {_share(k, na)} "
                              f"attacked images that every exact-gradient attack ({', '.join(a['attack'] for a in ex)}) "
                              "left standing"))
    k_rep = int(record.get("eval_repeats", 1))
    if stochastic and k_rep >= 2 and na:
        s = sum(1 for r in attacked if _split(r["clean"]) or any(_split(r[a["attack"]]["preds"]) for a in atks))
        out["split_stored"] = {"images": s, "of": na, "passes": k_rep}
        if s / na >= THRESHOLDS["split_share"]:
            flags.append(flag("pass-disagreement", f"the {k_rep} stored evaluation passes split (minority >= 25%) on "
                              f"{_share(s, na)} attacked images: the majority verdict is unstable"))
    return out, flags


def _reference_attack(spec: Any, attacks: list[Any], stochastic: bool) -> Any | None:
    """The run's PGD (exact gradients, noise not fixed), or the scale's default PGD(-EOT)."""
    for a in attacks:
        p = a.params
        if (a.family.name == "pgd" and p.get("grad_mode") == "exact" and not a.policy.fixes_any
                and p.get("surrogate_steps") is None and int(p.get("steps", 1)) > 1):
            return a
    if spec.threat not in ("linf", "l2"):
        return None
    from .runner import build_attacks

    name = "pgd_eot" if stochastic else "pgd"
    return build_attacks(dataclasses.replace(spec, attacks=[name], attack_overrides={}), stochastic)[0]


def _with(atk: Any, **params: Any) -> Any:
    return dataclasses.replace(atk, params={**atk.params, **params})


def _doubled(atk: Any, stochastic: bool) -> Any:
    """Twice the budget in one dimension: the EOT draws on a stochastic defense (whose number is
    most often what falls short), else the steps. Doubling both cost 4x the run's PGD on the
    sample (37% of the default atop_gan run); one dimension costs 2x."""
    pol = atk.policy
    if stochastic and not pol.fixes_any:
        return _with(atk, noise_policy=str(dataclasses.replace(pol, eot=2 * pol.eot)))
    return _with(atk, steps=2 * int(atk.params["steps"]))


def _huge(ref: Any, threat: str) -> Any | None:
    """The reference PGD at a very large budget (None for a threat without one)."""
    if threat not in BIG_EPS:
        return None
    e = BIG_EPS[threat]
    return _with(ref, eps=e, step_size=e / 4, steps=max(int(ref.params["steps"]), 10), random_init=True)


def sample_probe_attacks(spec: Any, attacks: list[Any], stochastic: bool) -> list[Any]:
    """The attacks the post-run probes run on the sampled survivors, in order: the run's PGD again,
    at twice its EOT (or steps), at a very large eps ([] without a PGD for the threat). The cost
    projection (benchmark.cost) counts the same list."""
    ref = _reference_attack(spec, attacks, stochastic)
    if ref is None:
        return []
    return [a for a in (ref, _doubled(ref, stochastic), _huge(ref, spec.threat)) if a is not None]


def _loss(defense: Any, atk: Any, x: Tensor, y: Tensor, seed: int, draws: int) -> Tensor:
    """The attack's per-sample loss, averaged over ``draws`` noise draws (common draws for equal seeds)."""
    from attacks.core import make_loss

    fn = make_loss(str(atk.params.get("loss", "ce")), float(atk.params.get("kappa", 50.0)))
    tot = torch.zeros(x.shape[0], device=x.device)
    with torch.no_grad():
        for d in range(draws):
            tot += fn(_forward(defense, x, derive_seed(seed, d), x.device).float(), y)
    return tot / draws


def diagnose(spec: Any, record: dict[str, Any], rows: list[dict[str, Any]], defense: Any, evalset: Any,
             device: torch.device, attacks: list[Any], pre_flags: list[dict[str, str]]) -> tuple[dict[str, Any], list[dict[str, str]], float]:
    """(diagnostics measurements, flags, seconds) of a finished run; see the module docstring."""
    t0 = time.perf_counter()
    info, flags = row_flags(rows, record)
    flags = list(pre_flags) + flags
    names = [a["attack"] for a in record.get("attacks", [])]
    k = int(record.get("eval_repeats", 1))
    surv = [i for i, r in enumerate(rows) if names and _majority(r["clean"], r["label"])
            and all(r[a].get("preds") and _majority(r[a]["preds"], r["label"]) for a in names)]
    perm = torch.randperm(len(surv), generator=generator(spec.seed, "diagnostics-sample")).tolist()
    pick = sorted(surv[j] for j in perm[:SAMPLE_N])
    pos = {str(i): p for p, i in enumerate(evalset.ids)}
    idx = [pos[str(rows[i]["id"])] for i in pick]
    info["survivors"] = len(surv)
    info["sample_ids"] = [str(rows[i]["id"]) for i in pick]
    stochastic = bool(defense.stochastic)
    devices = [device] if device.type == "cuda" else []
    ref = _reference_attack(spec, attacks, stochastic)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(spec.seed, "diagnostics-global"))
        xs = ys = xa1 = None
        if idx:
            xs = evalset.images[idx].to(device)
            ys = evalset.labels[idx].to(device)
        if xs is not None and ref is not None:
            flags += _sample_probes(spec, defense, ref, xs, ys, k, stochastic, device, info)
        elif ref is None:
            info["sample_probes"] = f"not run: no PGD for threat {spec.threat}"
        xa1 = info.pop("_xa1", None)
        if stochastic:
            flags += _split_probe(spec, defense, evalset, xa1, device, info)
    order = {f: i for i, f in enumerate(FLAG_IDS)}
    flags.sort(key=lambda f: order[f["id"]])
    seen: set[str] = set()
    flags = [f for f in flags if not (f["id"] in seen or seen.add(f["id"]))]
    info["thresholds"] = dict(THRESHOLDS)
    return info, flags, time.perf_counter() - t0


def _broken(defense: Any, atk: Any, x: Tensor, y: Tensor, k: int, seed_key: str, spec: Any, device: torch.device) -> Tensor:
    from attacks import predict

    preds = predict(defense, x, noise_policy="fresh", repeats=k, generator=generator(spec.seed, "diagnostics-predict",
                                                                                      seed_key, device=device))
    return (preds == y.unsqueeze(0)).sum(0) * 2 <= preds.shape[0]


def _run(defense: Any, atk: Any, x: Tensor, y: Tensor, key: str, spec: Any, device: torch.device) -> Tensor:
    return atk(defense, x, y, generator=generator(spec.seed, "diagnostics-attack", key, device=device))


def _sample_probes(spec: Any, defense: Any, ref: Any, xs: Tensor, ys: Tensor, k: int, stochastic: bool,
                   device: torch.device, info: dict[str, Any]) -> list[dict[str, str]]:
    """Silent failure, under-attacked and large-budget probes on the sampled survivors."""
    flags = []
    n = xs.shape[0]
    seed = derive_seed(spec.seed, "diagnostics-sample-probe")
    dep = input_dependent(defense, xs, seed, spec.threat)
    nd = int(dep.sum())
    info["sample_input_dependent"] = nd
    info["reference_attack"] = ref.name
    # 1. the run's PGD again: did its loss rise on the images it left standing?
    xa1 = _run(defense, ref, xs, ys, "ref", spec, device)
    b1 = _broken(defense, ref, xa1, ys, k, "ref", spec, device)
    draws = 1 if not stochastic else max(ref.policy.eot, 4)
    l0 = _loss(defense, ref, xs, ys, seed, draws)
    l1 = _loss(defense, ref, xa1, ys, seed, draws)
    tol = torch.clamp(THRESHOLDS["silent_rel_tol"] * l0.abs(), min=1e-6)
    standing = ~b1 & dep
    flat = standing & ~(l1 > l0 + tol)
    ns, nf = int(standing.sum()), int(flat.sum())
    info["silent"] = {"standing": ns, "loss_not_rising": nf, "loss_before": [_num(v) for v in l0.tolist()],
                      "loss_after": [_num(v) for v in l1.tolist()], "loss": str(ref.params.get("loss", "ce"))}
    if ns >= THRESHOLDS["row_min_images"] and nf / ns >= THRESHOLDS["silent_share"]:
        flags.append(flag("silent-failure", f"{ref.name}'s {info['silent']['loss']} loss did not rise on "
                          f"{_share(nf, ns)} sampled survivors it left standing (median before "
                          f"{l0[flat].median().item():.3g}, after {l1[flat].median().item():.3g})"))
    # 2. twice the EOT draws (stochastic) or steps (deterministic): does accuracy still fall?
    big = _doubled(ref, stochastic)
    b2 = _broken(defense, big, _run(defense, big, xs, ys, "double", spec, device), ys, k, "double", spec, device)
    more = int((b2 & ~b1).sum()) - int((b1 & ~b2).sum())
    info["double"] = {"attack": f"{ref.name} steps={big.params['steps']} {big.noise_policy}", "broken_1x": int(b1.sum()),
                      "broken_2x": int(b2.sum()), "of": n}
    if more >= THRESHOLDS["under_min_images"] and more / n >= THRESHOLDS["under_share"]:
        flags.append(flag("under-attacked", f"{info['double']['attack']} broke {int(b2.sum())}/{n} sampled survivors, "
                          f"{ref.name} rerun {int(b1.sum())}/{n}: more budget still lowers accuracy"))
    # 3. a very large budget must reach about 0% on images whose prediction depends on the input
    huge = _huge(ref, spec.threat)
    if huge is not None:
        e = BIG_EPS[spec.threat]
        bb = _broken(defense, huge, _run(defense, huge, xs, ys, "huge", spec, device), ys, k, "huge", spec, device)
        left = int((~bb & dep).sum())
        eps_txt = f"{round(e * 255)}/255" if spec.threat == "linf" else f"{e:g}"
        info["large_budget"] = {"eps": _num(e), "steps": int(huge.params["steps"]), "standing": left, "of": nd,
                                "input_independent": n - nd}
        if nd and left / nd > THRESHOLDS["big_share"]:
            flags.append(flag("large-budget-not-zero", f"{ref.name} at eps {eps_txt} ({huge.params['steps']} steps) left "
                              f"{_share(left, nd)} input-dependent sampled survivors standing: the attack is broken, "
                              "not the model robust"))
    info["_xa1"] = xa1
    return flags


def _split_probe(spec: Any, defense: Any, evalset: Any, xa1: Tensor | None, device: torch.device,
                 info: dict[str, Any]) -> list[dict[str, str]]:
    """Repeated passes on the survivors' adversarial images (or the first clean images): split verdicts?"""
    from attacks import predict

    if xa1 is None:
        hi = min(len(evalset), SAMPLE_N)
        x, what = evalset.images[:hi].to(device), "clean images"
    else:
        x, what = xa1, "survivors' adversarial images"
    p = max(SPLIT_PASSES, int(spec.eval_repeats))
    preds = predict(defense, x, noise_policy="fresh", repeats=p, generator=generator(spec.seed, "diagnostics-split",
                                                                                      device=device))
    s = sum(_split(preds[:, i].tolist()) for i in range(x.shape[0]))
    info["split_probe"] = {"images": s, "of": x.shape[0], "passes": p, "on": what}
    if x.shape[0] and s / x.shape[0] >= THRESHOLDS["split_share"]:
        return [flag("pass-disagreement", f"{p} evaluation passes split (minority >= 25%) on {_share(s, x.shape[0])} "
                     f"sampled {what}; the run scored each image with {spec.eval_repeats} pass(es)")]
    return []
