"""The CI regression gate (``bench check``): stored accuracies against a baseline YAML.

A baseline lists entries; each selects stored runs (defense, dataset, threat, scale, optionally
protocol) and one number in them (an attack name, ``clean`` or ``worst_case``), with the
expected accuracy and a tolerance, both in percent::

    entries:
      - {defense: standard, dataset: cifar10, threat: linf, attack: pgd, scale: cpu,
         expected: 0.0, tolerance: 2.0}

An entry fails when the stored number is below ``expected`` by more than
``max(tolerance, half-width of its 95% interval)``: a drop inside the sampling noise of the
stored run is not a regression. When several runs match, the most recently finished one is
checked. A missing file, bad YAML, or an entry matching no stored run is bad input (BenchError).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError

from .runs import StoredRun, find_runs


@dataclass
class BaselineEntry:
    defense: str
    dataset: str
    threat: str
    attack: str
    scale: str
    expected: float
    tolerance: float = 0.0
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
    allowed: float  # the largest drop that passes, percent

    @property
    def diff(self) -> float:
        return self.stored - self.entry.expected

    @property
    def failed(self) -> bool:
        return self.diff < -self.allowed

    @property
    def status(self) -> str:
        if self.failed:
            return "REGRESSION"
        return "improved" if self.diff > self.allowed else "ok"


def load_baseline(path: str | Path) -> list[BaselineEntry]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise BenchError(f"baseline file {p} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise BenchError(f"baseline {p} is not valid YAML: {str(e).splitlines()[0]}") from None
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
        missing = [k for k in ("defense", "dataset", "threat", "attack", "scale", "expected") if raw.get(k) is None]
        if missing:
            raise BenchError(f"{where}: missing {', '.join(missing)}")
        for k in ("expected", "tolerance"):
            v = raw.get(k, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise BenchError(f"{where}: {k} must be a number (percent), got {v!r}")
        if not 0 <= raw["expected"] <= 100:
            raise BenchError(f"{where}: expected = {raw['expected']} is outside 0-100 (percent)")
        if raw.get("tolerance", 0.0) < 0:
            raise BenchError(f"{where}: tolerance must be >= 0")
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


def check(entries: list[BaselineEntry], results: str | Path) -> list[CheckRow]:
    """One row per baseline entry; BenchError when an entry matches no stored run."""
    runs, _ = find_runs(results)
    rows = []
    for e in entries:
        cands = [r for r in runs if _matches(e, r) and _number(r.summary, e.attack) is not None]
        if not cands:
            near = [r for r in runs if _matches(e, r)]
            hint = (f"; matching runs have {', '.join(sorted(near[0].summary.get('attacks', {})))}"
                    + (", worst_case" if "worst_case" in near[0].summary else "")) if near else ""
            raise BenchError(f"baseline entry {e.selector()} matches no stored run under {results}{hint}")
        run = max(cands, key=lambda r: r.finished)
        num = _number(run.summary, e.attack)
        assert num is not None
        lo, hi = 100 * float(num["ci95"][0]), 100 * float(num["ci95"][1])
        rows.append(CheckRow(e, run, 100 * float(num["accuracy"]), (lo, hi), max(e.tolerance, (hi - lo) / 2)))
    return rows


def diff_table(rows: list[CheckRow]):
    from rich.table import Table

    t = Table(title="regression gate: stored vs baseline (percent)",
              caption="fails when stored < expected - max(tolerance, half-width of the stored 95% interval)")
    for c in ("defense", "dataset", "threat", "attack", "scale", "expected", "stored", "95% CI", "allowed drop",
              "diff", "status", "run"):
        t.add_column(c, justify="right" if c in ("expected", "stored", "allowed drop", "diff") else "left",
                     overflow="fold")
    for r in rows:
        e = r.entry
        t.add_row(e.defense, e.dataset, e.threat, e.attack, e.scale, f"{e.expected:.1f}", f"{r.stored:.1f}",
                  f"[{r.ci[0]:.1f}, {r.ci[1]:.1f}]", f"{r.allowed:.1f}", f"{r.diff:+.1f}",
                  f"[red]{r.status}[/]" if r.failed else r.status, str(r.run.dir))
    return t
