"""Reading a user's text file, or failing in one line: missing, a folder, not UTF-8, too large,
unreadable. Every config, baseline, protocol and id list goes through :func:`read_text`, so
no input file can end a command in a ``UnicodeDecodeError`` or ``IsADirectoryError``.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import BenchError

# A config, baseline, protocol or id list is kilobytes; a bigger file is a mistake (a dataset
# or a checkpoint given for a YAML), and reading it whole would only waste memory.
MAX_TEXT_BYTES = 16 * 1024 * 1024


def os_reason(e: OSError) -> str:
    """The OS's words for ``e`` (``No space left on device``), without Python's prefixes."""
    return e.strerror or str(e) or type(e).__name__


def is_file(path: str | Path) -> bool:
    """``Path.is_file`` that says False, instead of raising, for a name the OS cannot even look up
    (too long, say)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def read_text(path: str | Path, what: str = "file", *, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path`` (``what`` names it in the error: "baseline", "config"...)."""
    p = Path(path)
    try:
        if not p.exists():
            raise BenchError(f"{what} {p} not found")
        if p.is_dir():
            raise BenchError(f"{what} {p} is a directory, not a file")
        if not p.is_file():  # a FIFO or device would block or never end
            raise BenchError(f"{what} {p} is not a regular file")
        size = os.path.getsize(p)
        if size > max_bytes:
            raise BenchError(f"{what} {p} is {size:,} bytes; refusing to read more than {max_bytes:,} "
                             "(is it the right file?)")
        data = p.read_bytes()
    except OSError as e:
        raise BenchError(f"cannot read {what} {p}: {os_reason(e)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BenchError(f"{what} {p} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
