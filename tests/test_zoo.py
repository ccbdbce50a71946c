"""Model zoo: training entry point (weights, recipe, resume, reproducibility), safe loaders,
shipped-weights registration, and the CIFAR-100 path on the 20 exact images. All CPU, tiny."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from benchmark.errors import BenchError
from benchmark.train import classifier as trainer
from defenses import classifiers as zoo
from defenses import weights as wmod

TINY_MODEL = {"arch": "airnet", "kwargs": {"widths": [8, 16, 16]}, "whiten_init": True,
              "whiten_init_images": 64, "whiten_bias_epochs": 1}


def _write_folder(root: Path, split: str, n_per_class: int, n_classes: int, seed: int, size: int = 16) -> None:
    """Learnable toy images: each class has its own mean colour, plus noise."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(123).uniform(40, 215, size=(n_classes, 3))
    for c in range(n_classes):
        d = root / split / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = np.clip(colours[c] + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:04d}.png")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    _write_folder(root / "toy", "train", 16, 4, seed=0)
    _write_folder(root / "toy", "test", 6, 4, seed=1)
    return root


def _config(tmp: Path, **extra: object) -> Path:
    cfg = {
        "name": "toy", "dataset": "cifar10", "seed": 0,
        "data": {"dir": "toy", "subset_per_class": 3},
        "model": {**TINY_MODEL, "num_classes": 4},
        "aug": {"flip": True, "translate": 2},
        "opt": {"epochs": 3, "batch_size": 16, "lr": 0.2, "momentum": 0.85, "weight_decay": 1e-3,
                "norm_lr_scale": 8, "label_smoothing": 0.1, "warmup_frac": 0.2},
    }
    for k, v in extra.items():
        trainer._set_dotted(cfg, k, v)
    path = tmp / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(cfg: Path, out: Path, root: Path, **overrides: object) -> Path:
    return trainer.main(str(cfg), device="cpu", out_dir=str(out), data_root=str(root), overrides=dict(overrides))


# ------------------------------------------------------------------------ training
def test_train_writes_weights_recipe_and_log(tmp_path: Path, data_root: Path) -> None:
    out = _train(_config(tmp_path), tmp_path / "run", data_root)
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["status"] == "complete" and rec["epochs_run"] == 3 and len(rec["epochs"]) == 3
    for key in ("config", "seed", "data", "git", "versions", "hardware", "wall_time_s", "first_epoch_loss", "metrics"):
        assert key in rec, key
    assert rec["first_epoch_loss"] == rec["epochs"][0]["loss"] and np.isfinite(rec["first_epoch_loss"])
    assert len(rec["data"]["tree_sha256"]) == 64 and rec["data"]["n_train"] == 64
    assert rec["weights"]["sha256"] == wmod.sha256_file(out / "weights.safetensors")
    assert rec["metrics"]["n_subset"] == 12 and rec["metrics"]["n_full"] == 24
    # the toy task is easy: a working trainer learns it
    assert rec["metrics"]["clean_acc_full"] >= 0.75, rec["epochs"]
    assert "epoch 3/3" in (out / "train.log").read_text()
    assert not (out / "checkpoint.pt").exists()  # keep_checkpoint: false
    model = zoo.load_checkpoint_classifier(out / "weights.safetensors", "airnet", dataset="cifar10", num_classes=4,
                                           sha256=rec["weights"]["sha256"], widths=[8, 16, 16])
    x = torch.rand(2, 3, 16, 16)
    assert model(x).shape == (2, 4)
    assert torch.equal(zoo.load_run_classifier(out)(x), model(x))
    # the same command again finds the run complete and does nothing
    before = (out / "weights.safetensors").stat().st_mtime_ns
    _train(_config(tmp_path), tmp_path / "run", data_root)
    assert (out / "weights.safetensors").stat().st_mtime_ns == before


def test_resume_continues_like_an_uninterrupted_run(tmp_path: Path, data_root: Path) -> None:
    cfg = _config(tmp_path, keep_checkpoint=True)
    full = _train(cfg, tmp_path / "full", data_root)
    part = tmp_path / "part"
    _train(cfg, part, data_root, max_epochs=1)  # "interrupted" after epoch 1
    assert not (part / "recipe.json").exists()
    ck = torch.load(part / "checkpoint.pt", weights_only=True)  # loadable without pickle
    assert ck["epoch"] == 1 and len(ck["log"]) == 1
    _train(cfg, part, data_root)  # the same command resumes
    assert "resuming after epoch 1" in (part / "train.log").read_text()
    a = json.loads((full / "recipe.json").read_text())
    b = json.loads((part / "recipe.json").read_text())
    assert [e["loss"] for e in a["epochs"]] == [e["loss"] for e in b["epochs"]]
    wa = wmod.load_state_dict(full / "weights.safetensors")
    wb = wmod.load_state_dict(part / "weights.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a different config in the same folder is refused, not silently mixed
    _train(_config(tmp_path, **{"opt.lr": 0.1}), tmp_path / "other", data_root, max_epochs=1)
    with pytest.raises(BenchError, match="different config"):
        _train(_config(tmp_path, **{"opt.lr": 0.05}), tmp_path / "other", data_root)


def test_first_epoch_loss_reproducible(tmp_path: Path, data_root: Path) -> None:
    cfg = _config(tmp_path, **{"opt.epochs": 1, "data.full_eval": False})
    l1 = json.loads((_train(cfg, tmp_path / "a", data_root) / "recipe.json").read_text())["first_epoch_loss"]
    l2 = json.loads((_train(cfg, tmp_path / "b", data_root) / "recipe.json").read_text())["first_epoch_loss"]
    assert l1 == l2
    cfg2 = _config(tmp_path, seed=1, **{"opt.epochs": 1, "data.full_eval": False})
    l3 = json.loads((_train(cfg2, tmp_path / "c", data_root) / "recipe.json").read_text())["first_epoch_loss"]
    assert l3 != l1


def test_adversarial_training_path_records_pgd(tmp_path: Path, data_root: Path) -> None:
    cfg = _config(tmp_path, **{"opt.epochs": 1, "adv.method": "pgd", "adv.steps": 2, "adv.holdout": 8,
                               "adv.check_steps": 2, "adv.eval_steps": 3, "adv.early_stop_drop": 0.5})
    rec = json.loads((_train(cfg, tmp_path / "at", data_root) / "recipe.json").read_text())
    assert rec["data"]["n_holdout"] == 8 and rec["data"]["n_train"] == 56
    assert "holdout_pgd_acc" in rec["epochs"][0]
    m = rec["metrics"]
    assert 0 <= m["pgd3_acc_subset"] <= m["clean_acc_subset"] and "pgd3_acc_full" in m


def test_bad_config_and_device_are_bench_errors(tmp_path: Path, data_root: Path) -> None:
    with pytest.raises(BenchError, match="allowed keys"):
        _train(_config(tmp_path, **{"opt.lrr": 1.0}), tmp_path / "x", data_root)
    with pytest.raises(BenchError, match="not found"):
        _train(_config(tmp_path), tmp_path / "x", tmp_path / "nowhere")
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="CUDA"):
            trainer.main(str(_config(tmp_path)), device="cuda", out_dir=str(tmp_path / "x"), data_root=str(data_root))


def test_shipped_configs_parse() -> None:
    root = Path(__file__).resolve().parent.parent / "configs" / "train"
    for name in ("cifar10_standard", "cifar10_at_pgd", "imagenette_standard", "cifar100_standard"):
        cfg, _ = trainer.load_train_config(root / f"{name}.yaml")
        assert cfg.name == name and zoo.SHIPPED[name][1] == f"configs/train/{name}.yaml"
        model = zoo.build_arch(cfg.model.arch, dataset=cfg.dataset, **cfg.model.kwargs)
        n = sum(p.numel() for p in model.parameters())
        assert 2 * n < 12e6, f"{name}: {n} params do not fit 12 MB in fp16"


# ------------------------------------------------------------------------ pieces
def test_augment_and_pgd_helpers() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 12, 12)
    y = trainer.augment(x, trainer.AugCfg(flip=False, translate=2), g)
    assert y.shape == x.shape
    # a translation: some shift of the reflect-padded image reproduces every output exactly
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(5):
        assert any(torch.equal(y[i], xp[i, :, a:a + 12, b:b + 12]) for a in range(5) for b in range(5))
    z = trainer.augment(x, trainer.AugCfg(flip=True, translate=0, crop_scale=[0.5, 1.0]), g)
    assert z.shape == x.shape and z.min() >= 0 and z.max() <= 1
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 3))
    lab = torch.tensor([0, 1, 2, 0, 1])
    adv = trainer.pgd_linf(model, x, lab, eps=4 / 255, alpha=1 / 255, steps=3, gen=g)
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    lossf = torch.nn.functional.cross_entropy
    assert lossf(model(adv), lab) > lossf(model(x), lab)


def test_model_resizes_native_inputs_inside_forward() -> None:
    m = zoo.build_arch("airnet", dataset="imagenette", widths=[8, 8, 8, 8], input_size=32, seed=0).eval()
    x = torch.rand(2, 3, 96, 96, requires_grad=True)
    out = m(x)
    assert torch.allclose(out, m(zoo.resize_images(x, 32)))
    out.sum().backward()  # differentiable end to end (attacks see the native images)
    assert x.grad is not None and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------ loaders
def test_checkpoint_loader_rejects_bad_files(tmp_path: Path) -> None:
    m = zoo.build_arch("airnet", dataset="cifar10", widths=[8, 8, 8], seed=0)
    p = tmp_path / "w.pt"
    torch.save(m.state_dict(), p)
    good = wmod.sha256_file(p)
    loaded = zoo.load_checkpoint_classifier(p, "airnet", dataset="cifar10", sha256=good, widths=[8, 8, 8])
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), m.eval()(x))
    with pytest.raises(BenchError, match="sha256"):
        zoo.load_checkpoint_classifier(p, "airnet", dataset="cifar10", sha256="0" * 64, widths=[8, 8, 8])
    evil = tmp_path / "evil.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, evil)  # a pickled module object
    with pytest.raises(BenchError, match="pickle"):
        zoo.load_checkpoint_classifier(evil, "airnet", dataset="cifar10", widths=[8, 8, 8])
    with pytest.raises(BenchError, match="does not fit"):
        zoo.load_checkpoint_classifier(p, "airnet", dataset="cifar10", widths=[8, 8, 16])
    with pytest.raises(BenchError, match="unknown architecture"):
        zoo.load_checkpoint_classifier(p, "resnet999", dataset="cifar10")


def test_resnet18_cifar_matches_pyautoattack_example_layout(tmp_path: Path) -> None:
    resnet = pytest.importorskip("pyautoattack.examples.resnet")
    ref = resnet.ResNet18().eval()
    p = tmp_path / "rn18.safetensors"
    wmod.save_safetensors(ref.state_dict(), p)
    ours = zoo.load_checkpoint_classifier(p, "resnet18_cifar", dataset="cifar10")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_torchvision_resnet_loader_maps_imagenette_classes(tmp_path: Path) -> None:
    tv = zoo._torchvision_resnet(18, 1000).eval()
    p = tmp_path / "resnet18_imagenet.safetensors"
    digest = wmod.save_safetensors(tv.state_dict(), p)
    model = zoo.load_torchvision_resnet(p, "resnet18", sha256=digest, dataset="imagenette")
    x = torch.rand(2, 3, 64, 64)
    norm = (x - torch.tensor(zoo.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(zoo.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(x)
        full = tv(norm)
    assert out.shape == (2, 10)
    assert torch.allclose(out, full[:, list(zoo.IMAGENETTE_IMAGENET_INDEX)], atol=1e-4)
    with pytest.raises(BenchError, match="sha256"):
        zoo.load_torchvision_resnet(p, "resnet18", sha256="1" * 64)
    with pytest.raises(BenchError, match="not supported"):
        zoo.load_torchvision_resnet(p, "vgg11")


# ------------------------------------------------------------------ shipped models
def test_register_shipped_and_zoo_defenses(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wdir = tmp_path / "weights"
    monkeypatch.setattr(wmod, "WEIGHTS_DIR", wdir)
    monkeypatch.setattr(wmod, "MANIFEST", wdir / "manifest.json")
    from benchmark.registry import CLASSIFIERS, DEFENSES

    with pytest.raises(BenchError, match="bench train classifier --config configs/train/cifar10_at_pgd.yaml"):
        DEFENSES.create("at_pgd", dataset="cifar10")
    with pytest.raises(BenchError, match="datasets cifar10"):
        DEFENSES.create("at_pgd", dataset="imagenette")
    with pytest.raises(BenchError, match="no options"):
        DEFENSES.create("standard", dataset="cifar10", steps=3)
    out = _train(_config(tmp_path, **{"opt.epochs": 1}), tmp_path / "run", data_root)
    entry = zoo.register_shipped("cifar10_standard", out / "weights.safetensors", out / "recipe.json",
                                 weights_dir=wdir)
    assert entry["sha256"] == wmod.sha256_file(wdir / entry["file"]) and entry["num_classes"] == 4
    assert json.loads((wdir / "manifest.json").read_text())["cifar10_standard"]["arch"] == "airnet"
    d = DEFENSES.create("standard", dataset="cifar10")
    assert not d.stochastic and not d.has_purifier and d.info["weights_sha256"] == entry["sha256"]
    trained = zoo.load_checkpoint_classifier(out / "weights.safetensors", "airnet", dataset="cifar10",
                                             num_classes=4, widths=[8, 16, 16])
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(d(x), trained(x), atol=2e-2)  # fp16 kernels
    assert CLASSIFIERS.create("cifar10_standard")(x).shape == (3, 4)
    # a corrupted shipped file is caught by its sha256
    (wdir / entry["file"]).write_bytes((wdir / entry["file"]).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(BenchError, match="sha256"):
        DEFENSES.create("standard", dataset="cifar10")


def test_cifar100_path_on_the_20_exact_images(tmp_path: Path) -> None:
    """The CIFAR-100 config's architecture, trained by the same code on the only CIFAR-100
    images offline (the 20 exact test images), learns them and has 100 outputs."""
    try:
        from benchmark.data import load_eval_set

        es = load_eval_set("cifar100", source="exact20")
        imgs = (es.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        labels = es.labels.tolist()
        classes = list(es.classes)
    except (ImportError, BenchError):
        import foolbox

        files = sorted((Path(foolbox.__file__).parent / "data").glob("cifar100_*.png"))
        imgs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        labels = [int(f.stem.split("_")[2]) for f in files]
        classes = [f"{i:03d}" for i in range(100)]
    assert len(labels) == 20
    root = tmp_path / "c100"
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, (img, lab) in enumerate(zip(imgs, labels)):
            Image.fromarray(img).save(root / split / classes[lab] / f"{i:04d}.png")
    ship = trainer.read_yaml(Path(__file__).resolve().parent.parent / "configs/train/cifar100_standard.yaml")
    cfg = {"name": "c100_tiny", "dataset": "cifar100", "seed": 0,
           "data": {"dir": str(root), "classes": classes, "subset_per_class": 100},
           "model": {**ship["model"], "kwargs": {**ship["model"]["kwargs"], "widths": [16, 32, 32]},
                     "whiten_init_images": 20},
           "aug": {"flip": False, "translate": 0},
           "opt": {**ship["opt"], "epochs": 15, "batch_size": 20, "lr": 1.0, "time_budget_s": None}}
    path = tmp_path / "c100.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = trainer.main(str(path), device="cpu", out_dir=str(tmp_path / "run"), data_root=None, overrides={})
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["dataset"] == "cifar100" and rec["metrics"]["n_full"] == 20
    assert rec["metrics"]["clean_acc_full"] >= 0.7, rec["epochs"][-3:]  # chance: 0.01
    state = wmod.load_state_dict(out / "weights.safetensors")
    assert state["head.weight"].shape[0] == 100
