"""Run attacks on a fixed evaluation set and store per-sample results that survive a crash.

A run is fully described by a :class:`RunSpec`. Its randomness for (batch, attack, purpose)
comes from generators derived from the run seed (``benchmark.seeds``), and torch's global RNG
(used by opaque plugin modules) is reseeded per batch, so a batch computes the same numbers
whether it runs first, after a crash, or on another rank (``benchmark.distributed``); finished
batches are skipped on resume.

One scoring rule for every row of every defense: the clean images and each attack's returned
images are classified on ``eval_repeats`` forward passes (fresh noise for the parts the
attack's policy does not fix; 1 pass by default), and an image counts as correct when the
majority of them are (worst-of-k beside it). An attack's own evaluation passes (PGD's best
iterate, AutoAttack's ``eval_iter``) only choose which candidate it returns; none of their
draws is reused: generators are derived per purpose, and torch's global RNG (an opaque
module's hidden noise) is reseeded per purpose too (:func:`_reseed_global`).
"""
from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

import attacks as attacks_pkg
from attacks.core import NoisePolicy
from attacks.precision import PRECISIONS, choose_precision

from .battery import BATTERY, SCALES, THREAT_DEFAULTS  # noqa: F401  (SCALES, THREAT_DEFAULTS re-exported)
from .build import make_defense
from .config import config_hash
from .diagnostics import battery_probe, diagnose
from .errors import BenchError
from .provenance import git_commit, library_versions
from .results import RunStore
from .scalecut import scale_limits
from .seeds import check_seed, derive_seed, generator
from .speed import MEMORY_FORMATS, choose_memory_format, compile_classifier
from .stats import clopper_pearson

if TYPE_CHECKING:
    from .distributed import Comm
    from .speed import SpeedChoice

@dataclass
class RunSpec:
    defense: str
    dataset: str = "cifar10"
    threat: str = "linf"
    subset: str | None = None
    source: str | None = None
    attacks: list[str] | None = None  # None: the threat's default battery
    attack_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    eps: float | None = None
    steps: int | None = None
    eot: int | None = None
    protocol: str | None = None
    scale: str = "full"
    eval_repeats: int = 1
    batch_size: int = 64
    seed: int = 0
    checkpoint: str | None = None
    data_root: str | None = None
    precision: str = "fp32"  # attack gradients; "bf16" after a gradient check (attacks.precision)
    defense_options: dict[str, Any] = field(default_factory=dict)  # factory keywords, e.g. {"steps": 10}
    attack_all: bool = False  # also attack clean-misclassified images (they count as not robust either way)
    memory_format: str = "auto"  # benchmark.speed: channels_last on CPU after a logit probe
    compile: bool = False  # torch.compile the classifier (opt-in; benchmark.speed)
    diagnostics: bool = True  # attack-failure flags and the battery they extend (benchmark.diagnostics)
    # the protocol's own cut for this defense at this scale (Protocol.scale_cuts; benchmark.scalecut),
    # carried here because a protocol given as a file cannot be found again by its name
    protocol_cut: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.threat not in THREAT_DEFAULTS:
            raise ValueError(f"unknown threat {self.threat!r}; choose from {', '.join(THREAT_DEFAULTS)}")
        if self.eps is not None and not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if self.steps is not None and self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if self.eot is not None and self.eot <= 0:
            raise ValueError(f"eot must be positive, got {self.eot}")
        if self.eval_repeats <= 0:
            raise ValueError(f"eval repeats must be positive, got {self.eval_repeats}")
        if self.batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {self.batch_size}")
        try:
            check_seed(self.seed, "seed")
        except BenchError as e:
            raise ValueError(str(e)) from None
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; choose from {', '.join(SCALES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"unknown memory format {self.memory_format!r}; choose from {', '.join(MEMORY_FORMATS)}")


# options added after the first runs: at these defaults they are left out of the spec hash, so
# specs (and default run folders) from before they existed keep their hash. (attack_all,
# memory_format and compile are always hashed: runs from before them record other work and cannot
# resume, so their default folders must not be reused.)
_HASH_DEFAULTS: dict[str, Any] = {"precision": "fp32", "defense_options": {}, "protocol_cut": {}}


def spec_hash(spec: RunSpec) -> str:
    """config_hash of the spec, without the options in ``_HASH_DEFAULTS`` at their defaults."""
    d = dataclasses.asdict(spec)
    for k, v in _HASH_DEFAULTS.items():
        if k in d and d[k] == v:
            d.pop(k)
    return config_hash(d)


# record keys written after ``run_hash`` (where and with what the run ran, not what it computed);
# a key added to the record after the hash must be named here, or stored runs stop verifying
_UNHASHED_RECORD_KEYS = ("run_hash", "versions", "git_commit", "device", "precision_check")


def default_run_dir(spec: RunSpec) -> str:
    """``runs/<defense>-<dataset>-<threat>-<scale>-<spec hash>``: where ``bench run`` and sweeps write."""
    safe = spec.defense.replace(":", "_").replace("/", "_").replace(".py", "")
    return f"runs/{safe}-{spec.dataset}-{spec.threat}-{spec.scale}-{spec_hash(spec)[:8]}"


def record_hash(record: dict[str, Any]) -> str:
    """The ``run_hash`` of a run record: config_hash of what the run computed.

    ``precision`` is hashed only beside ``precision_requested`` (fp32 runs keep the hash they had
    before the option existed). Readers of stored runs recompute it to refuse edited or foreign
    records."""
    return config_hash({k: v for k, v in record.items() if k not in _UNHASHED_RECORD_KEYS
                        and (k != "precision" or "precision_requested" in record)})


def validate_spec(spec: RunSpec) -> RunSpec:
    try:
        spec.validate()
    except ValueError as e:
        raise BenchError(str(e)) from None
    return spec


def build_attacks(spec: RunSpec, stochastic: bool) -> list[Any]:
    """Attack objects for the run, with eps/steps/eot overrides and the scale applied (:mod:`benchmark.battery`)."""
    return BATTERY.attacks(spec, stochastic)


def check_logits(logits: torch.Tensor, batch: int) -> None:
    if not torch.isfinite(logits).all():
        raise BenchError(f"the defense returned NaN or inf logits on batch {batch}; stopping (stored results are untouched)")


def _norm(delta: torch.Tensor, threat: str) -> list[float]:
    flat = delta.flatten(1)
    v = flat.norm(dim=1) if threat == "l2" else flat.abs().amax(dim=1)
    return [round(float(t), 6) for t in v]


def load_spec_evalset(spec: RunSpec) -> Any:
    """The images of a run: the spec's subset, or, with no subset, the scale's first n (:mod:`benchmark.battery`)."""
    return BATTERY.evalset(spec)[0]


@dataclass
class RunResult:
    dir: Path
    record: dict[str, Any]
    summary: dict[str, Any]
    resumed: bool
    notes: list[str] = field(default_factory=list)  # batch files of the store that were recomputed or ignored


def run(
    spec: RunSpec,
    *,
    out: str | Path,
    device: torch.device,
    defense: Any = None,
    evalset: Any = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    batch_filter: Callable[[int], bool] | None = None,
    comm: "Comm | None" = None,
) -> RunResult:
    """Run (or resume) ``spec``; rows go to ``out``. ``batch_filter`` restricts the batches computed.

    ``comm`` (a :class:`benchmark.distributed.Comm`) shards the batches over a process group:
    each rank computes the batches it owns, and rank 0 merges every rank's rows into the same
    samples and summary a single process writes (see ``benchmark.distributed``). A ``defense``
    passed in gets the run's memory format (and ``compile``) in place."""
    validate_spec(spec)
    if evalset is None:
        evalset = load_spec_evalset(spec)
    if defense is None:
        defense = make_defense(spec.defense, dataset=spec.dataset, device=device, checkpoint=spec.checkpoint,
                               options=spec.defense_options, probe_images=evalset.images)
    attacks = build_attacks(spec, defense.stochastic)
    probe = battery_probe(spec, defense, evalset, device, attacks)  # may extend the default battery (recorded)
    attacks += probe.extra
    for atk in attacks:
        atk.policy.check(defense)
    n = len(evalset)
    n_batches = (n + spec.batch_size - 1) // spec.batch_size
    speed = _apply_speed(spec, defense, evalset, device)
    attack_defense, precision_check, t_check = _attack_precision(spec, defense, attacks, evalset, device)
    record = {
        "defense": spec.defense,
        **({"defense_options": dict(spec.defense_options)} if spec.defense_options else {}),
        "defense_info": {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v)) for k, v in defense.info.items()},
        "noise": defense.describe_noise(),
        "stochastic": bool(defense.stochastic),
        "dataset": evalset.dataset,
        "source": evalset.source,
        "subset": evalset.subset,
        "ids": list(evalset.ids),
        "threat": spec.threat,
        "protocol": spec.protocol,
        "scale": spec.scale,
        "scale_limits": _scale_limits(spec),
        "attacks": [a.record() for a in attacks],
        "eval_repeats": spec.eval_repeats,
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "n": n,
        "n_batches": n_batches,
        # which images are attacked; the layout and compilation change numbers at rounding level
        "attack_scope": "all" if spec.attack_all else "clean-correct",
        "diagnostics": probe.record,
        **speed.record(),
    }
    if precision_check is not None:  # part of the run's identity; fp32 runs keep their pre-option hash
        record["precision_requested"] = precision_check.requested
        record["precision"] = precision_check.used
    record["run_hash"] = record_hash(record)
    record["precision"] = precision_check.used if precision_check is not None else "fp32"
    if precision_check is not None:
        record["precision_check"] = precision_check.record()
    record["versions"] = library_versions()
    record["git_commit"] = git_commit()
    # the device type and name, not its index: a sharded run's rank 0 (cuda:0) records what one process does
    record["device"] = device.type + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f" ({platform.processor() or platform.machine()})")
    store = RunStore(out)
    if comm is not None:
        resumed = comm.open_store(store, record)
        shard_filter = batch_filter
        batch_filter = comm.owns if shard_filter is None else (lambda b: comm.owns(b) and shard_filter(b))
    else:
        resumed = store.open(record)
    t0 = time.perf_counter()
    computed: list[int] = []
    for b in range(n_batches):
        if batch_filter is not None and not batch_filter(b):
            continue
        if store.has_batch(b):
            if on_progress:
                on_progress("batch", b, min(spec.batch_size, n - b * spec.batch_size))
            continue
        # Code that draws from torch's global RNG (an opaque plugin module) gets a per-batch seed
        # too, so that its batches, like the others, do not depend on which batches ran before.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derive_seed(spec.seed, "global", b))
            rows = _run_batch(spec, b, n, evalset, defense, attacks, device, on_progress, attack_defense)
        store.write_batch(b, rows)
        computed.append(b)
        if on_progress:
            on_progress("batch", b, len(rows))
    wall = time.perf_counter() - t0
    timing: dict[str, Any] = {"wall_s_this_invocation": round(wall, 3), "resumed": resumed}
    if precision_check is not None:
        timing["precision_check_s"] = round(t_check, 3)
    final = batch_filter is None
    if comm is not None:
        mine = {b: store.read_batch(b) for b in range(n_batches) if batch_filter(b) and store.has_batch(b)}
        info = {"rank": comm.rank, "device": str(device), "wall_s": round(wall, 3), "batches_computed": computed}
        parts = comm.gather((mine, info))
        final = parts is not None
        if parts is not None:  # rank 0: take the batches it lacks (ranks on another node's disk)
            for rows_of, _ in parts:
                for b, rows in sorted(rows_of.items()):
                    if not store.has_batch(b):
                        store.write_batch(b, rows)
            timing.update(world_size=comm.world_size, backend=comm.backend, ranks=[i for _, i in parts])
    done = store.done_batches()
    if final and len(done) == n_batches:
        rows = store.rows(n_batches)
        if len(rows) != n:  # cannot happen with checked batches; a summary must never disagree with its record
            raise BenchError(f"{store.dir}: {len(rows)} stored rows for a run of {n} images; not writing a summary")
        store.write_samples(rows)
        summary = summarize(rows, record)
        if spec.diagnostics:
            summary["diagnostics"], summary["flags"], t_diag = diagnose(spec, record, rows, defense, evalset, device,
                                                                        attacks, probe.flags)
            timing.update(diagnostics_probe_s=round(probe.seconds, 3), diagnostics_s=round(t_diag, 3))
        store.write_summary(summary)
        store.write_timing({**timing, "finished_unix": time.time()})
    else:
        summary = {}
    return RunResult(store.dir, record, summary, resumed, store.notes)


def _scale_limits(spec: RunSpec) -> dict[str, Any]:
    return scale_limits(spec)


def _apply_speed(spec: RunSpec, defense: Any, evalset: Any, device: torch.device) -> "SpeedChoice":
    """Memory format (after its probe on the first batch) and optional compilation, applied to
    ``defense`` in place; the same decision on every rank and every resume (see :mod:`benchmark.speed`)."""
    hi = min(len(evalset), spec.batch_size)
    x = evalset.images[:hi].to(device)
    choice = choose_memory_format(defense, x, requested=spec.memory_format,
                                  seed=derive_seed(spec.seed, "layout-probe-global", 0),
                                  generator=generator(spec.seed, "layout-probe", 0, device=device))
    if spec.compile:
        compile_classifier(defense)
        choice.compiled = True
    return choice


def _attack_precision(spec: RunSpec, defense: Any, attacks: list[Any], evalset: Any,
                      device: torch.device) -> tuple[Any, Any, float]:
    """(the defense the attacks get, the precision check or None for fp32, its seconds).

    With ``spec.precision`` other than fp32, the check runs on the run's first batch (every rank
    and every resume computes the same probe) for the gradient modes the attacks use; see
    :mod:`attacks.precision`. Only attacks get the autocast view: clean and final predictions
    stay fp32."""
    if spec.precision == "fp32" or not attacks:
        return defense, None, 0.0
    t0 = time.perf_counter()
    hi = min(len(evalset), spec.batch_size)
    x, y = evalset.images[:hi].to(device), evalset.labels[:hi].to(device)
    modes = sorted({str(a.params.get("grad_mode", "exact")) for a in attacks})
    attack_defense, check = choose_precision(
        defense, x, y, precision=spec.precision, generator=generator(spec.seed, "precision-probe", 0, device=device),
        global_seed=derive_seed(spec.seed, "precision-probe-global", 0), grad_modes=modes)
    return attack_defense, check, time.perf_counter() - t0


def clean_correct(clean: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Indices of the images that clean predictions of shape (repeats, N) get right by majority
    vote (the rule of :func:`summarize`): the images a run attacks."""
    return ((clean == y.unsqueeze(0)).sum(0) * 2 > clean.shape[0]).nonzero().flatten()


def _reseed_global(seed: int, b: int, purpose: str, *keys: object) -> None:
    """Seed torch's global RNG (all devices) for one purpose of batch ``b``.

    Generators carry the noise of declared defenses; only opaque modules draw from the global
    RNG. An attack may restore the global state it found (AutoAttack's ``fork_rng``), so without
    a fresh seed the final prediction would replay exactly the noise of the attack's first pass."""
    torch.manual_seed(derive_seed(seed, "global", b, purpose, *keys))


def _run_batch(spec: RunSpec, b: int, n: int, evalset: Any, defense: Any, attacks: list[Any],
               device: torch.device, on_progress: Callable[[str, int, int], None] | None,
               attack_defense: Any = None) -> list[dict[str, Any]]:
    """Rows of batch ``b``: a function of (spec, b) only, whichever process computes it.

    ``attack_defense`` (default ``defense``) is what the attacks differentiate, e.g. the bf16
    autocast view; every reported prediction uses ``defense`` itself."""
    predict = attacks_pkg.predict  # looked up per batch: the package's name (tests spy on it there)
    k = spec.eval_repeats
    lo, hi = b * spec.batch_size, min(n, (b + 1) * spec.batch_size)
    x = evalset.images[lo:hi].to(device)
    y = evalset.labels[lo:hi].to(device)

    def check(logits: torch.Tensor) -> None:
        check_logits(logits, b)

    # every prediction pass checks its logits (no separate check pass); torch's global RNG (an opaque
    # module's hidden noise) is reseeded per purpose, so no prediction replays a draw an attack saw
    _reseed_global(spec.seed, b, "clean")
    clean = predict(defense, x, noise_policy="fresh", repeats=k, generator=generator(spec.seed, "clean", b, device=device),
                    on_logits=check)
    rows = [{"id": evalset.ids[lo + i], "label": int(y[i]), "clean": [int(p) for p in clean[:, i]]} for i in range(hi - lo)]
    # Attack only what the clean predictions (reused, not recomputed) get right, as AutoAttack does:
    # a clean-misclassified image is not robust whatever the attack does (see summarize).
    idx = torch.arange(hi - lo, device=device) if spec.attack_all else clean_correct(clean, y)
    attacked = set(idx.tolist())
    for atk in attacks:
        ev = defense.sample_noise(x, generator(spec.seed, "eval-noise", b, atk.name, device=device))  # whole batch: same draws per image
        preds_of: dict[int, list[int]] = {}
        x_adv = x.clone()
        if idx.numel():
            evi = ev.select(idx) if idx.numel() < x.shape[0] else ev
            _reseed_global(spec.seed, b, "attack", atk.name)
            xs = atk(attack_defense if attack_defense is not None else defense, x[idx], y[idx],
                     generator=generator(spec.seed, "attack", b, atk.name, device=device), eval_noise=evi)
            if not torch.isfinite(xs).all():
                raise BenchError(f"attack {atk.name} produced NaN/inf images on batch {b}; stopping")
            x_adv[idx] = xs
            _reseed_global(spec.seed, b, "predict", atk.name)
            preds = predict(defense, xs, noise_policy=atk.noise_policy, repeats=k,
                            generator=generator(spec.seed, "predict", b, atk.name, device=device), fixed_noise=evi,
                            on_logits=check)
            preds_of = {int(j): [int(p) for p in preds[:, c]] for c, j in enumerate(idx.tolist())}
        norms = _norm(x_adv - x, spec.threat)
        for i, row in enumerate(rows):
            if i in attacked:
                row[atk.name] = {"preds": preds_of[i], "norm": norms[i]}
            else:
                row[atk.name] = {"preds": [], "norm": norms[i], "skipped": "clean-misclassified"}
        if on_progress:
            on_progress(atk.name, b, hi - lo)
    return rows


# --------------------------------------------------------------------- aggregation
def _majority(preds: list[int], label: int) -> bool:
    return sum(p == label for p in preds) * 2 > len(preds)


def summarize(rows: list[dict[str, Any]], record: dict[str, Any]) -> dict[str, Any]:
    """Accuracy per attack (majority vote and worst-of-k), worst case over attacks, intervals, gap."""
    names = [a["attack"] for a in record["attacks"]]
    n = len(rows)

    def entry(flags_major: list[bool], flags_worst: list[bool]) -> dict[str, Any]:
        c, w = sum(flags_major), sum(flags_worst)
        lo, hi = clopper_pearson(c, n)
        wlo, whi = clopper_pearson(w, n)
        return {"n": n, "correct": c, "accuracy": c / n if n else 0.0, "ci95": [lo, hi],
                "worst_of_k_correct": w, "worst_of_k_accuracy": w / n if n else 0.0, "worst_of_k_ci95": [wlo, whi]}

    out: dict[str, Any] = {"n": n, "eval_repeats": record["eval_repeats"], "scale": record["scale"], "attacks": {}}
    clean_major = [_majority(r["clean"], r["label"]) for r in rows]
    clean_worst = [all(p == r["label"] for p in r["clean"]) for r in rows]
    out["attacks"]["clean"] = entry(clean_major, clean_worst)

    def survives(r: dict[str, Any], a: str) -> tuple[bool, bool]:
        preds = r[a]["preds"]  # empty when the image was not attacked (clean-misclassified)
        return bool(preds) and _majority(preds, r["label"]), bool(preds) and all(p == r["label"] for p in preds)

    # robust accuracy as in RobustBench/AutoAttack: correct on clean input AND on the adversarial one,
    # so skipping clean-misclassified images changes no number
    flags = {a: [survives(r, a) for r in rows] for a in names}
    for a in names:
        out["attacks"][a] = entry([c and f[0] for c, f in zip(clean_major, flags[a])],
                                  [c and f[1] for c, f in zip(clean_worst, flags[a])])
    if names:
        # a sample is robust only if it is correct on clean input and survives every attack
        major = [clean_major[i] and all(flags[a][i][0] for a in names) for i in range(n)]
        worst = [clean_worst[i] and all(flags[a][i][1] for a in names) for i in range(n)]
        out["worst_case"] = entry(major, worst)
        # one worst case per threat model (gradient mode) when a run mixes them: a BPDA worst case
        # is what a paper's BPDA table reports, and must not absorb the exact-gradient attacks
        modes: dict[str, list[str]] = {}
        for a in record["attacks"]:
            modes.setdefault(str(a.get("params", {}).get("grad_mode", "exact")), []).append(a["attack"])
        if len(modes) > 1:
            out["worst_case_by_grad_mode"] = {
                gm: entry([clean_major[i] and all(flags[a][i][0] for a in ns) for i in range(n)],
                          [clean_worst[i] and all(flags[a][i][1] for a in ns) for i in range(n)])
                for gm, ns in modes.items()}
    out["stochasticity_gap"] = stochasticity_gaps(record, out)
    return out


def stochasticity_gaps(record: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Accuracy under the standard white box (fresh/EOT) minus under DW-box (fixed), same budget."""
    gaps = []
    by = {a["attack"]: a for a in record["attacks"]}

    def budget(a: dict[str, Any]) -> tuple:
        p = a["params"]
        return (a["family"], a["threat"], p.get("eps"), p.get("steps"), p.get("grad_mode"))

    for fa in by.values():
        if NoisePolicy.of(fa["params"]).fixes_any:
            continue
        for xa in by.values():
            if NoisePolicy.of(xa["params"]).fixes_any and budget(xa) == budget(fa):
                acc_f = summary["attacks"][fa["attack"]]["accuracy"]
                acc_x = summary["attacks"][xa["attack"]]["accuracy"]
                gaps.append({"white_box": fa["attack"], "dw_box": xa["attack"], "gap": acc_f - acc_x})
    return gaps
