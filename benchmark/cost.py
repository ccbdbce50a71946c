"""What a run will cost, before it starts (``bench run ... --dry-run``).

The model. A run is a sequence of passes through the defense, each on some images; its time is
the sum over passes of (images x the cost of one image in that kind of pass). Two kinds of pass
are measured on one probe batch (the run's first ``batch_size`` images, with the run's weight
layout and attack precision; gradients on the probe's images the attacks will take):

* a *forward* pass: ``defense(x, noise)`` without gradient (purifier and classifier, one noise
  draw): what clean predictions, final predictions, evaluation passes and Square queries do;
* a *gradient* pass: the input gradient of CE through the attack's view of the defense (exact,
  BPDA or a surrogate, one EOT draw, every purifier step, gradient checkpointing as configured):
  what one attack iteration costs per draw. One is measured per distinct (grad_mode, surrogate)
  among the run's attacks.

Per image, the cost is taken as linear in the number of images of a pass; gradients are timed on
the batch the attacks take (the probe's clean-correct images), which on 2 CPU cores cost the same
per image as the whole batch (atop_gan: 8.35 ms at 34 images, 8.38 ms at 64).

Passes are counted from the attacks' parameters (:func:`count_attack`), per batch of ``n`` images
of which ``m`` are attacked (``m = n x`` the probe's clean accuracy under the clean-correct scope,
``n`` with ``attack_all``):

* clean predictions: ``eval_repeats`` forward passes of ``n`` images (1 if deterministic);
* PGD (and BPDA, EOT, surrogate, FGSM, CW-margin): ``restarts x steps x EOT`` gradient passes of
  ``m`` images, plus the best-iterate evaluations (deterministic view: one before, one per
  restart; stochastic with restarts: ``EOT`` per restart); on a deterministic view fooled images
  leave early (``skip_fooled``): the survivors do every step, the others are counted for one;
* AutoAttack: ``eval_iter`` forward passes (1 if deterministic) of the images entering each
  component and after it; APGD-CE/DLR ``restarts x (steps + 1) x EOT`` gradient passes and one
  forward; APGD-T the same per target class (9, or classes - 1); FAB-T ``steps`` x (one gradient
  + one forward) per target class; Square ``square_queries`` forward passes. The first component
  sees every attacked image; the later ones only the survivors;
* StAdv, CW-L2: ``steps x EOT`` gradient passes;
* final predictions: ``eval_repeats`` forward passes of the ``m`` images per attack.

Survivors are the one thing the parameters do not fix: the fraction ``robust`` of attacked images
that survive a component. It comes, in this order, from the caller (``--assume-robust``), from a
stored run of the same defense, dataset and threat (its worst-case over clean accuracy), or from
a pilot on the probe (PGD-5, one draw per step, on at most 16 clean-correct probe images, then
one forward pass: the fraction still correct, over that of a fresh clean draw of the same images
for a stochastic defense; the pilot is weaker than the run's attacks, so the estimate leans high). The upper
bound (every image survives, every step runs) is printed beside the estimate.

Wall time = the setup measured so far (imports, data, defense, layout probe; not this probe, which
the run does not make) + the passes above. Peak memory: on CUDA the probe's peak allocation, with the part above the weights
scaled by the EOT chunk (draws in one pass); on a CPU the process's peak RSS after the probe
(EOT draws run one per pass there).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

GradKey = tuple[str, Any]  # (grad_mode, surrogate_steps)

# the survivor pilot: PGD of this many steps (one draw per step) on at most this many clean-correct probe images
PILOT_STEPS, PILOT_IMAGES = 5, 16

AA_COMPONENTS = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "rand": ["apgd-ce", "apgd-dlr"]}


@dataclass
class Passes:
    """Image-passes (images x passes) of each kind."""

    fwd: float = 0.0
    grad: dict[GradKey, float] = field(default_factory=dict)

    def add_grad(self, key: GradKey, v: float) -> None:
        self.grad[key] = self.grad.get(key, 0.0) + v

    def __iadd__(self, o: "Passes") -> "Passes":
        self.fwd += o.fwd
        for k, v in o.grad.items():
            self.add_grad(k, v)
        return self

    @property
    def grad_total(self) -> float:
        return sum(self.grad.values())


def grad_key(params: dict[str, Any]) -> GradKey:
    return (str(params.get("grad_mode", "exact")), params.get("surrogate_steps"))


def count_attack(family: str, params: dict[str, Any], *, m: float, draws: int, deterministic: bool,
                 predict_passes: int, robust: float, n_classes: int = 10) -> Passes:
    """Image-passes of one attack on ``m`` attacked images (see the module docstring).

    ``draws``: EOT draws per gradient; ``deterministic``: the attacker's view (one evaluation pass
    suffices); ``predict_passes``: final forward passes per image; ``robust``: the fraction of
    attacked images that survive (1 = the upper bound)."""
    p = Passes()
    key = grad_key(params)
    r = min(1.0, max(0.0, float(robust)))
    steps = int(params.get("steps") or 1)
    if family == "pgd":
        restarts = int(params.get("restarts") or 1)
        surrogate = params.get("surrogate_steps") is not None
        det = deterministic and not surrogate
        early = det and bool(params.get("skip_fooled", True))
        keep = det if params.get("keep_best") is None else bool(params["keep_best"])
        for i in range(restarts):
            live = m if (i == 0 or not early) else m * r
            if early:
                p.add_grad(key, draws * live * (r * steps + (1 - r) * 1))
            else:
                p.add_grad(key, draws * live * steps)
            if det:
                p.fwd += live * (r if early else 1)  # final evaluation of the still-live images
            elif keep or restarts > 1:
                p.fwd += draws * live
        if det:
            p.fwd += m  # the clean candidate
    elif family == "autoattack":
        version = str(params.get("version", "standard"))
        comps = AA_COMPONENTS.get(version, AA_COMPONENTS["standard"])
        passes = 1 if deterministic else int(params.get("eval_iter") or 1)
        restarts = int(params["restarts"]) if params.get("restarts") is not None else 1
        n_tc = max(1, min(9, n_classes - 1))
        queries = int(params.get("square_queries") or 5000)
        p.fwd += passes * m  # the clean candidate
        for i, c in enumerate(comps):
            mi = m if i == 0 else m * r
            if c in ("apgd-ce", "apgd-dlr"):
                p.fwd += mi
                p.add_grad(key, restarts * (steps + 1) * draws * mi)
            elif c == "apgd-t":
                p.fwd += n_tc * mi
                p.add_grad(key, n_tc * (steps + 1) * draws * mi)
            elif c == "fab-t":
                p.fwd += n_tc * (steps + 1) * mi
                p.add_grad(key, n_tc * steps * mi)
            elif c == "square":
                p.fwd += (queries + 1) * mi
            p.fwd += passes * mi  # the robustness check after the component
    else:  # stadv, cw: one gradient per step and draw
        p.add_grad(key, steps * draws * m)
        p.fwd += m
    p.fwd += predict_passes * m
    return p


@dataclass
class Probe:
    """Per-image costs measured on one batch."""

    batch: int
    fwd_s: float  # per image, one forward pass
    grad_s: dict[GradKey, float]  # per image, one gradient pass
    clean_acc: float
    pilot_robust: float | None
    peak_bytes: int | None
    peak_what: str
    n_classes: int
    probe_s: float


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(fn, device: torch.device, min_s: float = 1.0, max_reps: int = 5, clock=time.perf_counter) -> float:
    """Mean time of ``fn`` over repeats until ``min_s`` seconds (one call when a call takes longer).

    ``clock`` is wall time, or this process's CPU seconds (``--dry-run-clock cpu``: steadier on a
    machine shared with other jobs, to check the pass counts against a run's CPU time)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    reps, total = 0, 0.0
    while reps < max_reps and (reps == 0 or total < min_s):
        sync()
        t0 = clock()
        fn()
        sync()
        total += clock() - t0
        reps += 1
    return total / reps


def _peak_rss_bytes() -> int | None:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
    except (ImportError, OSError):
        return None


def probe_costs(spec: Any, defense: Any, attack_defense: Any, attacks: list[Any], evalset: Any,
                device: torch.device, probe_batch: int | None = None, clock: str = "wall",
                pilot_survivors: bool = True) -> Probe:
    """Measure one forward and one gradient pass per gradient kind on the run's first batch
    (its first ``probe_batch`` images when given: cheaper for a costly defense, a little less exact)."""
    import torch.nn.functional as F

    from attacks import predict
    from attacks.core import Objective

    from .seeds import generator

    tick = CLOCKS[clock]
    t_start = tick()
    b = min(len(evalset), spec.batch_size, probe_batch or spec.batch_size)
    x, y = evalset.images[:b].to(device), evalset.labels[:b].to(device)
    g = generator(spec.seed, "cost-probe", 0, device=device)
    with torch.no_grad():  # warm-up (first-call costs, e.g. kernel selection, are not per-image costs)
        defense(x, defense.sample_noise(x, g))
    preds: list[torch.Tensor] = []

    def fwd() -> None:
        preds.append(predict(defense, x, generator=g)[0])

    fwd_s = _timed(fwd, device, clock=tick) / b
    clean_acc = float((preds[0] == y).float().mean())
    n_classes = int(defense(x[:1], defense.sample_noise(x[:1], g)).shape[1]) if b else 10
    keys = sorted({grad_key(a.params) for a in attacks}, key=str) or [("exact", None)]
    # gradients are timed on the images the attacks will take (the clean-correct ones, or all with attack_all)
    att = torch.arange(b, device=device) if spec.attack_all else (preds[0] == y).nonzero().flatten()
    xg, yg = (x[att], y[att]) if att.numel() else (x, y)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    grad_s: dict[GradKey, float] = {}
    for key in keys:
        mode, sur = key
        obj = Objective(attack_defense, noise_policy="fresh", grad_mode=mode, generator=g, surrogate_steps=sur)
        out: list[torch.Tensor] = []

        def grad(obj: Objective = obj, out: list[torch.Tensor] = out) -> None:
            out.append(obj.loss_grad(xg, yg, lambda lg, yy: F.cross_entropy(lg.float(), yy, reduction="none"))[0])

        if fwd_s * b < 1.0:  # warm-up: the first backward pass selects kernels and allocates its buffers
            grad()
            out.clear()
        grad_s[key] = _timed(grad, device, clock=tick) / xg.shape[0]
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
        chunk = max((a.policy.draws_for(defense) for a in attacks), default=1)
        peak_bytes = base + (peak - base) * chunk
        peak_what = f"CUDA allocated: probe peak with the part above the weights x {chunk} EOT draws per pass"
    else:
        peak_bytes = _peak_rss_bytes()
        peak_what = "CPU peak RSS of this process after the probe (EOT draws run one per pass on a CPU)"
    pilot = None
    eps = next((float(a.params["eps"]) for a in attacks if a.params.get("eps") is not None), None)
    ok = (preds[0] == y).nonzero().flatten()[:PILOT_IMAGES]
    if pilot_survivors and eps is not None and spec.threat in ("linf", "l2") and ok.numel():
        from attacks.pgd import pgd

        xs, ys = x[ok], y[ok]
        xa = pgd(attack_defense, xs, ys, threat=spec.threat, eps=eps, steps=PILOT_STEPS, generator=g)
        p_adv = float((predict(defense, xa, generator=g)[0] == ys).float().mean())
        # a stochastic defense also errs without attack: survival is relative to a fresh clean draw
        p_clean = float((predict(defense, xs, generator=g)[0] == ys).float().mean()) if defense.stochastic else 1.0
        pilot = min(1.0, p_adv / p_clean) if p_clean > 0 else 1.0
    return Probe(b, fwd_s, grad_s, clean_acc, pilot, peak_bytes, peak_what, n_classes, tick() - t_start)


def stored_robust(defense: str, dataset: str, threat: str, root: str | Path = "runs") -> tuple[float, str] | None:
    """(worst-case / clean accuracy, run folder) of the newest stored run of this defense, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    best: tuple[float, float, str] | None = None
    for rec_path in root.glob("*/record.json"):
        try:
            rec = json.loads(rec_path.read_text())
            if (rec.get("defense"), rec.get("dataset"), rec.get("threat")) != (defense, dataset, threat):
                continue
            summ = json.loads((rec_path.parent / "summary.json").read_text())
            clean = float(summ["attacks"]["clean"]["accuracy"])
            wc = float(summ["worst_case"]["accuracy"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if clean <= 0:
            continue
        mt = rec_path.stat().st_mtime
        if best is None or mt > best[0]:
            best = (mt, min(1.0, wc / clean), str(rec_path.parent))
    return (best[1], best[2]) if best else None


@dataclass
class Projection:
    n: int
    attacked: float
    robust: float
    robust_source: str
    per_attack: list[tuple[str, Passes, float]]  # name, passes, seconds
    clean: Passes
    clean_s: float
    upper_s: float
    setup_s: float
    probe: Probe
    clock: str = "wall"  # "cpu": every second here is this process's CPU time (--dry-run-clock cpu)

    @property
    def loop_s(self) -> float:
        return self.clean_s + sum(s for _, _, s in self.per_attack)

    @property
    def total_s(self) -> float:
        return self.setup_s + self.loop_s

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "attacked": self.attacked, "robust": self.robust, "robust_source": self.robust_source,
                "setup_s": self.setup_s, "loop_s": self.loop_s, "total_s": self.total_s,
                "upper_total_s": self.setup_s + self.upper_s, "peak_bytes": self.probe.peak_bytes,
                "fwd_passes": self.clean.fwd + sum(p.fwd for _, p, _ in self.per_attack),
                "grad_passes": sum(p.grad_total for _, p, _ in self.per_attack),
                "attacks": {a: {"fwd": p.fwd, "grad": p.grad_total, "s": s} for a, p, s in self.per_attack}}


def seconds(p: Passes, probe: Probe) -> float:
    return p.fwd * probe.fwd_s + sum(v * probe.grad_s.get(k, max(probe.grad_s.values())) for k, v in p.grad.items())


def project(spec: Any, defense: Any, attacks: list[Any], n: int, probe: Probe, *, setup_s: float,
            robust: float | None = None, results: str | Path = "runs") -> Projection:
    """The whole run's passes and time from the probe (see the module docstring)."""
    if robust is not None:
        src = "given (--assume-robust)"
    else:
        st = stored_robust(spec.defense, spec.dataset, spec.threat, results)
        if st is not None:
            robust, where = st
            src = f"stored run {where} (worst case / clean)"
        elif probe.pilot_robust is not None:
            robust, src = probe.pilot_robust, f"PGD-{PILOT_STEPS} pilot on {PILOT_IMAGES} images (leans high)"
        else:
            robust, src = 1.0, "upper bound"
    k = spec.eval_repeats
    m = float(n) if spec.attack_all else n * probe.clean_acc
    clean = Passes(fwd=float(n * (k if defense.stochastic else 1)))
    per, upper = [], seconds(clean, probe)
    for atk in attacks:
        det = atk.policy.deterministic_for(defense)
        draws = atk.policy.draws_for(defense)
        fixes_all = defense.stochastic and set(atk.policy.fixed_names(defense)) >= set(defense.noise_names)
        pred = 1 if (not defense.stochastic or fixes_all) else k
        kw = dict(m=m, draws=draws, deterministic=det, predict_passes=pred, n_classes=probe.n_classes)
        pa = count_attack(atk.family.name, atk.params, robust=robust, **kw)
        per.append((atk.name, pa, seconds(pa, probe)))
        upper += seconds(count_attack(atk.family.name, atk.params, robust=1.0, **kw), probe)
    if getattr(spec, "diagnostics", False):
        diag = count_diagnostics(spec, defense, attacks, m=m, robust=robust, n_classes=probe.n_classes)
        if diag is not None:
            per.append((diag[0], diag[1], seconds(diag[1], probe)))
            upper += seconds(count_diagnostics(spec, defense, attacks, m=m, robust=1.0, n_classes=probe.n_classes)[1], probe)
    return Projection(n, m, float(robust), src, per, clean, seconds(clean, probe), upper, setup_s, probe)


def count_diagnostics(spec: Any, defense: Any, attacks: list[Any], *, m: float, robust: float,
                      n_classes: int = 10) -> tuple[str, Passes] | None:
    """Image-passes of the post-run attack-failure probes (benchmark.diagnostics) on the sampled
    survivors: each of :func:`~benchmark.diagnostics.sample_probe_attacks` in full with its
    evaluation passes, the loss before/after and the input-dependence forwards, then the
    pass-disagreement passes. On a PGD-200+EOT-20 protocol these cost as much as the attack itself."""
    from . import diagnostics as dg

    stochastic = bool(defense.stochastic)
    probes = dg.sample_probe_attacks(spec, attacks, stochastic)
    s = min(float(dg.SAMPLE_N), m * min(1.0, max(0.0, float(robust))))
    k = int(spec.eval_repeats) if stochastic else 1
    p = Passes()
    if probes and s > 0:
        for atk in probes:
            kw = dict(m=s, draws=atk.policy.draws_for(defense), deterministic=atk.policy.deterministic_for(defense),
                      predict_passes=k, n_classes=n_classes)
            p += count_attack(atk.family.name, atk.params, robust=1.0, **kw)  # survivors: the probes run in full
        draws = 1 if not stochastic else max(probes[0].policy.eot, 4)
        p.fwd += 2 * draws * s + 2 * s  # the loss before/after, input dependence
    if stochastic:
        p.fwd += max(dg.SPLIT_PASSES, int(spec.eval_repeats)) * (s if s > 0 else min(float(dg.SAMPLE_N), m))
    return (f"diagnostics ({s:.0f} survivors)", p) if (p.fwd or p.grad) else None


def _fmt_bytes(b: int | None) -> str:
    if b is None:
        return "?"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def _fmt_s(s: float) -> str:
    from .progress import format_seconds

    return format_seconds(s)


def report_lines(pr: Projection, spec: Any, device: torch.device) -> list[str]:
    p = pr.probe
    grads = ", ".join(f"{m}{'' if s is None else f'+surrogate:{s}'} {1e3 * v:.2f} ms" for (m, s), v in p.grad_s.items())
    out = [f"dry run: {spec.defense} on {pr.n} images, device {device}; nothing attacked, nothing written",
           f"  probe ({p.batch} images, {p.probe_s:.1f} s): forward {1e3 * p.fwd_s:.2f} ms/image, gradient {grads} "
           f"per image and draw; clean accuracy {100 * p.clean_acc:.1f}% -> {pr.attacked:.0f} images attacked",
           f"  survivors per component: {100 * pr.robust:.0f}% of the attacked ({pr.robust_source})"]
    out.append(f"  {'pass':<24} {'forward':>12} {'gradient':>12} {'time':>9}")
    out.append(f"  {'clean predictions':<24} {pr.clean.fwd:>12,.0f} {0:>12,} {_fmt_s(pr.clean_s):>9}")
    for name, pa, s in pr.per_attack:
        out.append(f"  {name:<24} {pa.fwd:>12,.0f} {pa.grad_total:>12,.0f} {_fmt_s(s):>9}")
    tot_f = pr.clean.fwd + sum(pa.fwd for _, pa, _ in pr.per_attack)
    tot_g = sum(pa.grad_total for _, pa, _ in pr.per_attack)
    out.append(f"  {'total (image-passes)':<24} {tot_f:>12,.0f} {tot_g:>12,.0f} {_fmt_s(pr.loop_s):>9}")
    out.append(f"PROJECTED {pr.clock} {pr.total_s:.1f} s ({_fmt_s(pr.total_s)}: setup {pr.setup_s:.1f} s + attacks "
               f"{pr.loop_s:.1f} s; upper bound {_fmt_s(pr.setup_s + pr.upper_s)}), peak memory "
               f"{_fmt_bytes(p.peak_bytes)} ({p.peak_what})")
    return out


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), or None."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        return max(0.0, up - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def dry_run(spec: Any, defense: Any, evalset: Any, device: torch.device, *, robust: float | None = None,
            results: str | Path = "runs", t_main: float | None = None, probe_batch: int | None = None,
            clock: str = "wall") -> Projection:
    """Prepare the run as :func:`benchmark.runner.run` does (layout, precision, attacks), probe, project."""
    from .runner import _apply_speed, _attack_precision, build_attacks

    from .diagnostics import battery_probe

    attacks = build_attacks(spec, defense.stochastic)
    attacks += battery_probe(spec, defense, evalset, device, attacks).extra  # what the run adds (shattered gradients)
    for atk in attacks:
        atk.policy.check(defense)
    _apply_speed(spec, defense, evalset, device)
    attack_defense, _, _ = _attack_precision(spec, defense, attacks, evalset, device)
    need_pilot = robust is None and stored_robust(spec.defense, spec.dataset, spec.threat, results) is None
    probe = probe_costs(spec, defense, attack_defense, attacks, evalset, device, probe_batch, clock, need_pilot)
    age = process_age_s() if clock == "wall" else time.process_time()
    setup = age if age is not None else (time.perf_counter() - t_main if t_main is not None else probe.probe_s)
    setup = max(0.0, setup - probe.probe_s)  # the run itself does not probe
    if math.isnan(setup):
        setup = 0.0
    pr = project(spec, defense, attacks, len(evalset), probe, setup_s=setup, robust=robust, results=results)
    pr.clock = clock
    return pr
