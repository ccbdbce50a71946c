"""Image-folder datasets: ``<root>/<split>/<class>/*.{jpg,jpeg,png}``.

The JPEG archives in ``../shared/data`` unpack to this layout, and the model zoo trains
from it. Images are decoded once into a uint8 tensor (N, 3, H, W), which is small for
CIFAR-10 (180 MB) and for ImageNette at a reduced size; an on-disk ``.npz`` cache makes
later loads instant.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from benchmark.errors import BenchError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class FolderData:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    paths: list[str]  # relative to the split folder: "<class>/<file>"


def list_folder(root: str | Path, split: str, classes: Sequence[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted unless given) and (relative path, label) pairs, sorted by class then file."""
    base = Path(root) / split
    if not base.is_dir():
        raise BenchError(f"image folder not found: {base} (expected <root>/{split}/<class>/*.jpg)")
    found = sorted(d.name for d in base.iterdir() if d.is_dir())
    classes = list(classes) if classes is not None else found
    missing = [c for c in classes if c not in found]
    if missing:
        raise BenchError(f"image folder {base} lacks class folders {missing}")
    items: list[tuple[str, int]] = []
    for label, c in enumerate(classes):
        files = sorted(f.name for f in (base / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        items += [(f"{c}/{f}", label) for f in files]
    if not items:
        raise BenchError(f"no images under {base}")
    return classes, items


def decode(path: str | Path, size: int | None = None) -> np.ndarray:
    """An RGB uint8 HxWx3 array (greyscale converted), optionally resized to size x size."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def load_image_folder(
    root: str | Path,
    split: str,
    *,
    classes: Sequence[str] | None = None,
    size: int | None = None,
    cache_dir: str | Path | None = None,
) -> FolderData:
    """Decode a whole split into memory (with an optional npz cache keyed by the file list)."""
    classes, items = list_folder(root, split, classes)
    key = hashlib.sha256(repr((str(Path(root).resolve()), split, classes, size, items)).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"folder-{split}-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        arr, labels = z["images"], z["labels"]
    else:
        base = Path(root) / split
        arr = np.stack([decode(base / rel, size) for rel, _ in items])
        labels = np.array([lab for _, lab in items], dtype=np.int64)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, images=arr, labels=labels)
            tmp.replace(cache)
    images = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
    return FolderData(images, torch.from_numpy(labels), list(classes), [rel for rel, _ in items])
