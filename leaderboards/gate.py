"""The CI regression gate (``bench check``): stored accuracies against a baseline YAML.

A baseline lists entries; each selects stored runs (defense, dataset, threat, scale, optionally
protocol) and one number in them (an attack name, ``clean`` or ``worst_case``), with the
expected accuracy and a tolerance, both in percent::

    entries:
      - {defense: standard, dataset: cifar10, threat: linf, attack: pgd, scale: cpu,
         expected: 0.0, tolerance: 1.0}

An entry fails when the stored number differs from ``expected`` by more than ``tolerance``
points in *either* direction. A drop is a weaker defense or a broken model; a rise of robust
accuracy is the regression that matters most for a benchmark, an attack that got weaker, so it
fails too (change the baseline deliberately when a number should move). The gate's runs are
deterministic on fixed images and seeds, so the tolerance only absorbs numeric differences
between machines and library versions: it is required, finite and >= 0 (a missing, negative or
NaN tolerance is bad input, never a disabled entry). The stored run's 95% interval is shown
beside it, to judge how large a change is, not to excuse it. When several runs match, the most
recently finished one whose record verifies (complete, ``run_hash`` matching its contents; see
``leaderboards.runs``) is checked. A missing file, bad YAML, or an entry matching no stored run
is bad input (BenchError).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.resources import resolve_config_path

from .runs import StoredRun, find_runs


@dataclass
class BaselineEntry:
    defense: str
    dataset: str
    threat: str
    attack: str
    scale: str
    expected: float
    tolerance: float
    protocol: str | None = None

    def selector(self) -> str:
        s = f"{self.defense} / {self.dataset} / {self.threat} / {self.attack} / scale {self.scale}"
        return s + (f" / protocol {self.protocol}" if self.protocol else "")


@dataclass
class CheckRow:
    entry: BaselineEntry
    run: StoredRun
    stored: float  # percent
    ci: tuple[float, float]  # percent

    @property
    def allowed(self) -> float:
        """The largest change either way that passes, percent."""
        return self.entry.tolerance

    @property
    def diff(self) -> float:
        return self.stored - self.entry.expected

    @property
    def failed(self) -> bool:
        return abs(self.diff) > self.allowed + 1e-9  # k/n in percent is not exact in binary

    @property
    def status(self) -> str:
        if not self.failed:
            return "ok"
        return "REGRESSION: drop" if self.diff < 0 else "REGRESSION: rise (weaker attack?)"


def load_baseline(path: str | Path) -> list[BaselineEntry]:
    from benchmark.config import read_yaml

    p = resolve_config_path(path)  # configs/ci/baseline.yaml also from outside the checkout
    if not p.exists():
        raise BenchError(f"baseline file {p} not found")
    data = read_yaml(p, "baseline")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list) or not data["entries"]:
        raise BenchError(f"baseline {p}: expected a mapping with a non-empty 'entries' list")
    names = [f.name for f in fields(BaselineEntry)]
    out = []
    for i, raw in enumerate(data["entries"]):
        where = f"baseline {p.name} entry {i + 1}"
        if not isinstance(raw, dict):
            raise BenchError(f"{where}: expected a mapping")
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise BenchError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
        missing = [k for k in ("defense", "dataset", "threat", "attack", "scale", "expected", "tolerance")
                   if raw.get(k) is None]
        if missing:
            raise BenchError(f"{where}: missing {', '.join(missing)}")
        for k in ("expected", "tolerance"):
            v = raw[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise BenchError(f"{where}: {k} must be a finite number (percent), got {v!r}")
        if not 0 <= raw["expected"] <= 100:
            raise BenchError(f"{where}: expected = {raw['expected']} is outside 0-100 (percent)")
        if not 0 <= raw["tolerance"] <= 100:
            raise BenchError(f"{where}: tolerance = {raw['tolerance']} must be in 0-100 (percentage points)")
        out.append(BaselineEntry(**{k: (str(v) if k not in ("expected", "tolerance") and v is not None else v)
                                    for k, v in raw.items()}))
    return out


def _matches(e: BaselineEntry, r: StoredRun) -> bool:
    rec = r.record
    return (rec.get("defense") == e.defense and rec.get("dataset") == e.dataset and rec.get("threat") == e.threat
            and str(rec.get("scale")) == e.scale and (e.protocol is None or rec.get("protocol") == e.protocol))


def _number(summary: dict[str, Any], attack: str) -> dict[str, Any] | None:
    if attack == "worst_case":
        return summary.get("worst_case")
    return summary.get("attacks", {}).get(attack)


def check(entries: list[BaselineEntry], results: str | Path, notes: list[str] | None = None) -> list[CheckRow]:
    """One row per baseline entry; BenchError when an entry matches no stored run.

    Runs that cannot be trusted (see :func:`leaderboards.runs.find_runs`) are never checked;
    why each was skipped is appended to ``notes``."""
    runs, skipped = find_runs(results)
    if notes is not None:
        notes.extend(skipped)
    rows = []
    for e in entries:
        cands = [r for r in runs if _matches(e, r) and _number(r.summary, e.attack) is not None]
        if not cands:
            near = [r for r in runs if _matches(e, r)]
            hint = (f"; matching runs have {', '.join(sorted(near[0].summary.get('attacks', {})))}"
                    + (", worst_case" if "worst_case" in near[0].summary else "")) if near else ""
            if skipped and not near:
                hint += f" ({len(skipped)} run folder(s) skipped as unreadable or unverified)"
            raise BenchError(f"baseline entry {e.selector()} matches no stored run under {results}{hint}")
        run = max(cands, key=lambda r: r.finished)
        num = _number(run.summary, e.attack)
        assert num is not None
        lo, hi = 100 * float(num["ci95"][0]), 100 * float(num["ci95"][1])
        rows.append(CheckRow(e, run, 100 * float(num["accuracy"]), (lo, hi)))
    return rows


def diff_table(rows: list[CheckRow]):
    from rich.table import Table

    t = Table(title="regression gate: stored vs baseline (percent)",
              caption="fails when |stored - expected| > tolerance, either way: a rise of robust accuracy "
                      "usually means a weaker attack")
    for c in ("defense", "dataset", "threat", "attack", "scale", "expected", "stored", "95% CI", "tolerance",
              "diff", "status", "run"):
        t.add_column(c, justify="right" if c in ("expected", "stored", "tolerance", "diff") else "left",
                     overflow="fold")
    for r in rows:
        e = r.entry
        t.add_row(e.defense, e.dataset, e.threat, e.attack, e.scale, f"{e.expected:.1f}", f"{r.stored:.1f}",
                  f"[{r.ci[0]:.1f}, {r.ci[1]:.1f}]", f"+/-{r.allowed:.1f}", f"{r.diff:+.1f}",
                  f"[red]{r.status}[/]" if r.failed else r.status, str(r.run.dir))
    return t
