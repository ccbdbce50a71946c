#!/usr/bin/env python
"""Pack ImageNette at a small resolution for training on a GPU box.

    python scripts/pack_imagenette.py --size 64 --out DIR [--src /work/data/imagenette2]

writes an image folder the classifier trainer reads directly (``data.dir: imagenette-pack``):

- ``DIR/train/<wnid>/*.jpg``, ``DIR/val/<wnid>/*.jpg``: every image resized to SIZE x SIZE
  with the models' own resize (``defenses.classifiers.resize_images``: bilinear, antialiased,
  in float, then rounded), stored as JPEG (quality 90) to keep the pack small;
- ``DIR/eval224/<wnid>/*.JPEG``: byte-exact copies of the first ``--eval-per-class`` (20) val
  images per class at their native 224 px: the embedded evaluation subset, on which the
  model (which resizes inside its forward) is evaluated at the end of training;
- ``DIR/PACK.json``: what was done, with the source archive's sha256 when found.

At 64 px, quality 90, the images take about 32 MB (a .tar.gz of the folder about the same).
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from defenses.classifiers import IMAGENETTE_WNIDS, resize_images  # noqa: E402

ARCHIVE = "imagenette2-224-jpeg.tar.gz"
ARCHIVE_SHA256 = "ad325559a0ccbb1daffb5b4c9811a51cdca4c6755d2735ab16146f0a773ab662"


def pack_one(src: Path, dst: Path, size: int, quality: int) -> int:
    with Image.open(src) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255
    y = resize_images(x, size)[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(y).save(buf, "JPEG", quality=quality)
    dst.write_bytes(buf.getvalue())
    return len(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--src", default="/work/data/imagenette2", help="folder with train/ and val/ of imagenette2")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--eval-per-class", type=int, default=20)
    p.add_argument("--archive", default=None, help=f"path of {ARCHIVE}, to record its sha256")
    p.add_argument("--workers", type=int, default=4)
    a = p.parse_args(argv)
    src, out = Path(a.src), Path(a.out)
    for split in ("train", "val"):
        if not (src / split).is_dir():
            print(f"error: {src / split} not found", file=sys.stderr)
            return 2
    t0 = time.time()
    counts: dict[str, int] = {}
    total = 0
    jobs = []
    for split in ("train", "val"):
        for wnid in IMAGENETTE_WNIDS:
            files = sorted(f for f in (src / split / wnid).iterdir() if f.suffix.lower() in (".jpeg", ".jpg", ".png"))
            (out / split / wnid).mkdir(parents=True, exist_ok=True)
            jobs += [(f, out / split / wnid / (f.stem + ".jpg")) for f in files]
            counts[split] = counts.get(split, 0) + len(files)
            if split == "val":
                (out / "eval224" / wnid).mkdir(parents=True, exist_ok=True)
                for f in files[: a.eval_per_class]:
                    shutil.copyfile(f, out / "eval224" / wnid / f.name)
                    total += f.stat().st_size
                    counts["eval224"] = counts.get("eval224", 0) + 1
    torch.set_num_threads(1)
    with ThreadPoolExecutor(a.workers) as ex:
        total += sum(ex.map(lambda j: pack_one(j[0], j[1], a.size, a.quality), jobs, chunksize=64))
    archive_sha = None
    cand = [Path(a.archive)] if a.archive else [src.parent / ARCHIVE, Path("/work/shared/data") / ARCHIVE]
    for c in cand:
        if c.is_file():
            from defenses.weights import sha256_file

            archive_sha = sha256_file(c)
            break
    info = {
        "source": str(src), "archive": ARCHIVE, "archive_sha256_published": ARCHIVE_SHA256,
        "archive_sha256": archive_sha, "size": a.size, "jpeg_quality": a.quality, "chroma": "4:2:0 (PIL default)",
        "resize": "defenses.classifiers.resize_images: torch bilinear, antialias=True, align_corners=False, "
                  "float then round to uint8",
        "eval224": f"byte copies of the first {a.eval_per_class} val images per class (sorted file names), native 224 px",
        "counts": counts, "bytes": total, "classes": list(IMAGENETTE_WNIDS),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "PACK.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"packed {counts} into {out}: {total / 1e6:.1f} MB in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
