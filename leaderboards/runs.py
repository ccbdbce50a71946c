"""Stored run directories (``record.json`` + ``summary.json``) found under a results folder."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError


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
    from benchmark.runner import summarize

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


def find_runs(results: str | Path) -> tuple[list[StoredRun], list[str]]:
    """Every finished run under ``results`` (any depth), and notes on what was skipped and why.

    A folder counts as a run when it holds both record.json and summary.json; an unfinished run
    (no summary yet) is skipped silently, an unreadable one with a note.
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
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            notes.append(f"skipped {rec.parent}: unreadable ({type(e).__name__})")
            continue
        if not isinstance(record, dict) or not isinstance(summary, dict) or "attacks" not in summary:
            notes.append(f"skipped {rec.parent}: not a run record/summary")
            continue
        if "attack_scope" not in record:
            summary = _resummarize(rec.parent, record, summary, notes)
        finished = summ.stat().st_mtime
        timing = rec.parent / "timing.json"
        if timing.is_file():
            try:
                finished = float(_read_json(timing).get("finished_unix", finished))
            except (json.JSONDecodeError, OSError, TypeError, ValueError):
                pass
        runs.append(StoredRun(rec.parent, record, summary, finished))
    return runs, notes
