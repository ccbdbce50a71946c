"""Figures: robust accuracy against eps, PGD steps and EOT draws, and an image grid of a defense.

The accuracy curves are read from stored runs (the :mod:`benchmark.results` layout) through the
same functions the leaderboard uses (:func:`leaderboards.board.run_attacks` and
:func:`leaderboards.board.family_curves`): a point on a curve is the number the board prints,
and a steps/EOT curve still falling at its largest budget is marked exactly when the board's
``under-attacked`` test (:func:`leaderboards.board.still_falling`) would fire on it.
:func:`sweep` makes such runs (the runner at a list of eps / steps / EOT values, stored in the
normal results folder). :func:`image_grid` shows what a defense does to images, as in the
AToP paper's Figures 5-9: clean, transformed, purified, adversarial, purified adversarial.

All figures are PNGs written with matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from attacks import make_attack
from benchmark.api import prepare_run
from benchmark.build import make_defense, resolve_device
from benchmark.data import load_eval_set
from benchmark.errors import BenchError
from benchmark.results import check_writable
from benchmark.battery import THREAT_DEFAULTS
from benchmark.runner import RunSpec, default_run_dir, run, validate_spec
from benchmark.seeds import generator
from benchmark.threats import eps_text, parse_fraction
from defenses.base import Defense

from .board import FAMILY_LABELS, family_curves, policy_of, run_attacks, still_falling
from .runs import StoredRun, find_runs

VARY = ("eps", "steps", "eot")
AXIS_LABELS = {"eps": "eps", "steps": "attack steps", "eot": "EOT draws per step"}
# attack parameters that may differ between the points of one curve: the varied budget, and
# what follows from it or from the scale (the step size defaults to eps/4 for L2, the noise
# policy carries the EOT count)
_FREE_PARAMS = {"eps", "steps", "step_size", "noise_policy"}


# --------------------------------------------------------------------- curves
@dataclass
class Point:
    """One attack measurement on a curve (accuracy and its exact 95% interval in percent)."""

    x: float
    acc: float
    lo: float
    hi: float
    correct: int | None
    n: int | None
    attack: str
    run: str


@dataclass
class Curve:
    """Runs of one defense/dataset/threat/scale/image set/attack family that differ only in ``vary``."""

    defense: str
    dataset: str
    threat: str
    scale: str
    subset: str
    family: str
    vary: str
    fixed: dict[str, Any]
    points: list[Point]
    clean: tuple[float, float, float] | None = None  # acc, lo, hi (percent) of the newest run
    still_falling: float | None = None  # the board's under-attacked test on the last two points
    step: str = ""  # the attack step size along the curve, e.g. "step eps/4"

    @property
    def n(self) -> int | None:
        return self.points[0].n if self.points else None

    @property
    def label(self) -> str:
        fixed = []
        if "eps" in self.fixed:
            fixed.append(f"eps {eps_text(self.fixed['eps'], self.threat)}")
        if "steps" in self.fixed and self.fixed["steps"] is not None:
            fixed.append(f"{self.fixed['steps']} steps")
        if "eot" in self.fixed and (self.fixed["eot"] or 1) > 1:
            fixed.append(f"EOT{self.fixed['eot']}")
        if self.step:
            fixed.append(self.step)
        text = f"{self.defense}: {FAMILY_LABELS.get(self.family, self.family)}"
        if fixed:
            text += " " + ", ".join(fixed)
        text += f" (n={self.n}, {self.subset}, scale {self.scale})"
        if self.still_falling is not None:
            text += " - still falling at the largest budget"
        return text


def _step_text(points: Sequence[dict[str, Any]], threat: str) -> str:
    """The step size along a curve: one value, or one ratio to eps (as a sweep scales it)."""
    steps = [a.get("step_size") for a in points]
    if any(v is None for v in steps):
        return ""
    if len({round(float(v), 10) for v in steps}) == 1:
        v = float(steps[0])
        return f"step {v * 255:.3g}/255" if threat == "linf" else f"step {v:.3g}"
    ratios = {round(float(a["eps"]) / float(a["step_size"]), 6) for a in points if a.get("eps")}
    if len(ratios) == 1:
        return f"step eps/{ratios.pop():g}"
    return "step varies"


def _policy_base(params: dict[str, Any]) -> str:
    """A stored attack's noise policy without its EOT count (``fixed:all+eot:10`` -> ``fixed:all``)."""
    return str(policy_of(params).without_eot())


def _freeze(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 8)
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(t) for t in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(t)) for k, t in v.items()))
    return v


def _matches(value: str, wanted: Sequence[str] | None) -> bool:
    return wanted is None or value in wanted


def curves_from_runs(
    runs: Sequence[StoredRun],
    vary: str,
    *,
    defenses: Sequence[str] | None = None,
    dataset: str | None = None,
    threat: str | None = None,
    families: Sequence[str] | None = None,
    scale: str | None = None,
    fixed: dict[str, float] | None = None,
) -> tuple[list[Curve], list[str]]:
    """Curves of accuracy against ``vary`` from stored runs, and notes on what was left out.

    Runs are grouped by defense, dataset, threat, scale, image set (subset, n, eval repeats) and,
    per attack, the leaderboard family, every attack parameter but the budget, and the budget
    values not varied; each group with at least two distinct values of ``vary`` is a curve. At a
    value measured more than once the lowest accuracy counts (as on the board). ``fixed`` keeps
    only attacks at these values of the other budgets (e.g. ``{"steps": 20}`` for an eps curve).
    """
    if vary not in VARY:
        raise BenchError(f"can only plot accuracy against {', '.join(VARY)}; got {vary!r}")
    want = {k: v for k, v in (fixed or {}).items() if v is not None}
    if vary in want or not set(want) <= set(VARY):
        raise BenchError(f"a {vary} curve can be restricted to fixed values of "
                         f"{', '.join(k for k in VARY if k != vary)} only; got {', '.join(want)}")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    meta: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        rec = run.record
        if not (_matches(str(rec.get("defense")), defenses) and (dataset is None or rec.get("dataset") == dataset)
                and (threat is None or rec.get("threat") == threat) and (scale is None or rec.get("scale") == scale)):
            continue
        params = {a["attack"]: a.get("params", {}) for a in rec.get("attacks", [])}
        base = (rec.get("defense"), rec.get("dataset"), rec.get("threat"), rec.get("scale"), rec.get("subset"),
                run.summary.get("n"), rec.get("eval_repeats"))
        for a in run_attacks(run):
            if families is not None and a["family"] not in families:
                continue
            if any(a[k] is None or abs(float(a[k]) - float(v)) > 1e-9 for k, v in want.items()):
                continue
            p = params.get(a["name"], {})
            rest = {k: v for k, v in p.items() if k not in _FREE_PARAMS}
            rest["policy"] = _policy_base(p)
            fixed = {k: _freeze(a[k]) for k in VARY if k != vary}
            key = (*base, a["family"], _freeze(rest), _freeze(fixed))
            groups.setdefault(key, []).append({**a, "run": str(run.dir), "finished": run.finished,
                                               "clean": run.summary["attacks"].get("clean"),
                                               "step_size": p.get("step_size")})
            meta[key] = {"fixed": {k: a[k] for k in VARY if k != vary}}
    curves: list[Curve] = []
    notes: list[str] = []
    for key, items in groups.items():
        defense, ds, thr, sc, subset, _, _, fam = key[:8]
        pts = family_curves(items, lambda a: None if a[vary] is None else float(a[vary]))
        series = pts.get(fam, [])
        if len(series) < 2:
            fixed = ", ".join(f"{k} {eps_text(items[0][k], str(thr)) if k == 'eps' else items[0][k]}"
                              for k in VARY if k != vary)
            notes.append(f"{defense} {FAMILY_LABELS.get(fam, fam)} ({fixed}; {subset}, scale {sc}): only one {vary} "
                         f"value ({', '.join(sorted({str(a[vary]) for a in items}))}); no curve")
            continue
        points = [Point(x, a["acc"], a["ci"][0], a["ci"][1], a.get("correct"), a.get("n"), a["name"], a["run"])
                  for x, a in series]
        newest = max(items, key=lambda a: a["finished"])
        c = newest["clean"]
        clean = (100 * c["accuracy"], 100 * c["ci95"][0], 100 * c["ci95"][1]) if c else None
        falling = None
        if vary in ("steps", "eot"):
            falling = still_falling(series[-2][1], series[-1][1])
        curves.append(Curve(str(defense), str(ds), str(thr), str(sc), str(subset), fam, vary, meta[key]["fixed"],
                            points, clean, falling, _step_text([a for _, a in series], str(thr))))
    curves.sort(key=lambda c: (c.defense, c.family, c.label))
    return curves, notes


@dataclass
class PlotResult:
    path: Path
    curves: list[Curve]
    notes: list[str] = field(default_factory=list)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _x_value(x: float, vary: str, threat: str) -> float:
    return x * 255 if vary == "eps" and threat == "linf" else x


def plot_curves(curves: Sequence[Curve], out: str | Path, *, title: str | None = None) -> Path:
    """Draw ``curves`` (all against the same quantity, one threat) with 95% intervals as error bars."""
    if not curves:
        raise BenchError("nothing to plot: no curve")
    vary = curves[0].vary
    threats = {c.threat for c in curves}
    if len(threats) > 1 or any(c.vary != vary for c in curves):
        raise BenchError(f"curves mix threats ({', '.join(sorted(threats))}) or quantities; pick one threat")
    threat = threats.pop()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2 + 0.28 * len(curves)))
    xs_all: set[float] = set()
    log_x = vary in ("steps", "eot")
    span = max((_x_value(p.x, vary, threat) for c in curves for p in c.points), default=1.0)
    markers = "osD^vP*X"
    cleans: dict[tuple[str, float], str] = {}
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        xs = [_x_value(p.x, vary, threat) for p in c.points]
        xs_all.update(xs)
        # dodge: curves that coincide (e.g. all at 0%) stay visible side by side; the ticks are exact
        off = (i - (len(curves) - 1) / 2) * (0.025 if log_x else 0.008 * span)
        xd = [x * (1 + off) if log_x else x + off for x in xs]
        ys = [p.acc for p in c.points]
        yerr = [[p.acc - p.lo for p in c.points], [p.hi - p.acc for p in c.points]]
        ax.errorbar(xd, ys, yerr=yerr, color=color, marker=markers[i % len(markers)], ms=4, capsize=3, lw=1.5,
                    label=c.label)
        xs = xd
        if c.clean is not None:
            cleans.setdefault((c.defense, round(c.clean[0], 6)), color)
        if c.still_falling is not None:
            ax.plot([xs[-1]], [ys[-1]], marker="o", ms=11, mfc="none", mec="red", mew=1.5)
    for (dname, acc), color in cleans.items():  # one dotted line per defense's clean accuracy
        ax.axhline(acc, color="#777", ls=":", lw=1)
        ax.annotate(f"clean {dname}: {acc:.1f}%", xy=(0.995, acc), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize=6.5, color="#555")
    if log_x:
        ax.set_xscale("log", base=2)
    ticks = sorted(xs_all)
    ax.set_xticks(ticks)
    if vary == "eps" and threat == "linf":
        ax.set_xticklabels([f"{t:g}/255" for t in ticks])
        ax.set_xlabel(f"{AXIS_LABELS[vary]} (L-inf)")
    else:
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_xlabel(AXIS_LABELS[vary] + (f" ({threat})" if vary == "eps" else ""))
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"accuracy vs {AXIS_LABELS[vary]} ({curves[0].dataset}, {threat})", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.text(0.01, 0.005, "error bars: exact (Clopper-Pearson) 95% intervals; dotted: clean accuracy; "
             "red ring: still falling at the largest budget (the leaderboard's under-attacked test)",
             fontsize=6, color="#555")
    out = save_figure(fig, out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_accuracy(
    results: str | Path,
    vary: str,
    out: str | Path,
    *,
    defenses: Sequence[str] | None = None,
    dataset: str = "cifar10",
    threat: str = "linf",
    families: Sequence[str] | None = None,
    scale: str | None = None,
    fixed: dict[str, float] | None = None,
    title: str | None = None,
) -> PlotResult:
    """Accuracy against eps / steps / EOT from the runs stored under ``results``, as a PNG
    (``fixed``: only attacks at these values of the other budgets, see :func:`curves_from_runs`)."""
    runs, notes = find_runs(results)
    curves, more = curves_from_runs(runs, vary, defenses=defenses, dataset=dataset, threat=threat,
                                    families=families, scale=scale, fixed=fixed)
    notes += more
    if not curves:
        who = ", ".join(defenses) if defenses else "any defense"
        raise BenchError(f"no stored runs of {who} on {dataset}/{threat} under {results}/ that differ only in "
                         f"{vary} (need two or more {vary} values at an otherwise equal budget; make them with "
                         f"`bench plot {vary} --sweep ...`)" + (f"; {notes[-1]}" if notes else ""))
    return PlotResult(plot_curves(curves, out, title=title), curves, notes)


def plot_accuracy_vs_eps(results: str | Path, out: str | Path, **kw: Any) -> PlotResult:
    return plot_accuracy(results, "eps", out, **kw)


def plot_accuracy_vs_steps(results: str | Path, out: str | Path, **kw: Any) -> PlotResult:
    return plot_accuracy(results, "steps", out, **kw)


def plot_accuracy_vs_eot(results: str | Path, out: str | Path, **kw: Any) -> PlotResult:
    return plot_accuracy(results, "eot", out, **kw)


# ---------------------------------------------------------------------- sweep
def parse_values(text: str, vary: str) -> list[float]:
    """``1/255,2/255`` or ``5,10,20`` -> numbers, checked for the quantity (BenchError if bad)."""
    if vary not in VARY:
        raise BenchError(f"can only sweep {', '.join(VARY)}; got {vary!r}")
    out: list[float] = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        try:
            v = parse_fraction(item)
        except (ValueError, ZeroDivisionError):
            raise BenchError(f"--sweep: {item!r} is not a number") from None
        if vary == "eps" and not 0 < v <= 1:
            raise BenchError(f"--sweep: eps must be in (0, 1], got {item}")
        if vary in ("steps", "eot") and (v < 1 or not float(v).is_integer()):
            raise BenchError(f"--sweep: {vary} must be positive integers, got {item}")
        out.append(v if vary == "eps" else int(v))
    if len(set(out)) < 2:
        raise BenchError(f"--sweep needs at least two different {vary} values, got {text!r}")
    return out


def sweep(
    defense: str,
    vary: str,
    values: Sequence[float],
    *,
    dataset: str = "cifar10",
    threat: str = "linf",
    attacks: Sequence[str] | None = None,
    subset: str | None = None,
    eps: float | None = None,
    steps: int | None = None,
    eot: int | None = None,
    scale: str = "cpu",
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    results: str | Path = "runs",
    data_root: str | None = None,
    checkpoint: str | None = None,
    on_note: Callable[[str], None] | None = None,
    scale_step: bool = True,
) -> list[Any]:
    """Run the runner once per value of ``vary`` (eps, steps or EOT) for one defense; each run goes
    to ``results/sweeps/<defense>-<dataset>-<threat>-<scale>-<hash>`` (named like ``bench run``'s
    default, so an identical run is found finished and not recomputed). Returns the RunResults.

    ``attacks`` defaults to PGD (``pgd``, or ``pgd_eot`` for a stochastic defense), not the full
    battery: a sweep repeats the attack at every value. With ``scale_step`` (default; the runner's
    behaviour for any eps override) a PGD preset keeps its step/eps ratio at every eps (``pgd``:
    2/255 at 8/255, so eps/4); ``scale_step=False`` pins the preset's own step instead:
    a fixed 2/255 step at eps 1/255 only hops between the corners of the box and under-attacks
    (measured on ``standard``, 64 images, PGD-20: 51.6% vs 45.3% with step eps/4)."""
    import dataclasses

    if vary not in VARY:
        raise BenchError(f"can only sweep {', '.join(VARY)}; got {vary!r}")
    if len(set(values)) < 2:
        raise BenchError(f"a sweep needs at least two different {vary} values")
    dev = resolve_device(device)
    base = validate_spec(RunSpec(defense=defense, dataset=dataset, threat=threat, subset=subset, eps=eps,
                                 steps=steps, eot=eot, scale=scale, batch_size=batch_size, seed=seed,
                                 data_root=data_root, checkpoint=checkpoint,
                                 attacks=list(attacks) if attacks else None))
    specs = [validate_spec(dataclasses.replace(base, **{vary: v})) for v in values]
    # spec -> images -> defense as bench run does (with no subset: the scale's first n, recorded in
    # base.subset); the writable check comes below, after the sweep's own refusals, so that a refused
    # sweep leaves no folder behind
    evalset, defense_obj = prepare_run(base, dev, Path(results) / "sweeps", check_out=False)
    if vary == "eot" and not defense_obj.stochastic:
        raise BenchError(f"defense {defense!r} is deterministic: EOT draws change nothing; sweep eps or steps")
    if not attacks:
        name = "pgd_eot" if defense_obj.stochastic else "pgd"
        specs = [dataclasses.replace(s, attacks=[name]) for s in specs]
    if not scale_step and threat != "stadv":
        # the runner keeps a preset's step/eps ratio under an eps override; a fixed step must be explicit
        for s in specs:
            ov: dict[str, dict[str, Any]] = {}
            for a in s.attacks or []:
                if a == "clean":
                    continue
                atk = make_attack(a, threat)  # the preset's own budget
                p = atk.params
                if atk.family.name == "pgd" and p.get("step_size") is not None and p.get("eps") and s.eps is not None \
                        and abs(float(s.eps) - float(p["eps"])) > 1e-12:  # at the preset's eps: the plain preset
                    ov[a] = {"step_size": float(p["step_size"])}
            s.attack_overrides = ov
    out_root = check_writable(Path(results) / "sweeps")
    done = []
    for s in specs:
        s.subset = base.subset
        out = out_root / Path(default_run_dir(s)).name
        if on_note:
            on_note(f"{defense}: {vary}={eps_text(s.eps, threat) if vary == 'eps' else getattr(s, vary)} -> {out}")
        done.append(run(s, out=out, device=dev, defense=defense_obj, evalset=evalset))
    return done


# ----------------------------------------------------------------------- grid
@dataclass
class GridResult:
    """What the grid shows: column titles, the images of each column (N, C, H, W, on CPU), labels,
    and the classifier's prediction on the columns it classifies."""

    path: Path
    title: str
    columns: list[str]
    images: dict[str, Any]
    labels: list[int]
    preds: dict[str, list[int]]
    classes: list[str]
    captions: dict[str, list[str]] = field(default_factory=dict)


def _has_purifier_stage(defense: Any) -> bool:
    return defense.purifier is not None or type(defense).purify is not Defense.purify


def transformed_images(defense: Any, x: Any, noise: Any) -> tuple[Any, str] | None:
    """The output of the defense's transform stage with ``noise`` (the first view for a transform
    that makes several, as AToP's RT3), and its column title; None without a transform stage."""
    t = defense.transform
    if t is None:
        return None
    if hasattr(t, "views"):
        views, _ = t.views(x, noise)
        k = views.shape[0] // x.shape[0]
        return views[: x.shape[0]], ("transformed" if k == 1 else f"transformed (view 1 of {k})")
    return t(x, noise), "transformed"


def image_grid(
    defense: str | Any,
    out: str | Path,
    *,
    defense_options: dict[str, Any] | None = None,
    dataset: str = "cifar10",
    subset: str = "first:6",
    attack: str | None = None,
    threat: str = "linf",
    eps: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    data_root: str | None = None,
    evalset: Any = None,
) -> GridResult:
    """An image grid as in the AToP paper's Figures 5-9: one row per image; columns clean,
    transformed (the transform stage with its noise), purified, adversarial (``attack`` on the
    whole defense) and purified adversarial, the clean and adversarial rows sharing one noise
    draw. Columns a defense does not have are left out and the title says so."""
    import torch

    dev = resolve_device(device)
    name = defense if isinstance(defense, str) else getattr(defense, "name", "defense")
    if evalset is None:
        evalset = load_eval_set(dataset, subset, root=data_root)
    if len(evalset) > 16:
        raise BenchError(f"an image grid shows at most 16 images; subset {subset} has {len(evalset)}")
    d = (make_defense(defense, dataset=dataset, device=dev, options=defense_options) if isinstance(defense, str)
         else defense)
    if threat not in THREAT_DEFAULTS:
        raise BenchError(f"unknown threat {threat!r}; choose from {', '.join(THREAT_DEFAULTS)}")
    attack = attack or ("pgd_eot" if d.stochastic else "pgd")
    ov: dict[str, Any] = {}
    if eps is not None:
        ov["eps"] = eps
    if steps is not None:
        ov["steps"] = steps
    atk = make_attack(attack, threat, **ov)
    atk.policy.check(d)
    x = evalset.images.to(dev)
    y = evalset.labels.to(dev)
    noise = d.sample_noise(x, generator(seed, "grid", "eval-noise", device=dev))
    x_adv = atk(d, x, y, generator=generator(seed, "grid", "attack", device=dev), eval_noise=noise).detach()
    cols: dict[str, Any] = {}
    preds: dict[str, list[int]] = {}
    captions: dict[str, list[str]] = {}
    notes = []
    has_t, has_p = d.transform is not None, _has_purifier_stage(d)

    def classify(img: Any) -> list[int]:
        return [int(v) for v in d.classifier(img).argmax(1).cpu()]

    with torch.no_grad():
        cols["clean"] = x
        if has_t:
            tx, ttitle = transformed_images(d, x, noise)
            cols[ttitle] = tx
        elif has_p:
            notes.append("no separate transform stage")
        if has_p:
            cols["purified"] = d.purify(x, noise)
            preds["purified"] = classify(cols["purified"])
        elif has_t:
            preds[ttitle] = classify(tx)
            notes.append("no purifier stage: the classifier sees the transformed image")
        eps_used = float(atk.params.get("eps", 0.0))
        cols[f"adversarial ({attack}, eps {eps_text(eps_used, threat)})"] = x_adv
        adv_key = list(cols)[-1]
        if has_p:
            cols["purified adversarial"] = d.purify(x_adv, noise)
            preds["purified adversarial"] = classify(cols["purified adversarial"])
        elif has_t:
            tadv, _ = transformed_images(d, x_adv, noise)
            cols["transformed adversarial"] = tadv
            preds["transformed adversarial"] = classify(tadv)
        else:
            notes.append("deterministic, no transform or purifier: no transformed/purified columns")
            preds["clean"] = classify(x)
            preds[adv_key] = classify(x_adv)
            delta = x_adv - x
            scale = eps_used if threat == "linf" and eps_used > 0 else float(delta.abs().max().clamp_min(1e-12))
            pert = "perturbation (x_adv - x, +/-eps -> 0..1)"
            cols[pert] = (0.5 + 0.5 * delta / scale).clamp(0, 1)
            norms = delta.flatten(1).abs().amax(1) if threat == "linf" else delta.flatten(1).norm(dim=1)
            captions[pert] = [(f"max |d| = {float(v) * 255:.1f}/255" if threat == "linf" else f"||d|| = {float(v):.3f}")
                              + (" (already wrong)" if float(v) == 0 else "") for v in norms]
    title = f"{name} on {evalset.dataset} {evalset.subset}" + (f" ({'; '.join(notes)})" if notes else "")
    if d.stochastic:
        title += "; one noise draw, shared by the clean and adversarial rows"
    classes = list(evalset.classes)
    labels = [int(v) for v in evalset.labels]
    path = _draw_grid(cols, preds, labels, classes, title, out, captions)
    return GridResult(path, title, list(cols), {k: v.detach().cpu() for k, v in cols.items()}, labels, preds, classes,
                      captions)


def _draw_grid(cols: dict[str, Any], preds: dict[str, list[int]], labels: list[int], classes: list[str],
               title: str, out: str | Path, captions: dict[str, list[str]] | None = None) -> Path:
    plt = _pyplot()
    n, m = len(labels), len(cols)
    fig, axes = plt.subplots(n, m, figsize=(1.55 * m + 0.6, 1.55 * n + 0.9), squeeze=False)
    for j, (col, imgs) in enumerate(cols.items()):
        for i in range(n):
            ax = axes[i][j]
            img = imgs[i].detach().float().clamp(0, 1).cpu()
            arr = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()
            ax.imshow(arr, interpolation="nearest", cmap=None if img.shape[0] == 3 else "gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=7, wrap=True)
            if j == 0:
                ax.set_ylabel(classes[labels[i]] if labels[i] < len(classes) else str(labels[i]), fontsize=7)
            if col in preds:
                p = preds[col][i]
                ok = p == labels[i]
                ax.set_xlabel(f"pred: {classes[p] if p < len(classes) else p}", fontsize=6,
                              color="#1a7f37" if ok else "#c00000")
            elif captions and col in captions:
                ax.set_xlabel(captions[col][i], fontsize=6, color="#555")
    import textwrap

    fig.suptitle(textwrap.fill(title, width=max(40, 24 * m)), fontsize=8)
    fig.tight_layout()
    out = save_figure(fig, out, dpi=130)
    plt.close(fig)
    return out


def check_figure_path(out: str | Path) -> Path:
    """``out`` as a figure file: an extension matplotlib writes (``DIR`` alone would silently become
    ``DIR.png``), not a folder. Checked before any work, and again by :func:`save_figure`."""
    import matplotlib
    from matplotlib.backend_bases import FigureCanvasBase

    matplotlib.use("Agg")
    out = Path(out)
    kinds = sorted(FigureCanvasBase.get_supported_filetypes())
    if out.is_dir():
        raise BenchError(f"--out {out} is a directory; give a file such as {out / 'plot.png'}")
    if out.suffix.lstrip(".").lower() not in kinds:
        raise BenchError(f"--out {out}: unknown figure type {out.suffix or '(no extension)'!r}; "
                         f"use one of {', '.join('.' + k for k in kinds)}")
    return out


def save_figure(fig: Any, out: str | Path, **kw: Any) -> Path:
    """``fig.savefig`` to ``out`` atomically; a path that cannot be written is one BenchError."""
    import io

    from benchmark.results import _atomic_write

    out = check_figure_path(out)
    buf = io.BytesIO()
    fig.savefig(buf, format=out.suffix.lstrip(".").lower(), **kw)
    _atomic_write(out, lambda f: f.write(buf.getvalue()))
    return out
