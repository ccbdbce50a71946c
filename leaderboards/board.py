"""Leaderboards: our stored runs beside the published tables, one table per dataset x threat x scale.

Every number keeps its context: the attack budget, the number of images and the 95% interval
(exact Clopper-Pearson for our runs; for a published number, the interval it would have on the
stated number of images, marked with ~). Runs at a reduced ``--scale`` never share a table with
published numbers. Flags point at what makes a number weaker than it looks (an attack still
gaining at its largest budget, a reduced scale, robust above clean accuracy).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pandas as pd

from attacks.family import LABELS
from attacks.presets import board_column, policy_of
from benchmark.errors import BenchError
from benchmark.stats import clopper_pearson
from benchmark.threats import THREATS, eps_text  # noqa: F401  (eps_text re-exported)

from .published import load_published
from .runs import StoredRun, find_runs

# Column key -> label of the attack families as the board groups them: their one home is the
# family registration (attacks.family, read at each use, so a newly registered family shows).
FAMILY_LABELS = LABELS
FORMATS = ("md", "csv", "html", "json")

# What the attacker differentiates: every board table holds one of these, never two (AToP Sec. 4.3
# attacks "the classifier model" with BPDA through the purifier; our default is exact gradients
# through the whole defense; a stronger threat model must not share a column with a weaker one).
THREAT_MODELS = {"exact": "exact gradients through the whole defense",
                 "bpda": "BPDA: identity backward through the purifier (attacking the classifier)",
                 None: "gradients not stated by the source"}


# ----------------------------------------------------------------------- helpers
def eot_of(params: dict[str, Any]) -> int:
    """EOT draws per gradient step from a noise policy such as ``fixed:all+eot:10``."""
    return policy_of(params).eot


def attack_family(a: dict[str, Any]) -> str:
    """The leaderboard family of a recorded attack (finer than the registry's: FGSM, CW-L-inf and
    DW-box are PGD variants there, but they answer different questions); the registered family
    decides (:func:`attacks.presets.board_column`)."""
    return board_column(a.get("family"), a.get("params", {}))


def threat_model_of(a: dict[str, Any]) -> str:
    """The threat model (a key of :data:`THREAT_MODELS`) of a recorded attack: its gradient mode.
    (BPDA used to be a column of its own; it is now a table of its own, with FGSM, PGD and CW
    columns like the exact-gradient one.)"""
    return "bpda" if a.get("params", {}).get("grad_mode") == "bpda" else "exact"


def approx_interval(acc: float, n: int | None) -> tuple[float, float] | None:
    """95% interval (percent) of a published accuracy on ``n`` images, treating it as k/n."""
    if n is None or n <= 0:
        return None
    lo, hi = clopper_pearson(int(round(acc * n / 100)), n)
    return 100 * lo, 100 * hi


def _budget_value(steps: int | None, eot: int | None) -> int | None:
    return None if steps is None else steps * (eot or 1)


def _budget_text(name: str, steps: int | None, eot: int | None, extra: str = "") -> str:
    bits = [name]
    if steps is not None:
        bits.append(f"{steps} step" + ("s" if steps != 1 else ""))
    if eot and eot > 1:
        bits.append(f"EOT{eot}")
    return " ".join(bits) + (f" ({extra})" if extra else "")


# -------------------------------------------------------------------- measurements
@dataclass
class Entry:
    """One leaderboard row before formatting: a run directory, or a published group."""

    source: str  # "ours" | "published"
    dataset: str
    threat: str
    eps: float | None
    scale: str
    defense: str
    classifier: str
    citation: str
    n: int | None
    clean: float | None
    clean_ci: tuple[float, float] | None
    attacks: list[dict[str, Any]]  # name, family, steps, eot, acc, ci, approx
    worst: float | None = None
    worst_ci: tuple[float, float] | None = None
    approx: bool = False
    gaps: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    threat_model: str | None = "exact"  # a key of THREAT_MODELS: all of the entry's attacks share it


def run_attacks(run: StoredRun) -> list[dict[str, Any]]:
    """One measurement per recorded attack of a stored run: name, leaderboard family, eps, steps,
    EOT draws, accuracy and its 95% interval (percent), correct/n, and the budget as text.

    The board's rows and the accuracy-vs-budget plots (leaderboards/plots.py) read runs through
    this one function, so a plotted point is exactly the number the board shows."""
    rec, summ = run.record, run.summary
    pct = lambda v: 100.0 * float(v)  # noqa: E731
    attacks = []
    by_name = {a["attack"]: a for a in rec.get("attacks", [])}
    for name, a in by_name.items():
        s = summ["attacks"].get(name)
        if s is None:
            continue
        p = a.get("params", {})
        fam = attack_family(a)
        extra = ""
        if fam == "dwbox":
            extra = str(policy_of(p).without_eot())
        elif fam == "autoattack":
            extra = str(p.get("version", ""))
        attacks.append({"name": name, "family": fam, "threat_model": threat_model_of(a), "eps": p.get("eps"), "steps": p.get("steps"), "eot": eot_of(p),
                        "acc": pct(s["accuracy"]), "ci": (pct(s["ci95"][0]), pct(s["ci95"][1])),
                        "correct": s.get("correct"), "n": s.get("n"),
                        "budget": _budget_text(name, p.get("steps"), eot_of(p), extra)})
    return attacks


def entries_from_run(run: StoredRun) -> list[Entry]:
    """The run's board entries: one per threat model among its attacks (a run with exact and BPDA
    attacks gives two rows, each with the worst case of its own attacks: the summary's
    ``worst_case_by_grad_mode``, or recomputed from the per-image rows for a run stored before it)."""
    attacks = run_attacks(run)
    models = list(dict.fromkeys(a["threat_model"] for a in attacks))
    if len(models) <= 1:
        e = entry_from_run(run)
        e.threat_model = models[0] if models else "exact"
        return [e]
    by_mode = run.summary.get("worst_case_by_grad_mode")
    if not isinstance(by_mode, dict):
        by_mode = _resummarized_worst(run)
    out = []
    for tm in models:
        e = entry_from_run(run)
        e.threat_model = tm
        e.attacks = [a for a in e.attacks if a["threat_model"] == tm]
        keep = {a["name"] for a in e.attacks}
        e.gaps = [g for g in e.gaps if all(part.split(":")[0].strip() in keep for part in g.split(" - "))]
        wc = (by_mode or {}).get(tm)
        if wc is None:
            e.worst, e.worst_ci = None, None
            e.notes.append("worst case of this threat model not available (no per-image rows)")
        else:
            e.worst = 100.0 * float(wc["accuracy"])
            e.worst_ci = (100.0 * float(wc["ci95"][0]), 100.0 * float(wc["ci95"][1]))
        out.append(e)
    return out


def _resummarized_worst(run: StoredRun) -> dict[str, Any] | None:
    """``worst_case_by_grad_mode`` of a run stored before the runner wrote it, from its rows."""
    from benchmark.results import RunStore
    from benchmark.runner import summarize

    try:
        return summarize(RunStore(run.dir).read_samples(), run.record).get("worst_case_by_grad_mode")
    except (BenchError, OSError, ValueError, KeyError, TypeError):
        return None


def entry_from_run(run: StoredRun) -> Entry:
    rec, summ = run.record, run.summary
    pct = lambda v: 100.0 * float(v)  # noqa: E731
    attacks = run_attacks(run)
    clean = summ["attacks"].get("clean")
    wc = summ.get("worst_case")
    threat = rec.get("threat", "?")
    eps = run.eps
    if eps is None and threat in ("linf", "l2", "stadv"):
        from benchmark.runner import THREAT_DEFAULTS

        eps = THREAT_DEFAULTS[threat]["eps"]
    info = rec.get("defense_info") or {}
    opts = rec.get("defense_options") or {}
    defense = str(rec.get("defense", "?"))
    if opts:  # another configuration of the defense is another row: name it (e.g. diffpure[steps=10])
        defense += "[" + ",".join(f"{k}={v}" for k, v in sorted(opts.items())) + "]"
    e = Entry(
        source="ours", dataset=rec.get("dataset", "?"), threat=threat, eps=eps, scale=str(rec.get("scale", "full")),
        defense=defense, classifier=str(info.get("classifier") or "-"),
        citation=str(run.dir), n=summ.get("n"),
        clean=pct(clean["accuracy"]) if clean else None,
        clean_ci=(pct(clean["ci95"][0]), pct(clean["ci95"][1])) if clean else None,
        attacks=attacks,
        worst=pct(wc["accuracy"]) if wc else None,
        worst_ci=(pct(wc["ci95"][0]), pct(wc["ci95"][1])) if wc else None,
    )
    for g in summ.get("stochasticity_gap", []):
        e.gaps.append(f"{g['white_box']} - {g['dw_box']}: {100 * g['gap']:+.1f}")
    if e.scale != "full":
        from benchmark.scalecut import cut_text

        cut = cut_text(rec)
        e.flags.append(f"scale: {e.scale}{f' (cut: {cut})' if cut else ''} - not comparable to published")
    for f in summ.get("flags") or [] if isinstance(summ.get("flags"), list) else []:  # benchmark.diagnostics
        if isinstance(f, dict) and isinstance(f.get("id"), str):
            e.flags.append(f"{f['id']}: {f.get('reason', '')} (docs/FLAGS.md#{f['id']})")
    if rec.get("stochastic") and attacks and all(a["eot"] <= 1 and a["family"] != "autoattack" for a in attacks):
        e.flags.append("stochastic defense attacked without EOT")
    used, asked = rec.get("precision", "fp32"), rec.get("precision_requested", "fp32")
    if used != "fp32" or asked != "fp32":  # accuracies come from fp32 passes; only attack gradients differ
        cos = (rec.get("precision_check") or {}).get("min_cosine", "?")
        e.notes.append(f"attack gradients in {used} (min cosine to fp32 {cos} on the first batch)" if used == asked
                       else f"{asked} requested, gradient check failed (min cosine {cos}): attacked in {used}")
    if rec.get("protocol"):
        e.notes.append(f"protocol {rec['protocol']}")
    if rec.get("subset"):
        e.notes.append(f"subset {rec['subset']}")
    return e


def entries_from_published(df: pd.DataFrame) -> list[Entry]:
    """Group published rows (one per attack) into entries: same file, table and group, in one
    dataset, threat and eps."""
    out = []
    keys = ["file", "table", "group", "dataset", "threat", "eps", "grad_mode"]
    for _, g in df.groupby(keys, sort=False, dropna=False):
        first = g.iloc[0]
        ns = {int(v) for v in g["n"].dropna()}
        n = ns.pop() if len(ns) == 1 else None
        cleans = {float(v) for v in g["clean"].dropna()}
        clean = cleans.pop() if len(cleans) == 1 else None
        attacks = []
        for _, r in g.iterrows():
            steps = None if pd.isna(r["steps"]) else int(r["steps"])
            eot = None if pd.isna(r["eot"]) else int(r["eot"])
            rn = None if pd.isna(r["n"]) else int(r["n"])
            attacks.append({"name": r["attack"], "family": r["family"], "steps": steps, "eot": eot,
                            "acc": float(r["robust"]), "ci": approx_interval(float(r["robust"]), rn),
                            "budget": _budget_text(r["attack"], steps, eot)})
        worst = min(a["acc"] for a in attacks)
        rows = "; ".join(dict.fromkeys(str(r) for r in g["row"]))
        e = Entry(
            source="published", dataset=first["dataset"], threat=first["threat"], eps=float(first["eps"]),
            scale="full", defense=str(first["defense"]), classifier=str(first["classifier"]),
            citation=f"{first['paper']}, {first['table']}, row {rows}", n=n, clean=clean,
            clean_ci=approx_interval(clean, n) if clean is not None else None, attacks=attacks,
            worst=worst, worst_ci=approx_interval(worst, n), approx=True,
            threat_model=None if pd.isna(first["grad_mode"]) else str(first["grad_mode"]),
        )
        if len(g) > 1:
            e.notes.append("worst case = lowest of the attacks this table reports")
        e.notes += [str(x) for x in dict.fromkeys(g["note"].dropna())]
        if any(x is True for x in g["extra_data"]):
            e.defense += " [extra data]"
        if clean is not None and any(a["acc"] > clean for a in attacks):
            e.flags.append("robust above clean accuracy (as printed)")
        # the same table's white-box PGD beside DW-box rows at the same budget: the stochasticity gap
        for d in (a for a in attacks if a["family"] == "dwbox"):
            for w in (a for a in attacks if a["family"] == "pgd" and a["steps"] == d["steps"] and a["eot"] == d["eot"]):
                e.gaps.append(f"{w['name']} - {d['name']}: {w['acc'] - d['acc']:+.2f}")
        out.append(e)
    return out


def _worst_flags(e: Entry) -> list[str]:
    if len(e.attacks) > 1 and any(a["family"] == "dwbox" for a in e.attacks):
        return ["worst case includes DW-box (the attacker knows the defense's noise)"]
    return []


def family_curves(attacks: Iterable[dict[str, Any]],
                  x: Callable[[dict[str, Any]], float | None]) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    """Attack measurements by leaderboard family as curves over ``x`` (a budget, eps, steps or EOT):
    per family, (x, measurement) sorted by x, keeping at each x the lowest accuracy (the strongest
    attack there). Measurements whose x is None are left out. Shared by :func:`under_attacked`
    and the accuracy-vs-budget plots, so both look at the same points."""
    fams: dict[str, dict[float, dict[str, Any]]] = {}
    for a in attacks:
        v = x(a)
        if v is None:
            continue
        at = fams.setdefault(a["family"], {})
        if v not in at or a["acc"] < at[v]["acc"]:
            at[v] = a
    return {fam: sorted(at.items(), key=lambda kv: kv[0]) for fam, at in fams.items()}


def still_falling(prev: dict[str, Any], top: dict[str, Any]) -> float | None:
    """The half-width of ``top``'s interval when accuracy dropped from ``prev`` (a smaller budget)
    to ``top`` (the largest) by more than it: the attack had not converged. None otherwise."""
    if top["ci"] is None:
        return None
    half = (top["ci"][1] - top["ci"][0]) / 2
    return half if prev["acc"] - top["acc"] > half else None


def under_attacked(e: Entry) -> list[str]:
    """Flag a family whose largest budget is lower than the next one by more than its interval's
    half-width: the attack had not converged there, so it may not have converged at all."""
    flags = []
    curves = family_curves(e.attacks, lambda a: _budget_value(a["steps"], a["eot"]))
    for fam, points in curves.items():
        if len(points) < 2:
            continue
        prev, top = points[-2][1], points[-1][1]
        half = still_falling(prev, top)
        if half is not None:
            flags.append(f"under-attacked: {FAMILY_LABELS.get(fam, fam)} accuracy still falling at the largest "
                         f"budget ({prev['budget']}: {prev['acc']:.1f} -> {top['budget']}: {top['acc']:.1f}, "
                         f"interval half-width {half:.1f})")
    return flags


# -------------------------------------------------------------------------- tables
@dataclass
class BoardTable:
    dataset: str
    threat: str
    eps: float | None
    scale: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    threat_model: str | None = "exact"

    @property
    def title(self) -> str:
        sc = ("full (the published setting)" if self.scale == "full" else
              f"{self.scale} (reduced budget: not comparable to published)")
        return (f"{self.dataset} | {self.threat} eps={eps_text(self.eps, self.threat)} | scale {sc} | "
                f"{THREAT_MODELS.get(self.threat_model, str(self.threat_model))}")


def _frame(entries: list[Entry]) -> pd.DataFrame:
    fams = [f for f in FAMILY_LABELS if any(a["family"] == f for e in entries for a in e.attacks)]
    rows = []
    for e in entries:
        r: dict[str, Any] = {"source": e.source, "defense": e.defense, "classifier": e.classifier,
                             "clean": e.clean}
        for f in fams:
            accs = [a["acc"] for a in e.attacks if a["family"] == f]
            r[FAMILY_LABELS[f]] = min(accs) if accs else None
        r["worst case"] = e.worst
        ci = e.worst_ci
        r["ci95_lo"], r["ci95_hi"] = (ci if ci else (None, None))
        r["ci_approx"] = e.approx
        r["budget"] = "; ".join(a["budget"] for a in e.attacks)
        r["n"] = e.n
        r["scale"] = e.scale
        r["stochasticity gap"] = "; ".join(e.gaps)
        r["flags"] = "; ".join(e.flags + under_attacked(e) + _worst_flags(e))
        r["citation"] = e.citation
        r["notes"] = "; ".join(e.notes)
        rows.append(r)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values("worst case", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    return df


def build_board(dataset: str, threat: str | None = None, results: str = "runs", *,
                published: pd.DataFrame | None = None) -> tuple[list[BoardTable], list[str]]:
    """The tables for ``dataset`` (every threat, or ``threat``) and notes for the whole board."""
    if threat is not None and threat not in THREATS:
        raise BenchError(f"unknown threat {threat!r}; choose from {', '.join(THREATS)}")
    pub = load_published(dataset) if published is None else published[published["dataset"] == dataset]
    runs, notes = find_runs(results)
    ours = [e for r in runs if r.record.get("dataset") == dataset for e in entries_from_run(r)]
    if not ours:
        notes.append(f"no local run for {dataset} under {results}/: only published rows are shown")
    entries = ours + entries_from_published(pub)
    if threat is not None:
        entries = [e for e in entries if e.threat == threat]
    groups: dict[tuple, list[Entry]] = {}
    for e in entries:
        key = (e.threat, None if e.eps is None else round(e.eps, 5), e.scale, e.threat_model)
        groups.setdefault(key, []).append(e)
    order = {t: i for i, t in enumerate(THREATS)}
    tm_order = {m: i for i, m in enumerate(THREAT_MODELS)}
    tables = []
    for (thr, _, scale, tm), es in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][2] != "full",
                                                                         kv[0][2], kv[0][1] or 0,
                                                                         tm_order.get(kv[0][3], 9))):
        t = BoardTable(dataset, thr, es[0].eps, scale, _frame(es), threat_model=tm)
        if not any(e.source == "ours" for e in es):
            t.notes.append("no local run in this setting")
        if not any(e.source == "published" for e in es):
            t.notes.append("no published numbers in this setting")
        tables.append(t)
    if not tables:
        notes.append(f"nothing to show for {dataset}" + (f" / {threat}" if threat else ""))
    return tables, notes


# ------------------------------------------------------------------------ rendering
def _fmt(v: Any, source: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.2f}" if source == "published" else f"{v:.1f}"
    return str(v)


def display_rows(t: BoardTable) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells (the interval as one column)."""
    df = t.frame
    if not len(df):
        return [], []
    skip = {"ci95_lo", "ci95_hi", "ci_approx", "notes"}
    cols = []
    for c in df.columns:
        if c in skip:
            continue
        cols.append(c)
        if c == "worst case":
            cols.append("95% CI")
    body = []
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            if c == "95% CI":
                if r["ci95_lo"] is None or pd.isna(r["ci95_lo"]):
                    cells.append("n/a")
                else:
                    dec = 1
                    cells.append(("~" if r["ci_approx"] else "") + f"[{r['ci95_lo']:.{dec}f}, {r['ci95_hi']:.{dec}f}]")
            elif c == "n":
                cells.append("" if r["n"] is None or pd.isna(r["n"]) else str(int(r["n"])))
            else:
                cells.append(_fmt(r[c], r["source"]))
        body.append(cells)
    return cols, body


def render_md(tables: list[BoardTable], notes: list[str], header: str = "") -> str:
    out = [header] if header else []
    for n in notes:
        out.append(f"> {n}")
    if notes:
        out.append("")
    for t in tables:
        out.append(f"### {t.title}\n")
        for n in t.notes:
            out.append(f"> {n}\n")
        cols, body = display_rows(t)
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        for cells in body:
            out.append("| " + " | ".join(esc(c) for c in cells) + " |")
        out.append("")
    out.append("95% CI: of the worst case; exact Clopper-Pearson for our runs; ~ = the interval a published "
               "accuracy would have on its stated number of images (n/a: n not stated).")
    return "\n".join(out) + "\n"


def _long(tables: list[BoardTable]) -> pd.DataFrame:
    parts = []
    for t in tables:
        df = t.frame.copy()
        df.insert(0, "table", t.title)
        df.insert(1, "dataset", t.dataset)
        df.insert(2, "threat", t.threat)
        df.insert(3, "eps", t.eps)
        parts.append(df)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def render_csv(tables: list[BoardTable], notes: list[str]) -> str:
    return _long(tables).to_csv(index=False)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):  # numpy scalar
        return v.item()
    return v


def render_json(tables: list[BoardTable], notes: list[str]) -> str:
    out = {"notes": notes, "tables": []}
    for t in tables:
        rows = [{k: _clean(v) for k, v in r.items()} for r in t.frame.to_dict(orient="records")]
        out["tables"].append({"title": t.title, "dataset": t.dataset, "threat": t.threat, "eps": t.eps,
                              "scale": t.scale, "notes": t.notes, "rows": rows})
    return json.dumps(out, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; vertical-align: top; }
th { background: #eee; cursor: pointer; user-select: none; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
tr.ours td { background: #eef6ee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.flags { color: #a40000; }
.note { color: #555; font-style: italic; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% for n in notes %}<p class="note">{{ n }}</p>
{% endfor %}
{% for t in tables %}
<h2>{{ t.title }}</h2>
{% for n in t.notes %}<p class="note">{{ n }}</p>
{% endfor %}
<table class="sortable">
<thead><tr>{% for c in t.cols %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in t.rows %}<tr class="{{ r.source }}"{% if r.notes %} title="{{ r.notes }}"{% endif %}>{% for c in r.cells %}<td class="{{ c.cls }}"{% if c.key is not none %} data-sort="{{ c.key }}"{% endif %}>{{ c.text }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% endfor %}
<p class="note">95% CI: of the worst case; exact Clopper-Pearson for our runs; ~ = the interval a published
accuracy would have on its stated number of images (n/a: n not stated). Click a column header to sort.</p>
<script>
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        var k = cell.getAttribute("data-sort");
        if (k !== null && k !== "") { return parseFloat(k); }
        if (cell.classList.contains("num")) { return ""; }  // n/a or blank: sorts last
        return cell.textContent.trim().toLowerCase();
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var xe = (x === "" || (typeof x === "number" && isNaN(x)));
        var ye = (y === "" || (typeof y === "number" && isNaN(y)));
        if (xe !== ye) { return xe ? 1 : -1; }
        if (x < y) { return asc ? -1 : 1; }
        if (x > y) { return asc ? 1 : -1; }
        return 0;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
</script>
</body>
</html>
"""

def numeric_columns() -> set[str]:
    """The board's numeric columns (click-sorted as numbers), the family columns included."""
    return {"clean", "worst case", "n", *FAMILY_LABELS.values()}


def render_html(tables: list[BoardTable], notes: list[str], title: str = "purifybench leaderboard") -> str:
    """A static, self-contained page (no network resources) with click-to-sort columns."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    NUMERIC = numeric_columns()
    views = []
    for t in tables:
        cols, body = display_rows(t)
        rows = []
        for (_, r), cells in zip(t.frame.iterrows(), body):
            out = []
            for c, text in zip(cols, cells):
                key = None
                if c in NUMERIC and c in r.index and r[c] is not None and not pd.isna(r[c]):
                    key = float(r[c])
                elif c == "95% CI" and r["ci95_lo"] is not None and not pd.isna(r["ci95_lo"]):
                    key = float(r["ci95_lo"])
                cls = "num" if (c in NUMERIC or c == "95% CI") else ("flags" if c == "flags" else "")
                out.append({"text": text, "key": key, "cls": cls})
            rows.append({"source": r["source"], "notes": r["notes"], "cells": out})
        views.append({"title": t.title, "notes": t.notes, "cols": cols, "rows": rows})
    return env.from_string(HTML_TEMPLATE).render(title=title, notes=notes, tables=views)


def render(tables: list[BoardTable], notes: list[str], fmt: str, *, title: str = "purifybench leaderboard") -> str:
    if fmt == "md":
        return render_md(tables, notes, header=f"## {title}\n")
    if fmt == "csv":
        return render_csv(tables, notes)
    if fmt == "json":
        return render_json(tables, notes)
    if fmt == "html":
        return render_html(tables, notes, title=title)
    raise BenchError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
