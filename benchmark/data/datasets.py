"""Evaluation datasets and their sources.

A dataset (``cifar10``, ``cifar100``, ``imagenette``) can come from several sources:

- ``embedded``: the fixed evaluation set shipped in the package (works offline);
- ``exact20``: the first 20 canonical CIFAR test images with their exact pixels
  (foolbox's lossless PNGs), the only CIFAR-100 images available offline;
- ``torchvision`` (CIFAR) / ``canonical`` (ImageNette): the canonical test/val split,
  downloaded into ``cache_dir()/"data"`` (or ``root``) when ``download=True``;
- ``folder:PATH``: an image folder ``PATH/{test|val}/<class>/*``.

Every source lists ids and labels first and decodes only the images a subset selects, so
``--subset first:64`` on the 3,925 full-size ImageNette images decodes 64.
"""
from __future__ import annotations

import io
import pickle
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from benchmark.errors import BenchError
from benchmark.registry import DATASETS

from . import packs
from .folder import list_folder
from .subsets import Subset, parse_subset

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100 fine labels, in label order (the alphabetical ``fine_label_names`` of the meta file).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)  # fmt: skip
IMAGENETTE_CLASSES = (
    "tench", "English springer", "cassette player", "chain saw", "church",
    "French horn", "garbage truck", "gas pump", "golf ball", "parachute",
)  # fmt: skip
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz"
IMAGENETTE_MD5 = "fe2fc210e6bb7c5664d602c3cd71e612"  # as listed by torchvision.datasets.Imagenette


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]  # label order, human-readable
    folder_classes: tuple[str, ...]  # class folder names in label order
    resolution: int
    default_source: str
    sources: tuple[str, ...]  # named sources; "folder:PATH" is always accepted too
    packs: dict[str, str] = field(default_factory=dict)  # source -> shipped pack
    sizes: dict[str, int] = field(default_factory=dict)  # source -> number of images
    note: str = ""


SPECS: dict[str, DatasetSpec] = {}


def _register(spec: DatasetSpec) -> None:
    SPECS[spec.name] = spec

    def make(**kw: Any) -> "EvalSet":
        return load_eval_set(spec.name, **kw)

    make.__doc__ = spec.note
    DATASETS.add(spec.name, make, spec=spec)


_register(DatasetSpec(
    "cifar10", CIFAR10_CLASSES, CIFAR10_CLASSES, 32, "embedded", ("embedded", "exact20", "torchvision"),
    packs={"embedded": "cifar10_test1000", "exact20": "cifar10_exact20"},
    sizes={"embedded": 1000, "exact20": 20, "torchvision": 10000},
    note="embedded = first 100 test images per class of a JPEG re-encode (interleaved by class); "
    "exact20 = canonical test images 0-19, exact pixels; torchvision = the 10,000 canonical test images",
))  # fmt: skip
_register(DatasetSpec(
    "cifar100", CIFAR100_CLASSES, CIFAR100_CLASSES, 32, "exact20", ("exact20", "torchvision"),
    packs={"exact20": "cifar100_exact20"},
    sizes={"exact20": 20, "torchvision": 10000},
    note="exact20 = canonical test images 0-19, exact pixels (the only CIFAR-100 images offline); "
    "torchvision = the 10,000 canonical test images",
))  # fmt: skip
_register(DatasetSpec(
    "imagenette", IMAGENETTE_CLASSES, IMAGENETTE_WNIDS, 224, "embedded", ("embedded", "canonical"),
    packs={"embedded": "imagenette_val200"},
    sizes={"embedded": 200, "canonical": 3925},
    note="embedded = first 20 val images per class (224x224 JPEG re-encodes, interleaved by class); "
    "canonical = fast.ai imagenette2 val, full size, resized to 256 and centre-cropped to 224",
))  # fmt: skip
# ImageNet-1k: no offline source; the 50,000 val images from a local folder (PATH/val/<wnid>/*.JPEG,
# torchvision ImageFolder order: sorted wnids = label order, files sorted), resized to 256 and
# centre-cropped to 224 as DiffPure's ``imval`` transform. The wnid list is timm's imagenet_synsets.txt.
IMAGENET_WNIDS = tuple((Path(__file__).parent / "imagenet_wnids.txt").read_text().split())
_register(DatasetSpec(
    "imagenet", IMAGENET_WNIDS, IMAGENET_WNIDS, 224, "folder:", (),
    note="no offline images: --source folder:PATH with PATH/val/<wnid>/*.JPEG (the 50,000 ILSVRC2012 val images); "
    "resized to 256 and centre-cropped to 224; DiffPure's subset: --subset diffpure:32:16",
))  # fmt: skip


@dataclass
class EvalSet:
    """Images to evaluate: float32 [0,1] NCHW on CPU, labels, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    dataset: str
    source: str
    subset: str
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class SourceData:
    """A source before subset selection: ids and labels, and a decoder for chosen positions."""

    ids: list[str]
    labels: np.ndarray
    fetch: Callable[[np.ndarray], np.ndarray]  # positions -> uint8 (N, 3, H, W)


def data_cache_dir() -> Path:
    """Default download folder: ``benchmark.resources.cache_dir() / "data"``."""
    from ..resources import cache_dir

    return cache_dir() / "data"


def get_spec(name: str) -> DatasetSpec:
    DATASETS.get(name)  # BenchError with suggestions for an unknown name
    return SPECS[name]


# --------------------------------------------------------------------------- decoding
def fit(im: Image.Image, resolution: int) -> Image.Image:
    """Bring an image to ``resolution`` squared: unchanged when it already is; otherwise the
    standard evaluation transform, resize the short side to ``resolution * 8/7`` (256 for
    224) and centre-crop (as DiffPure's ImageNet ``imval`` transform)."""
    if im.size == (resolution, resolution):
        return im
    from torchvision.transforms import functional as TF

    return TF.center_crop(TF.resize(im, round(resolution * 8 / 7)), [resolution, resolution])


def decode_file(path: str | Path | io.BytesIO, resolution: int) -> np.ndarray:
    """RGB uint8 (3, R, R) from an image file."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(fit(im.convert("RGB"), resolution), dtype=np.uint8)
    except (OSError, SyntaxError) as e:
        raise BenchError(f"cannot decode image {path}: {e}") from None
    return arr.transpose(2, 0, 1)


def _stack(arrays: list[np.ndarray], resolution: int) -> np.ndarray:
    if not arrays:
        return np.zeros((0, 3, resolution, resolution), dtype=np.uint8)
    return np.ascontiguousarray(np.stack(arrays))


# --------------------------------------------------------------------------- sources
def _embedded(spec: DatasetSpec, source: str) -> SourceData:
    index, blobs = packs.read_pack(spec.packs[source])
    items = index["items"]
    if tuple(index["classes"]) != spec.classes:
        raise BenchError(f"shipped set {index['name']} lists classes that differ from {spec.name}'s; reinstall the package")

    def fetch(pos: np.ndarray) -> np.ndarray:
        return _stack([decode_file(io.BytesIO(blobs[i]), spec.resolution) for i in pos.tolist()], spec.resolution)

    return SourceData([it["id"] for it in items], np.array([it["label"] for it in items], dtype=np.int64), fetch)


def _folder(spec: DatasetSpec, path: str) -> SourceData:
    if not path:
        raise BenchError("source folder:PATH needs a path, e.g. folder:/data/cifar10-jpeg")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BenchError(f"image folder not found: {root}")
    split = next((s for s in ("test", "val") if (root / s).is_dir()), None)
    if split is None:
        raise BenchError(f"image folder {root} has neither test/ nor val/ (expected {root}/test/<class>/*.jpg)")
    _, items = list_folder(root, split, spec.folder_classes)
    base = root / split

    def fetch(pos: np.ndarray) -> np.ndarray:
        return _stack([decode_file(base / items[i][0], spec.resolution) for i in pos.tolist()], spec.resolution)

    return SourceData([rel for rel, _ in items], np.array([lab for _, lab in items], dtype=np.int64), fetch)


def _download(url: str, folder: Path, filename: str | None, md5: str) -> None:
    """Download and extract an archive (torchvision's helper, md5-checked)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(url, str(folder), filename=filename, md5=md5)


def _extract(archive: Path, folder: Path, md5: str) -> None:
    from torchvision.datasets.utils import check_integrity, extract_archive

    if not check_integrity(str(archive), md5):
        raise BenchError(f"{archive} is corrupt or not the expected file (md5 differs from {md5}); delete it and download again")
    extract_archive(str(archive), str(folder))


def _fetch_archive(what: str, url: str, filename: str, md5: str, folder: Path, download: bool) -> None:
    """Make the archive's contents appear in ``folder``: extract a copy placed there by
    hand, else download when asked, else fail naming the folder."""
    archive = folder / filename
    if archive.is_file():
        _extract(archive, folder, md5)
        return
    if not download:
        raise BenchError(f"{what} not found in {folder}: put {filename} ({url}) there, or rerun online with --download")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _download(url, folder, filename, md5)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BenchError(f"could not download {what} ({reason}); offline? put {filename} ({url}) in {folder}") from None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python batches (dicts of lists and numpy arrays) and nothing
    else, so a tampered download cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch file")
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path) -> dict[str, Any]:
    """A CIFAR python batch file (torchvision's format) as a dict, unpickled safely."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise BenchError(f"corrupt CIFAR batch file {path}: {e}") from None
    if not isinstance(entry, dict) or "data" not in entry:
        raise BenchError(f"corrupt CIFAR batch file {path}: no 'data' entry")
    return entry


def _torchvision_cifar(spec: DatasetSpec, root: Path, download: bool) -> SourceData:
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import check_integrity

    cls = CIFAR10 if spec.name == "cifar10" else CIFAR100
    batch_name, md5 = cls.test_list[0]
    batch = root / cls.base_folder / batch_name
    if not batch.is_file():
        _fetch_archive(f"{spec.name} (torchvision)", cls.url, cls.filename, cls.tgz_md5, root, download)
    if not batch.is_file():
        raise BenchError(f"{spec.name} test batch missing after extraction: expected {batch}")
    if not check_integrity(str(batch), md5):
        raise BenchError(f"{batch} is corrupt (md5 differs from torchvision's {md5}); delete {root / cls.base_folder} and download again")
    entry = read_cifar_batch(batch)
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry["labels"] if "labels" in entry else entry["fine_labels"], dtype=np.int64)
    if len(labels) != len(data) or (len(labels) and not 0 <= labels.min() <= labels.max() < len(spec.classes)):
        raise BenchError(f"corrupt CIFAR batch file {batch}: labels do not match the images")
    return SourceData([f"test/{i}" for i in range(len(data))], labels, lambda pos: np.ascontiguousarray(data[pos]))


def _canonical_imagenette(spec: DatasetSpec, root: Path, download: bool) -> SourceData:
    folder = root / "imagenette2"
    if not (folder / "val").is_dir():
        _fetch_archive("imagenette (imagenette2)", IMAGENETTE_URL, "imagenette2.tgz", IMAGENETTE_MD5, root, download)
    return _folder(spec, str(folder))


def open_source(dataset: str, source: str | None = None, *, root: str | Path | None = None, download: bool = False) -> tuple[DatasetSpec, str, SourceData]:
    """Resolve a dataset's source (default when None) into ids, labels and a decoder."""
    spec = get_spec(dataset)
    source = spec.default_source if source is None else str(source).strip()
    if source.startswith("folder:"):
        return spec, source, _folder(spec, source[len("folder:"):])
    if source not in spec.sources:
        known = ", ".join(spec.sources + ("folder:PATH",))
        raise BenchError(f"unknown source {source!r} for dataset {dataset}; known: {known}")
    if source in spec.packs:
        return spec, source, _embedded(spec, source)
    base = Path(root).expanduser() if root is not None else data_cache_dir()
    if source == "torchvision":
        return spec, source, _torchvision_cifar(spec, base, download)
    if source == "canonical":
        return spec, source, _canonical_imagenette(spec, base, download)
    raise AssertionError(f"source {source} of {dataset} has no loader")


def load_eval_set(
    dataset: str,
    subset: str | Subset | None = None,
    *,
    source: str | None = None,
    root: str | Path | None = None,
    download: bool = False,
) -> EvalSet:
    """Load the images of ``subset`` (default: all) of ``dataset``'s ``source``.

    ``root`` is where downloaded sources live (default ``cache_dir()/"data"``);
    ``download=True`` fetches a missing canonical set. Bad input raises BenchError.
    """
    sub = parse_subset(subset)
    spec, source, data = open_source(dataset, source, root=root, download=download)
    try:
        pos = sub.indices(len(data.ids), data.ids)
    except BenchError as e:
        raise BenchError(f"{dataset} source {source}: {e}") from None
    arr = data.fetch(pos)
    images = torch.from_numpy(arr).to(torch.float32).div_(255.0)
    return EvalSet(
        images=images,
        labels=torch.from_numpy(data.labels[pos].copy()),
        ids=[data.ids[i] for i in pos.tolist()],
        dataset=spec.name,
        source=source,
        subset=sub.spec,
        classes=list(spec.classes),
    )


def dataset_rows() -> list[dict[str, str]]:
    """One row per dataset for ``bench list datasets``."""
    rows = []
    for spec in SPECS.values():
        sources = [f"{s} (default)" if s == spec.default_source else s for s in spec.sources] + ["folder:PATH"]
        rows.append({
            "name": spec.name,
            "sources": ", ".join(sources),
            "n": ", ".join(f"{s} {n}" for s, n in spec.sizes.items()),
            "resolution": f"{spec.resolution}x{spec.resolution}",
            "classes": str(len(spec.classes)),
            "note": spec.note,
        })  # fmt: skip
    return rows
