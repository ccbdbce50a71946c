"""Helpers for the hostile-input tests: run ``bench`` in process, make hostile files, snapshot trees."""
from __future__ import annotations

import contextlib
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from benchmark.cli import main


@dataclass
class Outcome:
    rc: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("error:")]

    @property
    def clean_error(self) -> bool:
        """Exit 2, exactly one ``error:`` line, no traceback anywhere."""
        return self.rc == 2 and len(self.errors) == 1 and "Traceback" not in self.err + self.out


def bench(argv: list[str]) -> Outcome:
    """``bench ARGV`` in this process: exit code (argparse's SystemExit included), stdout, stderr.
    An exception escaping ``main`` is returned as a traceback in stderr (rc 1), as Python would."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # a crash: what the user would see
            import traceback

            err.write(traceback.format_exc())
            rc = 1
    return Outcome(int(rc), out.getvalue(), err.getvalue())


class Payload:
    """Unpickling this creates ``marker``: a pickle that must never be loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bomb_yaml(levels: int = 9) -> str:
    """A "billion laughs": 9 levels of 9 aliases, 9**9 (387 million) leaves once expanded."""
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    prev = "a"
    for i in range(1, levels):
        name = f"l{i}"
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = name
    return "\n".join(lines) + "\n"


def hostile_files(root: Path, marker: Path) -> dict[str, Path]:
    """Named hostile inputs under ``root`` (each also with a .yaml twin where a suffix matters)."""
    root.mkdir(parents=True, exist_ok=True)
    f: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        p = root / name
        p.write_bytes(data)
        f[name] = p

    put("binary.bin", bytes(range(256)) * 8)
    put("empty.yaml", b"")
    put("truncated.yaml", b"entries:\n- {defense: standard, dataset: cifa")
    put("latin1.yaml", "name: caf\xe9\n".encode("latin-1"))
    put("wrongtype.yaml", b"[1, 2, 3]\n")
    put("scalar.yaml", b"42\n")
    put("pytag.yaml", f"x: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n".encode())
    put("bomb.yaml", bomb_yaml().encode())
    put("recursive.yaml", b"a: &a [1, *a]\n")
    put("deep.yaml", b"[" * 20000 + b"]" * 20000)
    put("payload.pt", pickle.dumps(Payload(marker)))
    put("payload.pkl", pickle.dumps(Payload(marker)))
    put("empty.pt", b"")
    put("truncated.pt", pickle.dumps({"w": list(range(100))})[:20])
    huge = root / "huge.yaml"
    with open(huge, "wb") as fh:  # sparse: 17 MiB on paper, nothing on disk
        fh.truncate(17 * 1024 * 1024)
    f["huge.yaml"] = huge
    (root / "a_dir.yaml").mkdir(exist_ok=True)
    f["a_dir.yaml"] = root / "a_dir.yaml"
    f["under_a_file.yaml"] = f["binary.bin"] / "x.yaml"  # a path whose folder is a file
    f["missing.yaml"] = root / "missing.yaml"
    f["readonly_fs.yaml"] = Path("/proc/purifybench-hostile.yaml")
    fifo = root / "fifo.yaml"
    if not fifo.exists():
        os.mkfifo(fifo)
    f["fifo.yaml"] = fifo
    return f


def tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int, bytes | None]]:
    """{relative path: (size, mtime_ns, bytes of small files)} of everything under ``root``."""
    out: dict[str, tuple[int, int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not any((d / n) == s for s in skip)]
        for n in filenames + dirnames:
            p = d / n
            if p in skip:
                continue
            st = p.lstat()
            if p.is_dir() or not p.is_file():  # folders and FIFOs: presence only (a folder's mtime moves with its files)
                out[str(p.relative_to(root))] = (0, 0, None)
                continue
            data = p.read_bytes() if st.st_size < 1 << 20 else None
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, data)
    return out
