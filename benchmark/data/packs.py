"""The fixed evaluation sets shipped in ``benchmark/data/embedded/``.

Each set ("pack") is two files: ``<name>.zip``, an uncompressed zip of the original image
files (JPEG/PNG bytes exactly as in their source, never re-encoded), and ``<name>.json``,
its index: ids, labels and sha256 of every file in evaluation order, the class names, the
sha256 of the source archive, and the zip's own sha256 (checked on every load, so a
corrupt or edited pack fails loudly instead of silently changing results).

Zips are written deterministically (fixed timestamps and attributes), so rebuilding from
the same sources gives byte-identical files: ``scripts/build_subsets.py --check``
relies on that.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from benchmark.errors import BenchError

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
FORMAT = 1
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

# The shipped packs, in the order ``scripts/build_subsets.py`` writes them.
PACK_NAMES = ("cifar10_test1000", "cifar10_exact20", "cifar100_exact20", "imagenette_val200")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_bytes(files: Sequence[tuple[str, bytes]]) -> bytes:
    """An uncompressed zip of ``(member name, bytes)`` with fixed metadata (reproducible)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def make_pack(meta: dict[str, Any], items: Sequence[dict[str, Any]], blobs: Sequence[bytes]) -> tuple[bytes, dict[str, Any]]:
    """Zip bytes and the index for a pack. ``items`` hold at least ``id``, ``label`` and
    ``file`` (the member name); sha256s are added here."""
    if len(items) != len(blobs):
        raise ValueError("one blob per item")
    names = [it["file"] for it in items]
    if len(set(names)) != len(names):
        raise ValueError("member names must be unique")
    data = zip_bytes(list(zip(names, blobs)))
    index = dict(meta)
    index["format"] = FORMAT
    index["n"] = len(items)
    index["zip"] = {"file": f"{meta['name']}.zip", "bytes": len(data), "sha256": sha256_bytes(data)}
    index["items"] = [{**it, "sha256": sha256_bytes(b)} for it, b in zip(items, blobs)]
    return data, index


def write_pack(out_dir: str | Path, data: bytes, index: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<name>.zip`` and ``<name>.json`` (atomically: tmp file + replace)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    zpath, jpath = out / index["zip"]["file"], out / f"{index['name']}.json"
    for path, payload in ((zpath, data), (jpath, index_json(index).encode())):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(payload)
        tmp.replace(path)
    return zpath, jpath


def index_json(index: dict[str, Any]) -> str:
    """The index as written to disk (stable formatting, so it is byte-reproducible too)."""
    return json.dumps(index, indent=1, ensure_ascii=True) + "\n"


def read_index(name: str, root: str | Path | None = None) -> dict[str, Any]:
    path = Path(root or EMBEDDED_DIR) / f"{name}.json"
    if not path.is_file():
        raise BenchError(f"shipped evaluation set {name} is missing ({path}); reinstall the package")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchError(f"shipped evaluation set index {path} is corrupt: {e}") from None
    if index.get("format") != FORMAT:
        raise BenchError(f"shipped evaluation set {path} has format {index.get('format')!r}, expected {FORMAT}")
    return index


def read_pack(name: str, root: str | Path | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """The index and the file bytes in evaluation order, after checking the zip's sha256."""
    index = read_index(name, root)
    zpath = Path(root or EMBEDDED_DIR) / index["zip"]["file"]
    if not zpath.is_file():
        raise BenchError(f"shipped evaluation set {name} is missing ({zpath}); reinstall the package")
    data = zpath.read_bytes()
    got = sha256_bytes(data)
    if got != index["zip"]["sha256"]:
        raise BenchError(f"shipped evaluation set {zpath} has sha256 {got[:16]}..., expected {index['zip']['sha256'][:16]}... (corrupt)")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        blobs = [zf.read(it["file"]) for it in index["items"]]
    return index, blobs


def check_pack(name: str, root: str | Path | None = None) -> list[str]:
    """Problems found in a shipped pack (empty when it is intact): zip sha256, every
    member's sha256, no extra or missing members, labels within the class list, unique ids."""
    problems: list[str] = []
    try:
        index, blobs = read_pack(name, root)
    except (BenchError, KeyError, zipfile.BadZipFile) as e:
        return [f"{name}: {e}"]
    items = index["items"]
    for it, blob in zip(items, blobs):
        if sha256_bytes(blob) != it["sha256"]:
            problems.append(f"{name}: {it['file']} sha256 mismatch")
        if not 0 <= it["label"] < len(index["classes"]):
            problems.append(f"{name}: {it['id']} label {it['label']} out of range")
    zpath = Path(root or EMBEDDED_DIR) / index["zip"]["file"]
    with zipfile.ZipFile(zpath) as zf:
        members = zf.namelist()
        if any(zi.compress_type != zipfile.ZIP_STORED for zi in zf.infolist()):
            problems.append(f"{name}: zip members must be stored uncompressed")
    if sorted(members) != sorted(it["file"] for it in items):
        problems.append(f"{name}: zip members differ from the index")
    if len({it["id"] for it in items}) != len(items):
        problems.append(f"{name}: duplicate ids")
    if index["n"] != len(items):
        problems.append(f"{name}: n={index['n']} but {len(items)} items")
    return problems


def decode(blob: bytes) -> np.ndarray:
    """RGB uint8 HxWx3 from encoded image bytes (greyscale converted)."""
    with Image.open(io.BytesIO(blob)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
