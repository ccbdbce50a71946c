"""Evaluation data: shipped sets, subset specs, sources and their errors."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import struct
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data import EvalSet, dataset_rows, load_eval_set, parse_subset, subset_rows, subsets_markdown
from benchmark.data import datasets as ds
from benchmark.data import packs
from benchmark.data.subsets import diffpure_indices
from benchmark.errors import BenchError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def one_line_error(fn, *args, match: str, **kw) -> str:
    with pytest.raises(BenchError, match=match) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------- shipped sets
def test_shipped_packs_intact():
    for name in packs.PACK_NAMES:
        assert packs.check_pack(name) == [], name
    total = sum(p.stat().st_size for p in packs.EMBEDDED_DIR.iterdir())
    assert total < 8_000_000


def test_check_mode_verifies_and_detects_corruption(tmp_path):
    r = subprocess.run([sys.executable, "scripts/build_subsets.py", "--check", "--no-rebuild"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok   ") == len(packs.PACK_NAMES)
    # a copy with one flipped byte inside a member fails both the zip and the member hash
    bad = tmp_path / "embedded"
    shutil.copytree(packs.EMBEDDED_DIR, bad)
    z = bad / "cifar10_exact20.zip"
    data = bytearray(z.read_bytes())
    data[200] ^= 0xFF
    z.write_bytes(bytes(data))
    assert packs.check_pack("cifar10_exact20", bad)
    with pytest.raises(BenchError, match="sha256"):
        packs.read_pack("cifar10_exact20", bad)
    r = subprocess.run(
        [sys.executable, "scripts/build_subsets.py", "--check", "--no-rebuild", "--out", str(bad)], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 1 and "FAIL cifar10_exact20" in r.stdout


@pytest.mark.skipif(not (SHARED / "cifar10-jpeg.tar.gz").is_file(), reason="source archives absent")
def test_cifar_pack_rebuilds_identically():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import build_subsets
    finally:
        sys.path.pop(0)
    for name, build in [("cifar10_test1000", lambda: build_subsets.build_cifar10_test1000(SHARED)),
                        ("cifar10_exact20", lambda: build_subsets.build_exact20("cifar10"))]:  # fmt: skip
        data, index = build()
        assert data == (packs.EMBEDDED_DIR / f"{name}.zip").read_bytes()
        assert packs.index_json(index) == (packs.EMBEDDED_DIR / f"{name}.json").read_text()
    idx = packs.read_index("cifar10_test1000")
    assert idx["origin"]["archive_sha256"] == "820394552d8cd6cf2834c7f34753d3e36624717e73e6a373a57a01edb25bc5f0"


def test_cifar10_embedded_shape_labels_interleaved():
    s = load_eval_set("cifar10")
    assert isinstance(s, EvalSet) and len(s) == 1000 and s.source == "embedded" and s.subset == "all"
    assert s.images.shape == (1000, 3, 32, 32) and s.images.dtype == torch.float32
    assert 0.0 <= float(s.images.min()) and float(s.images.max()) <= 1.0 and float(s.images.std()) > 0.1
    assert s.labels.dtype == torch.int64
    assert s.labels.tolist() == [i % 10 for i in range(1000)]
    assert s.ids[:11] == [f"{c}/0000.jpg" for c in ds.CIFAR10_CLASSES] + ["airplane/0001.jpg"]
    assert all(s.ids[i] == f"{ds.CIFAR10_CLASSES[i % 10]}/{i // 10:04d}.jpg" for i in range(1000))
    assert s.classes == list(ds.CIFAR10_CLASSES)
    assert torch.bincount(load_eval_set("cifar10", "first:50").labels).tolist() == [5] * 10
    # the stored bytes are the source JPEGs, unchanged
    index, blobs = packs.read_pack("cifar10_test1000")
    assert index["items"][0]["sha256"] == hashlib.sha256(blobs[0]).hexdigest()
    assert blobs[0][:3] == b"\xff\xd8\xff"


def test_imagenette_embedded():
    s = load_eval_set("imagenette", "first:20")
    assert s.images.shape == (20, 3, 224, 224) and s.labels.tolist() == [i % 10 for i in range(20)]
    assert s.ids[0].startswith("n01440764/") and s.classes[0] == "tench"
    idx = packs.read_index("imagenette_val200")
    assert idx["n"] == 200 and idx["origin"]["archive_sha256"].startswith("ad325559")
    per_class = {}
    for it in idx["items"]:
        per_class.setdefault(it["label"], []).append(it["id"].split("/")[1])
    assert all(len(v) == 20 and v == sorted(v) for v in per_class.values())


def test_exact20_equal_foolbox_pixels():
    fb_utils = pytest.importorskip("foolbox.utils")
    for name in ("cifar10", "cifar100"):
        s = load_eval_set(name, source="exact20") if name == "cifar10" else load_eval_set(name)
        assert s.source == "exact20" and len(s) == 20 and s.ids == [f"test/{i}" for i in range(20)]
        x, y = fb_utils._samples(dataset=name, index=0, batchsize=20, shape=(32, 32), data_format="channels_first", bounds=(0, 255))
        assert torch.equal((s.images * 255).round().to(torch.uint8), torch.from_numpy(x.astype(np.uint8)))
        assert s.labels.tolist() == y.tolist()
    assert load_eval_set("cifar100").classes[49] == "mountain"


def test_exact20_matches_jpeg_ranks():
    """The JPEG set keeps each class's canonical order: canonical test image i is
    <class>/<rank>.jpg, with rank its position among earlier images of its class."""
    exact = load_eval_set("cifar10", source="exact20")
    jpeg = load_eval_set("cifar10")
    pos = {k: i for i, k in enumerate(jpeg.ids)}
    seen = [0] * 10
    for i in range(20):
        c = int(exact.labels[i])
        j = pos[f"{ds.CIFAR10_CLASSES[c]}/{seen[c]:04d}.jpg"]
        seen[c] += 1
        mse = float(((exact.images[i] - jpeg.images[j]) ** 2).mean())
        assert 10 * np.log10(1 / mse) > 24, (i, j)
        wrong = float(((exact.images[i] - jpeg.images[(j + 1) % 1000]) ** 2).mean())
        assert wrong > 5 * mse


# --------------------------------------------------------------------------- subsets
def test_random_subset_is_the_numpy_call():
    sub = parse_subset("random:512:0")
    assert sub.spec == "random:512:0"
    np.testing.assert_array_equal(sub.indices(10000), np.random.RandomState(0).choice(10000, 512, replace=False))
    np.testing.assert_array_equal(parse_subset("random:7:123").indices(1000), np.random.RandomState(123).choice(1000, 7, replace=False))
    s = load_eval_set("cifar10", "random:10:3")
    assert s.ids == [f"{ds.CIFAR10_CLASSES[i % 10]}/{i // 10:04d}.jpg" for i in np.random.RandomState(3).choice(1000, 10, replace=False)]


def test_diffpure_spec():
    idx = parse_subset("diffpure").indices(10000)
    expect = np.concatenate([np.random.RandomState(s).choice(10000, 64, replace=False) for s in range(8)])
    np.testing.assert_array_equal(idx, expect)
    assert len(idx) == 512 and len(set(idx.tolist())) == 504  # runs are independent draws
    np.testing.assert_array_equal(idx[:64], parse_subset("random:64:0").indices(10000))
    np.testing.assert_array_equal(diffpure_indices(1000), parse_subset("diffpure").indices(1000))
    assert len(load_eval_set("cifar10", "diffpure")) == 512


def test_first_all_and_ids(tmp_path):
    np.testing.assert_array_equal(parse_subset("first:3").indices(10), [0, 1, 2])
    np.testing.assert_array_equal(parse_subset(None).indices(4), [0, 1, 2, 3])
    assert parse_subset(" ALL ").spec == "all"
    f = tmp_path / "ids.txt"
    f.write_text("# chosen\ntest/5\n\ntest/2  # a cat\n")
    s = load_eval_set("cifar10", f"ids:{f}", source="exact20")
    assert s.ids == ["test/5", "test/2"] and s.subset == f"ids:{f}"
    ref = load_eval_set("cifar10", source="exact20")
    assert torch.equal(s.images, ref.images[[5, 2]])


def test_rows_and_docs():
    rows = subset_rows()
    assert [r["spec"] for r in rows] == ["all", "first:N", "random:N:SEED", "diffpure", "diffpure:RUNS:BATCH", "ids:FILE"]
    assert all(set(r) == {"spec", "meaning", "used_by"} for r in rows)
    assert "random:512:0" in rows[2]["used_by"]
    assert (REPO / "benchmark" / "data" / "SUBSETS.md").read_text() == subsets_markdown()
    d = {r["name"]: r for r in dataset_rows()}
    assert set(d) == {"cifar10", "cifar100", "imagenette", "imagenet"}
    assert d["cifar10"]["resolution"] == "32x32" and d["cifar100"]["classes"] == "100"


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("spec", ["first", "first:", "first:0", "first:x", "random:10", "random:10:-1", "random:a:1",
                                  "random:1:2:3", "diffpure:3", "all:5", "ids:", "last:5", "", "12"])  # fmt: skip
def test_malformed_subsets(spec):
    one_line_error(parse_subset, spec, match="malformed subset|ids file")


def test_bad_input_errors(tmp_path):
    one_line_error(load_eval_set, "cifar11", match="unknown dataset 'cifar11'.*cifar10")
    one_line_error(load_eval_set, "cifar10", source="webdataset", match="unknown source 'webdataset' for dataset cifar10")
    one_line_error(load_eval_set, "cifar100", source="embedded", match="unknown source")
    one_line_error(load_eval_set, "cifar10", "first:2000", match="first:2000 asks for 2000 images but the source has only 1000")
    one_line_error(load_eval_set, "cifar100", "random:21:0", match="only 20")
    one_line_error(load_eval_set, "cifar100", "diffpure", match="64 images per seed")
    f = tmp_path / "ids.txt"
    f.write_text("test/1\ntest/99\nnope\n")
    one_line_error(load_eval_set, "cifar10", f"ids:{f}", source="exact20", match="2 of 3 ids not found")
    one_line_error(load_eval_set, "cifar10", f"ids:{tmp_path / 'none.txt'}", match="ids file not found")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    one_line_error(parse_subset, f"ids:{tmp_path / 'empty.txt'}", match="lists no ids")
    one_line_error(load_eval_set, "cifar10", source="folder:", match="needs a path")
    one_line_error(load_eval_set, "cifar10", source=f"folder:{tmp_path / 'x'}", match="image folder not found")


def test_missing_canonical_offline(tmp_path, monkeypatch):
    msg = one_line_error(load_eval_set, "cifar10", source="torchvision", root=tmp_path, match="not found in")
    assert str(tmp_path) in msg and "cifar-10-python.tar.gz" in msg
    msg = one_line_error(load_eval_set, "imagenette", source="canonical", root=tmp_path, match="not found in")
    assert str(tmp_path) in msg and "imagenette2.tgz" in msg
    # default folder: the cache (the test session points PURIFYBENCH_CACHE at a temp dir)
    msg = one_line_error(load_eval_set, "cifar100", source="torchvision", match="not found in")
    assert str(ds.data_cache_dir()) in msg

    def offline(url, folder, filename, md5):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(ds, "_download", offline)
    msg = one_line_error(load_eval_set, "cifar10", source="torchvision", root=tmp_path, download=True, match="could not download")
    assert f"in {tmp_path}" in msg
    (tmp_path / "imagenette2.tgz").write_bytes(b"not an archive")
    one_line_error(load_eval_set, "imagenette", source="canonical", root=tmp_path, match="corrupt")


# --------------------------------------------------------------------------- canonical formats
def _py2_pickle(data: np.ndarray, key: str, labels: list[int]) -> bytes:
    """A CIFAR batch pickled the way the original files were (Python 2, protocol 2,
    numpy.core globals, the array payload as a py2 str), written opcode by opcode."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(b)]) + b

    n, d = data.shape
    out = b"\x80\x02}q\x00(" + s(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
    out += b"(K\x01M" + struct.pack("<H", n) + b"M" + struct.pack("<H", d) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + struct.pack("<i", n * d) + data.tobytes() + b"tb"
    out += s(key.encode()) + b"]q\x01(" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    return out


def _fake_cifar_batch(path: Path, n: int, key: str, classes: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.RandomState(0)
    data = rng.randint(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.randint(0, classes, size=n)]
    path.parent.mkdir(parents=True)
    path.write_bytes(_py2_pickle(data, key, labels))
    return data, labels


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_torchvision_format_reader(tmp_path, monkeypatch, name):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    batch = tmp_path / cls.base_folder / cls.test_list[0][0]
    data, labels = _fake_cifar_batch(batch, 30, "labels" if name == "cifar10" else "fine_labels", 10 if name == "cifar10" else 100)
    one_line_error(load_eval_set, name, source="torchvision", root=tmp_path, match="corrupt .*md5")
    monkeypatch.setattr(cls, "test_list", [[cls.test_list[0][0], hashlib.md5(batch.read_bytes()).hexdigest()]])
    s = load_eval_set(name, "first:25", source="torchvision", root=tmp_path)
    assert s.ids[:2] == ["test/0", "test/1"] and s.labels.tolist() == labels[:25]
    expect = torch.from_numpy(data[:25].reshape(-1, 3, 32, 32)).float() / 255
    assert torch.equal(s.images, expect)
    # the same images through torchvision's own (unrestricted) loader
    monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cls, "_load_meta", lambda self: None)
    tv = cls(str(tmp_path), train=False)
    assert np.array_equal(tv.data[:25], (s.images * 255).round().byte().permute(0, 2, 3, 1).numpy())
    assert tv.targets[:25] == s.labels.tolist()


def test_cifar_reader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "test_batch"
    p.write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    one_line_error(ds.read_cifar_batch, p, match="unexpected object .*print")


def _jpeg(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def test_folder_source_and_canonical_imagenette(tmp_path):
    # tiny CIFAR-style folder
    root = tmp_path / "c10"
    for label, c in enumerate(ds.CIFAR10_CLASSES):
        (root / "test" / c).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (32, 32), (label * 20, k * 100, 7)).save(root / "test" / c / f"{k:04d}.png")
    s = load_eval_set("cifar10", "first:3", source=f"folder:{root}")
    assert s.source == f"folder:{root}" and s.ids == ["airplane/0000.png", "airplane/0001.png", "automobile/0000.png"]
    assert s.labels.tolist() == [0, 0, 1] and s.images.shape == (3, 3, 32, 32)
    assert round(float(s.images[2, 0, 0, 0]) * 255) == 20 and round(float(s.images[1, 1, 0, 0]) * 255) == 100
    shutil.rmtree(root / "test" / "truck")
    one_line_error(load_eval_set, "cifar10", source=f"folder:{root}", match="lacks class folders")
    # canonical imagenette layout under root/imagenette2/val, native sizes -> 224 crops
    inet = tmp_path / "dl"
    for label, wnid in enumerate(ds.IMAGENETTE_WNIDS):
        (inet / "imagenette2" / "val" / wnid).mkdir(parents=True)
        (inet / "imagenette2" / "val" / wnid / "b.JPEG").write_bytes(_jpeg((500, 375), (label * 25, 0, 0)))
        (inet / "imagenette2" / "val" / wnid / "a.JPEG").write_bytes(_jpeg((224, 224), (0, label * 25, 0)))
    s = load_eval_set("imagenette", source="canonical", root=inet)
    assert len(s) == 20 and s.images.shape == (20, 3, 224, 224)
    assert s.ids[:2] == ["n01440764/a.JPEG", "n01440764/b.JPEG"] and s.labels.tolist()[:4] == [0, 0, 1, 1]
    assert abs(float(s.images[3, 0].mean()) * 255 - 25) < 3  # the resized-and-cropped 500x375 image


def test_fit_is_resize_then_center_crop():
    from torchvision import transforms as T

    im = Image.fromarray(np.random.RandomState(1).randint(0, 256, (300, 410, 3), dtype=np.uint8))
    ref = T.Compose([T.Resize(256), T.CenterCrop(224)])(im)
    assert np.array_equal(np.asarray(ds.fit(im, 224)), np.asarray(ref))
    small = Image.new("RGB", (224, 224))
    assert ds.fit(small, 224) is small


def test_index_records_provenance():
    for name in packs.PACK_NAMES:
        idx = json.loads((packs.EMBEDDED_DIR / f"{name}.json").read_text())
        assert idx["classes"] == list(ds.SPECS[idx["dataset"]].classes)
        assert {"id", "label", "file", "sha256"} <= set(idx["items"][0])
        assert ("archive_sha256" in idx["origin"]) or idx["origin"]["package"].startswith("foolbox==")
