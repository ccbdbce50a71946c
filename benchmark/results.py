"""The results store: one directory per run, crash-safe, resumable.

Layout of a run directory::

    record.json          what was run: defense, config hash, weights sha256, dataset, subset ids,
                         attacks with full parameters, seeds, versions, commit, device, scale
    batches/000007.json  per-sample rows of one batch (all attacks), written atomically
    samples.jsonl        all rows in subset order, assembled when the run completes
    summary.json         aggregated accuracies and intervals
    timing.json          wall times and timestamps (kept apart, so that the other files are
                         byte-identical across runs with the same seed)

Every file is written to a temporary name, fsynced, then renamed over the target, so a
crash (even SIGKILL) loses at most the batch in flight and never leaves a torn file.
Re-running the same command finds the finished batches and computes only the rest.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

from .errors import BenchError


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False)


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temp file in the target's folder, fsync it, rename it over ``path``,
    then fsync the folder: readers (and a resume after SIGKILL) see the old file or the new one."""
    p = Path(path)
    if p.is_dir():
        raise BenchError(f"cannot write {p}: it is a directory")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:  # a read-only or full disk, a file where a folder should be: one error line
        raise BenchError(f"cannot write {p}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):  # the old file (if any) is untouched
            raise BenchError(f"cannot write {p}: {e.strerror or e}") from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: temp file in the same folder, fsync, rename."""
    data = text.encode("utf-8")
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (training checkpoints: a crash mid-save keeps the last one)."""
    import torch  # here, so that the results store itself does not need torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, _dumps(obj) + "\n")


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove we can write there, before any work is done."""
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe.", dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise BenchError(f"output directory {p} is not writable ({e.strerror or e})") from None
    return p


def rows_sha256(rows: list[dict[str, Any]]) -> str:
    """sha256 of a batch's rows in their canonical JSON form (stored beside them)."""
    import hashlib

    return hashlib.sha256(_dumps(rows).encode("utf-8")).hexdigest()


def check_rows(rows: list[Any], index: int, record: dict[str, Any]) -> str | None:
    """Why batch ``index``'s ``rows`` do not fit ``record`` (ids, row count, attacks), or None."""
    try:
        bs, n, ids, k = int(record["batch_size"]), int(record["n"]), record["ids"], int(record["eval_repeats"])
        names = [a["attack"] for a in record["attacks"]]
    except (KeyError, TypeError, ValueError):
        return "the run record lacks batch_size, n, ids, eval_repeats or attacks"
    lo, hi = index * bs, min(n, (index + 1) * bs)
    if len(rows) != hi - lo:
        return f"{len(rows)} rows, the record expects {hi - lo}"

    def preds_ok(v: Any, empty_ok: bool) -> bool:
        return isinstance(v, list) and (len(v) == k or (empty_ok and not v)) and \
            all(isinstance(p, int) and not isinstance(p, bool) for p in v)

    for i, row in enumerate(rows):
        if not isinstance(row, dict) or row.get("id") != ids[lo + i]:
            return f"row {i} is not image {ids[lo + i]!r}"
        if not isinstance(row.get("label"), int) or not preds_ok(row.get("clean"), False):
            return f"row {i} has no valid label or clean predictions"
        for a in names:
            if not isinstance(row.get(a), dict) or not preds_ok(row[a].get("preds"), True):
                return f"row {i} has no valid results for attack {a!r}"
    return None


def check_file_writable(path: str | Path) -> Path:
    """Prove ``path`` can be written as a file (not a folder; its folder writable) before the work."""
    p = Path(path)
    try:
        if p.is_dir():
            raise BenchError(f"cannot write {p}: it is a directory")
        folder = p.parent
        while not folder.exists():  # created only when the file is written: a failed command leaves nothing
            folder = folder.parent
        if not folder.is_dir():
            raise BenchError(f"cannot write {p}: {folder} is not a directory")
        fd, tmp = tempfile.mkstemp(prefix=".probe.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise BenchError(f"cannot write {p}: {e.strerror or e}") from None
    return p


class RunStore:
    """Per-run directory with atomic per-batch files and resume.

    Once :meth:`open` has the run's record, every batch file is checked against it before it is
    trusted (batch index, image ids, attacks, row count, and the rows' own sha256): a file that
    does not match is recomputed, a stray file is ignored, each with a note in :attr:`notes`."""

    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder)
        self.batch_dir = self.dir / "batches"
        self.record: dict[str, Any] | None = None
        self.notes: list[str] = []

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # -- record ---------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.dir / "record.json"

    def read_record(self) -> dict[str, Any] | None:
        if not self.record_path.exists():
            return None
        from .safe_io import read_text

        try:
            rec = json.loads(read_text(self.record_path, "run record"))
        except json.JSONDecodeError:
            raise BenchError(f"{self.record_path} is not valid JSON; refusing to touch this run directory") from None
        if not isinstance(rec, dict):
            raise BenchError(f"{self.record_path} holds a JSON {type(rec).__name__}, not a run record; "
                             "refusing to touch this run directory")
        return rec

    def open(self, record: dict[str, Any], *, key: str = "run_hash") -> bool:
        """Start or resume a run. Returns True when resuming.

        A directory holding a *different* run (another hash) is never overwritten.
        """
        check_writable(self.dir)
        old = self.read_record()
        self.record = record
        if old is not None:
            if old.get(key) != record.get(key):
                raise BenchError(
                    f"{self.dir} holds a different run ({key} {str(old.get(key))[:12]} != {str(record.get(key))[:12]}); "
                    "use another --out or delete it"
                )
            return True
        atomic_write_json(self.record_path, record)
        return False

    # -- batches --------------------------------------------------------------------
    def batch_path(self, index: int) -> Path:
        return self.batch_dir / f"{index:06d}.json"

    def _load_batch(self, index: int) -> tuple[list[dict[str, Any]] | None, str | None]:
        """(rows, None) for a batch file that fits the record, else (None, why not)."""
        p = self.batch_path(index)
        if not p.is_file():
            return None, "missing"
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):  # never trust a torn or foreign file
            return None, "not valid JSON"
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            return None, "not a batch file (no 'rows' list)"
        rows = data["rows"]
        if data.get("batch") != index:
            return None, f"it says batch {data.get('batch')!r}"
        if "rows_sha256" in data and data["rows_sha256"] != rows_sha256(rows):
            return None, "its rows were edited (sha256 mismatch)"
        if self.record is not None:
            why = check_rows(rows, index, self.record)
            if why:
                return None, why
        return rows, None

    def has_batch(self, index: int) -> bool:
        rows, why = self._load_batch(index)
        if rows is None and why != "missing":
            self._note(f"{self.batch_path(index)} does not match the run record ({why}); recomputing that batch")
        return rows is not None

    def write_batch(self, index: int, rows: list[dict[str, Any]]) -> None:
        atomic_write_json(self.batch_path(index), {"batch": index, "rows": rows, "rows_sha256": rows_sha256(rows)})

    def read_batch(self, index: int) -> list[dict[str, Any]]:
        rows, why = self._load_batch(index)
        if rows is None:
            raise BenchError(f"{self.batch_path(index)}: {why}; run the same command again to recompute it")
        return rows

    def done_batches(self) -> list[int]:
        if not self.batch_dir.is_dir():
            return []
        n_batches = self.record.get("n_batches") if self.record is not None else None
        out = []
        for p in sorted(self.batch_dir.glob("*.json")):
            if not p.stem.isdigit():
                continue
            i = int(p.stem)
            if isinstance(n_batches, int) and not 0 <= i < n_batches:
                self._note(f"ignoring {p}: this run has batches 0..{n_batches - 1} only")
                continue
            if self.record is None or self.has_batch(i):
                out.append(i)
        return out

    # -- final ----------------------------------------------------------------------
    def rows(self, n_batches: int | None = None) -> list[dict[str, Any]]:
        idx = range(n_batches) if n_batches is not None else self.done_batches()
        out: list[dict[str, Any]] = []
        for i in idx:
            out += self.read_batch(i)
        return out

    def write_samples(self, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
        atomic_write_text(self.dir / "samples.jsonl", text)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "summary.json", summary)

    def write_timing(self, timing: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "timing.json", timing)

    def read_samples(self) -> list[dict[str, Any]]:
        p = self.dir / "samples.jsonl"
        if not p.is_file():
            raise BenchError(f"{self.dir} has no samples.jsonl (run not finished?)")
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
