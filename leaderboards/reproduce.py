"""``bench reproduce PROTOCOL``: run a published protocol's defenses, compare with the paper, judge its claims.

Each defense of the protocol (``configs/protocols/NAME.yaml``, ``defenses:``) runs through
:func:`benchmark.runner.run`; a defense that cannot be built (weights not shipped, unknown
name: its factory raises BenchError) is skipped with the reason. Our numbers are printed beside
the published rows mapped onto the protocol (``protocol``/``ours``/``protocol_attack`` in
``leaderboards/published/*.yaml``), and each claim of the protocol's ``claims:`` list gets a
verdict. Both sides of a claim are measured on the same images, so the verdict comes from a
**paired** test: the exact McNemar test (:func:`benchmark.stats.mcnemar_exact`) on the images
the two runs share, matched by image id, each image's outcome by the runner's own rule:

- ``reproduced``: p < 0.05 and the difference goes the claimed way;
- ``not reproduced``: p < 0.05 and it goes the other way;
- ``inconclusive``: p >= 0.05 (more images would be needed to tell);
- ``not evaluated``: a side was skipped or not run.

The two 95% Clopper-Pearson intervals are printed beside p. Only when per-image rows are not
available for both sides (no shared image ids, rows missing) do the intervals decide
(``reproduced`` / ``not reproduced`` when disjoint, ``inconclusive`` when they overlap), and
the verdict says so: every verdict names the test that decided it.

A claim is ``{claim: text, left: DEFENSE, right: DEFENSE, attack: NAME, relation: ">="}``
(``>=``, ``>``, ``<=``, ``<``); ``attack`` is one of the protocol's attacks, ``clean`` or
``worst_case`` (or ``worst_case:bpda`` / ``worst_case:exact``: the worst case of one threat
model's attacks, for a protocol that runs the paper's threat model beside ours), or give
``left_attack`` / ``right_attack`` to compare two attacks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from benchmark.errors import BenchError
from benchmark.stats import mcnemar_exact
from benchmark.build import make_defense, resolve_device
from benchmark.protocols import apply_protocol, load_protocol
from benchmark.results import RunStore, check_writable
from benchmark.battery import BATTERY
from benchmark.runner import SCALES, RunSpec, run, spec_hash, validate_spec
from .published import load_published

RELATIONS = (">=", ">", "<=", "<")
ALPHA = 0.05  # two-sided level of the paired test (and 95% for the intervals)
MCNEMAR = "exact McNemar"
INTERVALS = "95% intervals"
CLAIM_KEYS = ("claim", "left", "right", "attack", "left_attack", "right_attack", "relation")


@dataclass
class Claim:
    text: str
    left: str
    right: str
    left_attack: str
    right_attack: str
    relation: str


@dataclass
class Outcome:
    defense: str
    dir: Path | None = None
    summary: dict[str, Any] | None = None
    skipped: str | None = None
    record: dict[str, Any] | None = None
    rows: list[dict[str, Any]] | None = None  # per-image rows (samples.jsonl), for the paired test
    _by_image: dict[str, dict[str, bool]] | None = field(default=None, init=False, repr=False, compare=False)

    def correct_by_image(self, metric: str) -> tuple[dict[str, bool] | None, str]:
        """Image id -> correct under ``metric`` (an attack, ``clean`` or ``worst_case``), or
        (None, why not). Each image is scored by :func:`benchmark.runner.summarize` on that
        image alone, so the rule is the runner's own, and the counts must add up to the
        stored summary's."""
        if self.rows is None or self.record is None:
            return None, f"{self.defense} has no per-image rows"
        if self._by_image is None:
            from benchmark.runner import summarize

            by: dict[str, dict[str, bool]] = {}
            try:
                for r in self.rows:
                    one = summarize([r], self.record)
                    for m in ("clean", "worst_case", *WORST_BY_MODE, *one.get("attacks", {})):
                        e = _metric(one, m, self.record)
                        if e is not None:
                            by.setdefault(m, {})[str(r["id"])] = bool(e["correct"])
            except (KeyError, TypeError, ValueError, IndexError) as e:
                return None, f"{self.defense}'s rows could not be scored ({type(e).__name__})"
            self._by_image = by
        got = self._by_image.get(metric)
        stored = _metric(self.summary or {}, metric, self.record)
        if got is None or stored is None:
            return None, f"{self.defense} has no per-image {metric} outcome"
        if len(got) != stored.get("n") or sum(got.values()) != stored.get("correct"):
            return None, f"{self.defense}'s rows do not add up to its {metric} summary"
        return got, ""


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    detail: str
    test: str = ""  # what decided: MCNEMAR or INTERVALS ("" when not evaluated)
    p: float | None = None  # exact McNemar p (also when the intervals decided, if it could be computed)
    paired: int | None = None  # images in the paired comparison
    discordant: tuple[int, int] | None = None  # (only left correct, only right correct)


@dataclass
class Report:
    protocol: Any
    scale: str
    outcomes: list[Outcome]
    comparison: pd.DataFrame
    verdicts: list[Verdict]
    notes: list[str] = field(default_factory=list)


def parse_claims(protocol: Any) -> list[Claim]:
    """The protocol's claims, checked; BenchError names the claim and the problem."""
    metrics = {"clean", "worst_case", *WORST_BY_MODE, *protocol.all_attacks()}
    out = []
    for i, raw in enumerate(protocol.claims or []):
        where = f"protocol {protocol.name} claim {i + 1}"
        if not isinstance(raw, dict):
            raise BenchError(f"{where}: expected a mapping")
        unknown = sorted(set(raw) - set(CLAIM_KEYS))
        if unknown:
            raise BenchError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(CLAIM_KEYS)}")
        for k in ("claim", "left", "right", "relation"):
            if not isinstance(raw.get(k), str) or not raw[k]:
                raise BenchError(f"{where}: {k!r} is required (a string)")
        if raw["relation"] not in RELATIONS:
            raise BenchError(f"{where}: relation must be one of {' '.join(RELATIONS)}, got {raw['relation']!r}")
        la, ra = raw.get("left_attack", raw.get("attack")), raw.get("right_attack", raw.get("attack"))
        for side, a in (("left", la), ("right", ra)):
            if a is None:
                raise BenchError(f"{where}: give 'attack' (or 'left_attack' and 'right_attack')")
            if a not in metrics:
                raise BenchError(f"{where}: {side} attack {a!r} is not in the protocol; "
                                 f"choose from {', '.join(sorted(metrics))}")
        out.append(Claim(raw["claim"], raw["left"], raw["right"], la, ra, raw["relation"]))
    return out


GRAD_MODES = ("exact", "bpda")
WORST_BY_MODE = tuple(f"worst_case:{gm}" for gm in GRAD_MODES)  # the worst case of one threat model's attacks


def _metric(summary: dict[str, Any], name: str, record: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The summary entry of ``name``: an attack, ``clean``, ``worst_case``, or ``worst_case:<grad
    mode>`` (the summary's per-threat-model worst case; the plain worst case when every attack of
    the ``record`` has that gradient mode)."""
    if name == "worst_case":
        return summary.get("worst_case")
    if name.startswith("worst_case:"):
        gm = name.split(":", 1)[1]
        by = summary.get("worst_case_by_grad_mode")
        if isinstance(by, dict):
            return by.get(gm)
        modes = {str(a.get("params", {}).get("grad_mode", "exact")) for a in (record or {}).get("attacks", [])}
        return summary.get("worst_case") if modes == {gm} else None
    return summary.get("attacks", {}).get(name)


def _same_attack(left: Outcome, la: str, right: Outcome, ra: str) -> str:
    """The shared parameters when two differently named attacks of one defense ran identically
    (a scale's caps can make PGD-200+EOT-20 and PGD-20+EOT-10 both PGD-10+EOT-4), else ""."""
    if la == ra or left.defense.partition("@")[0] != right.defense.partition("@")[0]:
        return ""
    def params(o: Outcome, a: str) -> dict | None:
        for r in (o.record or {}).get("attacks", []):
            if r.get("attack") == a:
                return {k: v for k, v in (r.get("params") or {}).items()}
        return None
    lp, rp = params(left, la), params(right, ra)
    if lp is None or rp is None or lp != rp:
        return ""
    return ", ".join(f"{k}={lp[k]}" for k in ("steps", "noise_policy") if k in lp) or "all"


def judge(claim: Claim, outcomes: dict[str, Outcome], scale: str, attacks_cut: bool = False) -> Verdict:
    """The claim's verdict: the exact McNemar test on the images both sides share when their
    per-image rows are available, else the two 95% intervals; the interval view is always in
    the detail, and ``test`` names what decided. ``attacks_cut``: only some of the protocol's
    attacks ran (``--attacks``), so a worst case is not the protocol's and is not judged."""
    for a in (claim.left_attack, claim.right_attack):
        if attacks_cut and a.startswith("worst_case"):
            return Verdict(claim, "not evaluated", f"{a} needs every attack of the protocol; --attacks ran a subset")
    sides = []
    for name, attack in ((claim.left, claim.left_attack), (claim.right, claim.right_attack)):
        o = outcomes.get(name)
        if o is None:
            return Verdict(claim, "not evaluated", f"{name} was not run (not among the selected defenses)")
        if o.skipped:
            return Verdict(claim, "not evaluated", f"{name} skipped: {o.skipped}")
        m = _metric(o.summary or {}, attack, o.record)
        if m is None:
            return Verdict(claim, "not evaluated", f"{name} has no {attack} result")
        sides.append((name, attack, 100 * m["accuracy"], 100 * m["ci95"][0], 100 * m["ci95"][1]))
    same = _same_attack(outcomes[claim.left], claim.left_attack, outcomes[claim.right], claim.right_attack)
    if same:
        return Verdict(claim, "not evaluated", f"{claim.left_attack} and {claim.right_attack} ran with the same "
                       f"parameters ({same}) at scale {scale}: the claim compares two budgets, run it at a "
                       "scale that keeps them apart")
    (ln, la, lv, llo, lhi), (rn, ra, rv, rlo, rhi) = sides
    overlap = llo <= rhi and rlo <= lhi
    detail = (f"{ln} {la} {lv:.1f} [{llo:.1f}, {lhi:.1f}] {claim.relation} "
              f"{rn} {ra} {rv:.1f} [{rlo:.1f}, {rhi:.1f}]; intervals {'overlap' if overlap else 'disjoint'}")
    if scale != "full":
        detail += f" (scale {scale}: not the published setting)"
    better = claim.relation in (">=", ">")  # the claim says left is the more accurate side

    left, why = outcomes[claim.left].correct_by_image(claim.left_attack)
    right, why_r = outcomes[claim.right].correct_by_image(claim.right_attack) if left is not None else (None, "")
    common = sorted(set(left) & set(right)) if left is not None and right is not None else []
    if common:
        b = sum(left[i] and not right[i] for i in common)
        c = sum(right[i] and not left[i] for i in common)
        p = mcnemar_exact(b, c)
        partial = "" if len(common) == len(left) == len(right) else f" (the {len(common)} images both runs share)"
        detail += (f"; exact McNemar on {len(common)} paired images{partial}: {b} right only under {ln} {la}, "
                   f"{c} only under {rn} {ra}, p = {p:.3g}")
        if p >= ALPHA:
            verdict = "inconclusive"
        else:
            verdict = "reproduced" if (b > c) == better else "not reproduced"
        return Verdict(claim, verdict, detail + f"; decided by the {MCNEMAR} test (paired, two-sided, "
                       f"alpha {ALPHA:g})", MCNEMAR, p, len(common), (b, c))
    why = why or why_r or "the two runs share no image id"
    detail += f"; no paired test ({why}); decided by the {INTERVALS}"
    if overlap:
        return Verdict(claim, "inconclusive", detail, INTERVALS)
    holds = {">=": lv >= rv, ">": lv > rv, "<=": lv <= rv, "<": lv < rv}[claim.relation]
    return Verdict(claim, "reproduced" if holds else "not reproduced", detail, INTERVALS)


def comparison(protocol: Any, outcomes: list[Outcome], published: pd.DataFrame) -> pd.DataFrame:
    """Our accuracy beside the published one, per defense and metric (percent)."""
    pub = (published[published["protocol"].map(lambda ps: protocol.name in (ps or ()))]
           if len(published) else published)
    rows = []
    for o in outcomes:
        base, _, threat = o.defense.partition("@")  # DEFENSE@THREAT: an extra threat's run of DEFENSE
        mine = pub[pub["ours"] == base] if len(pub) else pub
        if len(mine) and "threat" in mine:
            mine = mine[mine["threat"] == (threat or protocol.threat)]  # a run shows its own threat's rows
        own = protocol.attacks_of(threat if threat in protocol.extra_threats else None)
        for metric in ("clean", *own, "worst_case", *WORST_BY_MODE):
            if metric == "clean":
                vals = [v for v in mine["clean"].dropna()] if len(mine) else []
                p_val, p_cite = (float(vals[0]), mine[mine["clean"].notna()].iloc[0]["citation"]) if vals else (None, "")
            elif len(mine) and metric in set(mine["protocol_attack"].dropna()):
                r = mine[mine["protocol_attack"] == metric].iloc[0]
                p_val, p_cite = float(r["robust"]), str(r["citation"])
            else:
                p_val, p_cite = None, ""
            row: dict[str, Any] = {"defense": o.defense, "metric": metric, "ours": None, "ci95_lo": None,
                                   "ci95_hi": None, "n": None, "published": p_val, "delta": None,
                                   "published_in_ci": None, "citation": p_cite,
                                   "status": "skipped (see notes)" if o.skipped else ""}
            if metric == "worst_case" and "worst_case_by_grad_mode" in (o.summary or {}):
                continue  # a run mixing threat models: only each threat model's own worst case is shown
            m = _metric(o.summary or {}, metric, o.record) if not o.skipped else None
            if m is not None:
                row.update(ours=100 * m["accuracy"], ci95_lo=100 * m["ci95"][0], ci95_hi=100 * m["ci95"][1], n=m["n"])
                if p_val is not None:
                    row["delta"] = row["ours"] - p_val
                    row["published_in_ci"] = bool(row["ci95_lo"] <= p_val <= row["ci95_hi"])
            if m is None and p_val is None:
                continue
            rows.append(row)
        if o.skipped and not any(r["defense"] == o.defense for r in rows):
            rows.append({"defense": o.defense, "metric": "-", "ours": None, "ci95_lo": None, "ci95_hi": None,
                         "n": None, "published": None, "delta": None, "published_in_ci": None, "citation": "",
                         "status": "skipped (see notes)"})
    return pd.DataFrame(rows, columns=["defense", "metric", "ours", "ci95_lo", "ci95_hi", "n", "published", "delta",
                                       "published_in_ci", "citation", "status"])


def reproduce(
    protocol_name: str,
    *,
    scale: str = "cpu",
    defenses: list[str] | None = None,
    device: str = "cpu",
    results: str | Path = "runs",
    batch_size: int = 64,
    seed: int = 0,
    data_root: str | None = None,
    n: int | None = None,
    attacks: list[str] | None = None,
    diagnostics: bool = True,
    published: pd.DataFrame | None = None,
    on_note: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Report:
    """Run the protocol's defenses (and each extra threat's run, named ``DEFENSE@THREAT``) and judge its claims.

    ``n``: the first n images of the protocol's subset, instead of the scale's image limit (the
    claims table runs n = 512 at the cpu scale's attack budgets). ``attacks``: only these of the
    protocol's attacks (a claim on another one is "not evaluated"). ``diagnostics``: the post-run
    attack-failure probes (they can cost as much as the attack)."""
    note = on_note or (lambda s: None)
    p = load_protocol(protocol_name)
    claims = parse_claims(p)
    names = defenses if defenses else list(p.defenses)
    if not names:
        raise BenchError(f"protocol {p.name} lists no defenses; pass --defenses a,b")
    if defenses:  # an unknown name is an error, not a claim "not evaluated"
        from benchmark.registry import DEFENSES, load_builtins

        load_builtins()
        for name in names:
            if name not in p.defenses and ":" not in name and name not in DEFENSES:
                raise BenchError(f"--defenses: unknown defense {name!r}; protocol {p.name} lists "
                                 f"{', '.join(p.defenses) or 'none'} (any registered defense or plugin may be added)")
    if scale not in SCALES:
        raise BenchError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise BenchError(f"--n must be a positive number of images, got {n!r}")
    runs = p.runs()
    if attacks is not None:
        known = p.all_attacks()
        bad = [a for a in attacks if a not in known]
        if bad:
            raise BenchError(f"--attacks: {bad[0]!r} is not an attack of protocol {p.name}; it has {', '.join(known)}")
    dev = resolve_device(device)
    notes: list[str] = []
    out_root = check_writable(Path(results) / "reproduce" / p.name)
    outcomes: list[Outcome] = []
    evalsets: dict[tuple, Any] = {}
    for name in names:
        for threat, suffix in runs:
            spec = apply_protocol(RunSpec(defense=name, scale=scale, batch_size=batch_size, seed=seed,
                                          data_root=data_root, diagnostics=diagnostics), protocol_name, threat=threat)
            if attacks is not None:
                spec.attacks = [a for a in spec.attacks or [] if a in attacks]
                if not spec.attacks:
                    continue  # none of this threat's attacks asked for
            validate_spec(spec)
            BATTERY.apply_cut(spec)  # a defense's own cut at this scale (benchmark.scalecut), recorded
            key = (spec.dataset, spec.subset, spec.source, spec.data_root, n or BATTERY.limits(spec).get("n"))
            if key not in evalsets:
                evalsets[key] = _evalset(spec, n, notes, note)
            evalset = evalsets[key]
            label = name + suffix
            try:
                defense = make_defense(name, dataset=spec.dataset, device=dev, checkpoint=spec.checkpoint,
                                       options=spec.defense_options)
            except BenchError as e:
                outcomes.append(Outcome(label, skipped=str(e)))
                notes.append(f"skipped {label}: {e}")
                note(f"skipped {label}: {e}")
                continue
            safe = name.replace(":", "_").replace("/", "_").replace(".py", "")
            tail = f"-n{len(evalset)}" if n is not None else ""  # the image count is not in the spec hash
            out = out_root / f"{safe}-{spec.dataset}-{spec.threat}-{scale}-{spec_hash(spec)[:8]}{tail}"
            note(f"running {label} ({len(evalset)} images, attacks {', '.join(spec.attacks or [])}) -> {out}")
            res = run(spec, out=out, device=dev, defense=defense, evalset=evalset, on_progress=on_progress)
            outcomes.append(Outcome(label, dir=res.dir, summary=res.summary, record=res.record,
                                    rows=RunStore(res.dir).read_samples()))
    pub = load_published() if published is None else published
    by_name = {o.defense: o for o in outcomes}
    verdicts = [judge(c, by_name, scale, attacks_cut=attacks is not None) for c in claims]
    if not claims:
        notes.append(f"protocol {p.name} states no claims")
    return Report(p, scale, outcomes, comparison(p, outcomes, pub), verdicts, notes)


def _evalset(spec: RunSpec, n: int | None, notes: list[str], note: Callable[[str], None]) -> Any:
    """The run's images: the battery's scale limit, or the first ``n`` of the protocol's subset."""
    ev, msg = BATTERY.evalset(spec, cut_given_subset=True, n=n)  # the image limit: the battery's one rule
    if msg:
        notes.append(msg)
        note(msg)
    return ev


def _f(v: Any, fmt: str = ".1f") -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else format(v, fmt)


def report_tables(rep: Report) -> list[Any]:
    """Rich tables: ours vs published, then the claims' verdicts."""
    from rich.table import Table

    t = Table(title=f"{rep.protocol.name} at scale {rep.scale}: ours vs published (percent)",
              caption=f"{rep.protocol.citation}. 95% CI: Clopper-Pearson on our images"
              + ("" if rep.scale == "full" else f"; scale {rep.scale} is not the published setting"))
    for c in ("defense", "metric", "ours", "95% CI", "n", "published", "delta", "published in CI", "note"):
        t.add_column(c, overflow="fold", justify="right" if c in ("ours", "n", "published", "delta") else "left")
    for _, r in rep.comparison.iterrows():
        ci = "" if r["ci95_lo"] is None or pd.isna(r["ci95_lo"]) else f"[{r['ci95_lo']:.1f}, {r['ci95_hi']:.1f}]"
        inci = "" if r["published_in_ci"] is None or pd.isna(r["published_in_ci"]) else ("yes" if r["published_in_ci"] else "no")
        n = "" if r["n"] is None or pd.isna(r["n"]) else str(int(r["n"]))
        t.add_row(r["defense"], r["metric"], _f(r["ours"]), ci, n, _f(r["published"], ".2f"),
                  _f(r["delta"], "+.1f"), inci, r["status"] or r["citation"])
    v = Table(title=f"claims of {rep.protocol.name}",
              caption=f"decided by the exact McNemar test on the same images (paired, two-sided, alpha {ALPHA:g}); "
                      "the 95% intervals only where per-image rows are missing")
    for c in ("claim", "verdict", "decided by", "McNemar p", "evidence"):
        v.add_column(c, overflow="fold", justify="right" if c == "McNemar p" else "left")
    colour = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow"}
    for x in rep.verdicts:
        c = colour.get(x.verdict)
        v.add_row(x.claim.text, f"[{c}]{x.verdict}[/]" if c else x.verdict, x.test,
                  "" if x.p is None else f"{x.p:.3g}", x.detail)
    return [t, v]
