#!/usr/bin/env python
"""Build (or check) the evaluation sets shipped in ``benchmark/data/embedded/``.

Sources: the archives in ``../shared/data`` (``cifar10-jpeg.tar.gz``,
``imagenette2-224-jpeg.tar.gz``, see the README there) and the PNGs in the installed
``foolbox`` package (``foolbox/data``). Files are copied byte for byte, never re-encoded.

    python scripts/build_subsets.py            # rebuild all packs and SUBSETS.md
    python scripts/build_subsets.py --check    # verify shipped packs; also compare them
                                               # with a rebuild when the sources exist

Packs:
- cifar10_test1000: ``cifar10-jpeg/test/<class>/0000..0099.jpg``, interleaved by class
  (rank 0 of classes 0..9, then rank 1, ...), so ``first:N`` is class-balanced.
- cifar10_exact20 / cifar100_exact20: ``foolbox/data/cifar10[0]_<index>_<label>.png``,
  canonical test images 0..19 in index order, ids ``test/<index>``.
- imagenette_val200: ``imagenette2/val/<wnid>/``: the first 20 files by name per wnid,
  interleaved by class like CIFAR-10.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import re
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmark.data import packs  # noqa: E402
from benchmark.data.datasets import CIFAR10_CLASSES, CIFAR100_CLASSES, IMAGENETTE_CLASSES, IMAGENETTE_WNIDS  # noqa: E402
from benchmark.data.subsets import subsets_markdown  # noqa: E402

CIFAR_ARCHIVE = "cifar10-jpeg.tar.gz"
INET_ARCHIVE = "imagenette2-224-jpeg.tar.gz"
CIFAR_PER_CLASS = 100
INET_PER_CLASS = 20
SUBSETS_MD = REPO / "benchmark" / "data" / "SUBSETS.md"

Built = tuple[bytes, dict[str, Any]]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_members(archive: Path, want: Callable[[str], bool]) -> dict[str, bytes]:
    """Bytes of the regular files in a .tar.gz whose names pass ``want`` (one streaming pass)."""
    out: dict[str, bytes] = {}
    with tarfile.open(archive, "r|gz") as tf:
        for m in tf:
            if m.isfile() and want(m.name):
                f = tf.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


def interleave(per_class: list[list[Any]]) -> list[Any]:
    """Rank 0 of every class (in label order), then rank 1, ..."""
    k = len(per_class[0])
    assert all(len(c) == k for c in per_class), "every class needs the same count"
    return [per_class[c][r] for r in range(k) for c in range(len(per_class))]


def build_cifar10_test1000(data: Path) -> Built:
    archive = data / CIFAR_ARCHIVE
    prefix = "cifar10-jpeg/test/"
    names = {f"{prefix}{c}/{r:04d}.jpg" for c in CIFAR10_CLASSES for r in range(CIFAR_PER_CLASS)}
    files = read_members(archive, names.__contains__)
    missing = sorted(names - set(files))
    if missing:
        raise SystemExit(f"{archive} lacks {len(missing)} expected files, e.g. {missing[0]}")
    per_class = [
        [{"id": f"{c}/{r:04d}.jpg", "label": label, "file": f"{c}/{r:04d}.jpg", "rank": r} for r in range(CIFAR_PER_CLASS)]
        for label, c in enumerate(CIFAR10_CLASSES)
    ]
    items = interleave(per_class)
    blobs = [files[prefix + it["file"]] for it in items]
    meta = {
        "name": "cifar10_test1000",
        "dataset": "cifar10",
        "source": "embedded",
        "description": "CIFAR-10 test images, the first 100 of each class (JPEG re-encodes at quality ~75, "
        "original bytes). 'rank' is the image's rank among the canonical test images of its class.",
        "order": "interleaved by class: position = rank * 10 + label, so first:N is class-balanced for N % 10 == 0",
        "classes": list(CIFAR10_CLASSES),
        "resolution": [32, 32],
        "origin": {"archive": CIFAR_ARCHIVE, "archive_sha256": sha256_file(archive), "member_prefix": prefix},
    }
    return packs.make_pack(meta, items, blobs)


def foolbox_dir() -> Path:
    """foolbox's sample folder, found without importing foolbox (which is slow)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("foolbox is not installed")
    return Path(spec.submodule_search_locations[0]).resolve() / "data"


def build_exact20(dataset: str) -> Built:
    folder = foolbox_dir()
    version = importlib.metadata.version("foolbox")
    pattern = re.compile(rf"^{dataset}_(\d\d)_(\d+)\.png$")
    found = sorted((int(m[1]), int(m[2]), p.name) for p in folder.iterdir() if (m := pattern.match(p.name)))
    if [i for i, _, _ in found] != list(range(20)):
        raise SystemExit(f"foolbox {version} does not ship {dataset}_00..19 PNGs in {folder}")
    items = [{"id": f"test/{i}", "label": label, "file": name, "index": i} for i, label, name in found]
    blobs = [(folder / name).read_bytes() for _, _, name in found]
    classes = CIFAR10_CLASSES if dataset == "cifar10" else CIFAR100_CLASSES
    meta = {
        "name": f"{dataset}_exact20",
        "dataset": dataset,
        "source": "exact20",
        "description": f"the first 20 canonical {dataset.upper()} test images with their exact original pixels "
        "(lossless PNGs shipped by foolbox); 'index' is the canonical test-set index",
        "order": "canonical test-set order (index 0..19)",
        "classes": list(classes),
        "resolution": [32, 32],
        "origin": {"package": f"foolbox=={version}", "folder": "foolbox/data"},
    }
    return packs.make_pack(meta, items, blobs)


def build_imagenette_val200(data: Path) -> Built:
    archive = data / INET_ARCHIVE
    prefix = "imagenette2/val/"
    files = read_members(archive, lambda n: n.startswith(prefix))
    per_class = []
    for label, wnid in enumerate(IMAGENETTE_WNIDS):
        names = sorted(n[len(prefix) + len(wnid) + 1 :] for n in files if n.startswith(f"{prefix}{wnid}/"))
        if len(names) < INET_PER_CLASS:
            raise SystemExit(f"{archive} has only {len(names)} val images of {wnid}")
        per_class.append([{"id": f"{wnid}/{f}", "label": label, "file": f"{wnid}/{f}"} for f in names[:INET_PER_CLASS]])
    items = interleave(per_class)
    blobs = [files[prefix + it["file"]] for it in items]
    meta = {
        "name": "imagenette_val200",
        "dataset": "imagenette",
        "source": "embedded",
        "description": "imagenette2 validation images, the first 20 by file name of each class, as 224x224 JPEG "
        "re-encodes (original bytes; whether they were squashed or cropped from the full-size images is unknown)",
        "order": "interleaved by class: position = rank * 10 + label, so first:N is class-balanced for N % 10 == 0",
        "classes": list(IMAGENETTE_CLASSES),
        "wnids": list(IMAGENETTE_WNIDS),
        "resolution": [224, 224],
        "origin": {"archive": INET_ARCHIVE, "archive_sha256": sha256_file(archive), "member_prefix": prefix},
    }
    return packs.make_pack(meta, items, blobs)


def builders(data: Path) -> dict[str, Callable[[], Built]]:
    return {
        "cifar10_test1000": lambda: build_cifar10_test1000(data),
        "cifar10_exact20": lambda: build_exact20("cifar10"),
        "cifar100_exact20": lambda: build_exact20("cifar100"),
        "imagenette_val200": lambda: build_imagenette_val200(data),
    }


def sources_present(name: str, data: Path) -> bool:
    if name.startswith("cifar10_test"):
        return (data / CIFAR_ARCHIVE).is_file()
    if name.startswith("imagenette"):
        return (data / INET_ARCHIVE).is_file()
    try:
        return foolbox_dir().is_dir()
    except ImportError:
        return False


def check(out: Path, data: Path, rebuild: bool) -> int:
    """Verify shipped packs; with ``rebuild`` also rebuild from the sources (where present)
    and require byte-identical zips and indexes. Returns the number of problems."""
    problems = 0
    for name in packs.PACK_NAMES:
        found = packs.check_pack(name, out)
        for p in found:
            print(f"FAIL {p}")
        problems += len(found)
        if found:
            continue
        index = packs.read_index(name, out)
        note = "intact"
        if rebuild and sources_present(name, data):
            zdata, new_index = builders(data)[name]()
            same_zip = zdata == (out / index["zip"]["file"]).read_bytes()
            same_index = packs.index_json(new_index) == (out / f"{name}.json").read_text(encoding="utf-8")
            if not (same_zip and same_index):
                print(f"FAIL {name}: differs from a rebuild from the sources ({'zip' if not same_zip else 'index'})")
                problems += 1
                continue
            note = "intact, identical to a rebuild from the sources"
        elif rebuild:
            note = "intact (sources absent: not rebuilt)"
        print(f"ok   {name}: {index['n']} images, {index['zip']['bytes']} bytes, sha256 {index['zip']['sha256']} ({note})")
    md = SUBSETS_MD.read_text(encoding="utf-8") if SUBSETS_MD.is_file() else ""
    if out == packs.EMBEDDED_DIR and md != subsets_markdown():
        print(f"FAIL {SUBSETS_MD} is out of date (rerun without --check)")
        problems += 1
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder with the source archives")
    ap.add_argument("--out", type=Path, default=packs.EMBEDDED_DIR, help="where the packs live")
    ap.add_argument("--check", action="store_true", help="verify the shipped packs without writing anything")
    ap.add_argument("--no-rebuild", action="store_true", help="with --check: only verify sha256s, skip the rebuild comparison")
    args = ap.parse_args(argv)
    if args.check:
        n = check(args.out, args.data, rebuild=not args.no_rebuild)
        print("all shipped evaluation sets verified" if n == 0 else f"{n} problem(s)")
        return 0 if n == 0 else 1
    for name, build in builders(args.data).items():
        if not sources_present(name, args.data):
            raise SystemExit(f"sources for {name} not found (looked in {args.data})")
        zdata, index = build()
        zpath, jpath = packs.write_pack(args.out, zdata, index)
        print(f"wrote {zpath} ({len(zdata)} bytes, sha256 {index['zip']['sha256']}) and {jpath.name}")
    if args.out == packs.EMBEDDED_DIR:
        SUBSETS_MD.write_text(subsets_markdown(), encoding="utf-8")
        print(f"wrote {SUBSETS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
