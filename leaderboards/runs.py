"""Stored run directories (``record.json`` + ``summary.json``) found under a results folder."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.runner import summarize
from benchmark.runner import record_hash


@dataclass
class StoredRun:
    dir: Path
    record: dict[str, Any]
    summary: dict[str, Any]
    finished: float  # unix time the run finished (timing.json), else summary.json's mtime

    @property
    def eps(self) -> float | None:
        for a in self.record.get("attacks", []):
            if a.get("params", {}).get("eps") is not None:
                return float(a["params"]["eps"])
        return None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _resummarize(run_dir: Path, record: dict[str, Any], summary: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """A run from before the clean-and-adversarial definition of robust accuracy (no
    ``attack_scope`` in its record) stored per-attack accuracies that could count a
    clean-misclassified image as robust; recompute them from its per-sample rows so that every
    board uses one definition. Without rows the stored summary stays, with a note."""
    samples = run_dir / "samples.jsonl"
    try:
        rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
        new = summarize(rows, record)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        notes.append(f"{run_dir}: predates clean-and-adversarial robust accuracy and its rows could not be "
                     f"re-summarized ({type(e).__name__}); its stored per-attack accuracies may be higher")
        return summary
    notes.append(f"{run_dir}: re-summarized from its rows (robust = correct clean and adversarial)")
    return new


# keys every runner has written into record.json since the first stored runs
_RECORD_KEYS = {"defense": str, "dataset": str, "threat": str, "scale": str, "attacks": list,
                "eval_repeats": int, "n": int, "ids": list, "run_hash": str}


def _record_problem(record: dict[str, Any]) -> str | None:
    """Why a record cannot be trusted as a run of ours (incomplete, edited, foreign), or None.

    Its ``run_hash`` must equal the hash of its contents, so a record written by hand or edited
    after the run (a number, an attack, a defense name) is refused, not checked or ranked."""
    for k, t in _RECORD_KEYS.items():
        v = record.get(k)
        if not isinstance(v, t) or isinstance(v, bool):
            return f"record.json has no valid {k!r} ({'missing' if v is None else type(v).__name__})"
    bad = [a for a in record["attacks"] if not isinstance(a, dict) or not isinstance(a.get("attack"), str)
           or not isinstance(a.get("params", {}), dict)]
    if bad:
        return "record.json 'attacks' holds an entry that is not an attack record"
    if len(record["ids"]) != record["n"]:
        return f"record.json names {len(record['ids'])} image ids for n = {record['n']}"
    if record_hash(record) != record["run_hash"]:
        return "record.json does not match its run_hash (edited, or not written by bench run)"
    return None


def _is_fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1


def _summary_problem(summary: dict[str, Any], record: dict[str, Any]) -> str | None:
    """Why a summary's numbers cannot be read (a non-numeric accuracy, a broken interval), or None."""
    attacks = summary.get("attacks")
    if not isinstance(attacks, dict):
        return "summary.json 'attacks' is not a mapping"
    entries = dict(attacks)
    if "worst_case" in summary:
        entries["worst_case"] = summary["worst_case"]
    for name, e in entries.items():
        if not isinstance(e, dict) or not _is_fraction(e.get("accuracy")):
            return f"summary.json {name}: accuracy is not a number in [0, 1]"
        ci = e.get("ci95")
        if not (isinstance(ci, list) and len(ci) == 2 and all(map(_is_fraction, ci))):
            return f"summary.json {name}: ci95 is not two numbers in [0, 1]"
        if e.get("n") != record["n"]:
            return f"summary.json {name}: n = {e.get('n')!r} where the record says {record['n']}"
        c = e.get("correct", 0)
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= record["n"]:
            return f"summary.json {name}: correct = {c!r} is not a count of the {record['n']} images"
    gaps = summary.get("stochasticity_gap", [])
    if not isinstance(gaps, list) or not all(isinstance(g, dict) and isinstance(g.get("gap"), (int, float))
                                             and not isinstance(g.get("gap"), bool) and math.isfinite(g["gap"])
                                             for g in gaps):
        return "summary.json stochasticity_gap is not a list of numeric gaps"
    return None


def find_runs(results: str | Path) -> tuple[list[StoredRun], list[str]]:
    """Every finished run under ``results`` (any depth), and notes on what was skipped and why.

    A folder counts as a run when it holds both record.json and summary.json; an unfinished run
    (no summary yet) is skipped silently. An unreadable one (torn or non-UTF-8 file), a record
    that is incomplete or does not match its ``run_hash`` (edited, foreign), or a summary whose
    numbers are not numbers is skipped with a one-line note: no reader (board, gate, plot) ever
    counts it, nor crashes on it.
    """
    root = Path(results)
    notes: list[str] = []
    if not root.exists():
        return [], [f"results folder {root} does not exist"]
    if not root.is_dir():
        raise BenchError(f"--results {root} is not a folder")
    runs = []
    for rec in sorted(root.rglob("record.json")):
        summ = rec.parent / "summary.json"
        if not summ.is_file():
            continue
        try:
            record, summary = _read_json(rec), _read_json(summ)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError) as e:
            notes.append(f"skipped {rec.parent}: unreadable ({type(e).__name__})")
            continue
        if not isinstance(record, dict) or not isinstance(summary, dict) or "attacks" not in summary:
            notes.append(f"skipped {rec.parent}: not a run record/summary")
            continue
        problem = _record_problem(record)
        if problem is None and "attack_scope" not in record:
            summary = _resummarize(rec.parent, record, summary, notes)
        problem = problem or _summary_problem(summary, record)
        if problem is not None:
            notes.append(f"skipped {rec.parent}: {problem}")
            continue
        finished = summ.stat().st_mtime
        timing = rec.parent / "timing.json"
        if timing.is_file():
            try:
                finished = float(_read_json(timing).get("finished_unix", finished))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError, AttributeError, TypeError, ValueError):
                pass
            if not math.isfinite(finished):
                finished = summ.stat().st_mtime
        runs.append(StoredRun(rec.parent, record, summary, finished))
    return runs, notes
