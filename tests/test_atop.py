"""AToP: random transforms, GAN/AE purifiers, explicit-noise pipeline, fine-tuning and resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from benchmark.errors import BenchError
from defenses.ae import MaskedAEPurifier
from defenses.atop import VARIANTS, make_atop
from defenses.base import Noise
from defenses.gan import InpaintGenerator, PatchDiscriminator, n_params
from defenses.rt import RandomTransform, missing_fraction


class TinyClassifier(nn.Module):
    """A small conv net standing in for the frozen CIFAR-10 classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _x(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ random transforms
@pytest.mark.parametrize("kind", ["rt1", "rt2"])
def test_mask_geometry_and_exact_rate(kind: str) -> None:
    rt = RandomTransform(kind)
    x = _x(16)
    z = rt.sample(x, torch.Generator().manual_seed(1))
    assert z.names == (("mask",) if kind == "rt1" else ("mask", "gaussian"))
    assert z["mask"].shape == (16, 1, 8, 8)
    # exactly r = 0.25 of the patches are missing in every image
    assert torch.equal(missing_fraction(z), torch.full((16, 1), 0.25))
    # pixel mask is constant on p x p patches with p = side / 8 = 4
    m = rt.pixel_masks(z, (32, 32))
    blocks = m.view(16, 1, 8, 4, 8, 4)
    assert torch.equal(blocks.amax(dim=(3, 5)), blocks.amin(dim=(3, 5)))
    assert torch.equal(blocks[:, :, :, 0, :, 0], z["mask"])
    xt, keep = rt.views(x, z)
    expect = m * (x + 0.25 * z["gaussian"]) if kind == "rt2" else m * x
    assert torch.allclose(xt, expect)
    assert torch.equal(keep, m)
    # masks differ between images and between draws
    assert not torch.equal(z["mask"][0], z["mask"][1])
    z2 = rt.sample(x, torch.Generator().manual_seed(2))
    assert not torch.equal(z["mask"], z2["mask"])


def test_rt3_masks_partition_the_image() -> None:
    rt = RandomTransform("rt3")
    x = _x(8)
    z = rt.sample(x, torch.Generator().manual_seed(3))
    m = z["mask"]
    assert m.shape == (8, 4, 8, 8)
    assert torch.equal((1 - m).sum(1), torch.ones(8, 8, 8))  # every patch hidden by exactly one mask
    assert torch.equal(missing_fraction(z), torch.full((8, 4), 0.25))
    xt, keep = rt.views(x, z)
    assert xt.shape == (32, 3, 32, 32) and keep.shape == (32, 1, 32, 32)
    noisy = x + 0.25 * z["gaussian"]  # one noisy image shared by the 4 views (Eq. 4)
    for i in range(4):
        assert torch.allclose(xt[i * 8:(i + 1) * 8], noisy * keep[i * 8:(i + 1) * 8])
    # combine keeps only generated (masked) pixels: with g = identity on a constant per view,
    # the result is the view index of the mask that hid each pixel
    outs = torch.cat([torch.full((8, 3, 32, 32), float(i)) for i in range(4)])
    hat = rt.combine(outs, z)
    hidden_by = (1 - rt.pixel_masks(z, (32, 32))).argmax(1, keepdim=True).float().expand(-1, 3, -1, -1)
    assert torch.equal(hat, hidden_by)


def test_rt_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        RandomTransform("rt4")
    with pytest.raises(ValueError):
        RandomTransform("rt3", rate=0.2, n_masks=4)


# ------------------------------------------------------------------ models and pipeline
def test_model_sizes() -> None:
    assert n_params(InpaintGenerator()) < 1_000_000
    assert n_params(MaskedAEPurifier()) < 1_000_000
    d = PatchDiscriminator()
    assert d(_x(2)).shape[0] == 2


@pytest.mark.parametrize("name", ["atop_gan_rt1", "atop_gan", "atop_gan_rt3", "atop_ae"])
def test_noise_replay_through_pipeline(name: str) -> None:
    kind = VARIANTS[name][0]
    torch.manual_seed(0)
    net = InpaintGenerator() if kind == "gan" else MaskedAEPurifier()
    d = make_atop(name, classifier_module=TinyClassifier(), purifier_module=net)
    assert d.stochastic
    x = _x(4)
    z = d.sample_noise(x, torch.Generator().manual_seed(5))
    a, b = d(x, z), d(x, z)
    assert torch.equal(a, b)  # same noise -> identical logits
    c = d(x, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(a, c)  # fresh noise -> different logits
    # noise round-trips through save/load and per-sample selection
    assert torch.allclose(d(x[1:3], z.select(slice(1, 3))), a[1:3], atol=1e-5)
    # the purified images depend on every noise part
    for part in z.names:
        other = d.sample_noise(x, torch.Generator().manual_seed(7))
        mixed = z.fix(other, [part])
        assert not torch.allclose(d.purify(x, mixed), d.purify(x, z))
    # gradients reach the input (attacks differentiate through t and g)
    xx = x.clone().requires_grad_(True)
    d(xx, z).sum().backward()
    assert xx.grad is not None and xx.grad.abs().sum() > 0


def test_shipped_purifiers_load_and_replay() -> None:
    """Every AToP purifier in the manifest loads (sha256-checked, arch from the manifest) into its
    registered defenses and replays its noise exactly through the real classifier."""
    from benchmark.registry import load_builtins
    from defenses.weights import manifest

    load_builtins()
    shipped = manifest()
    names = [n for n, v in VARIANTS.items() if v[2] in shipped]
    assert names, "no AToP purifier weights in the manifest (they ship with the repository)"
    x = _x(2)
    for name in names:
        d = make_atop(name)
        assert d.info["weights_sha256"] == shipped[VARIANTS[name][2]]["sha256"]
        z = d.sample_noise(x, torch.Generator().manual_seed(0))
        out = d(x, z)
        assert out.shape == (2, 10) and torch.isfinite(out).all() and torch.equal(out, d(x, z))


def test_noise_save_load_replay(tmp_path: Path) -> None:
    d = make_atop("atop_gan_rt3", classifier_module=TinyClassifier(), purifier_module=InpaintGenerator())
    x = _x(3)
    z = d.sample_noise(x, torch.Generator().manual_seed(8))
    z.save(tmp_path / "z.safetensors")
    z2 = Noise.load(tmp_path / "z.safetensors")
    # (Noise.load returns the parts in safetensors' sorted order, so compare by name)
    assert set(z2.names) == set(z.names) and all(torch.equal(z2[k], z[k]) for k in z.names)
    assert torch.equal(d(x, z2), d(x, z))


def test_missing_weights_name_training_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import defenses.weights as w

    monkeypatch.setattr(w, "manifest", lambda: {})
    with pytest.raises(BenchError, match="bench train atop --config configs/train/atop_gan_rt2.yaml"):
        make_atop("atop_gan", classifier_module=TinyClassifier())
    with pytest.raises(BenchError, match="cifar10"):
        make_atop("atop_gan", dataset="imagenette", classifier_module=TinyClassifier(),
                  purifier_module=InpaintGenerator())


# ------------------------------------------------------------------ training
def _cfg(**kw):  # type: ignore[no-untyped-def]
    from benchmark.train.atop import load_atop_config

    return load_atop_config(None, kw)


@pytest.mark.parametrize("purifier", ["gan", "ae"])
def test_finetune_step_lowers_loss_on_fixed_batch(purifier: str) -> None:
    from benchmark.train.atop import Trainer

    cfg = _cfg(purifier=purifier, stage="finetune", rt="rt2", lr=2e-3, d_lr=1e-4, betas=[0.9, 0.999],
               weight_decay=0.0, cnum=8, fine_cnum=8, d_cnum=8, ae_dim=64, ae_dec_dim=64)
    clf = TinyClassifier().eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    tr = Trainer(cfg, torch.device("cpu"), clf)
    x, y = _x(6, seed=1), torch.arange(6)
    # the same generator seed every step: same x' (FGSM on the frozen classifier) and same
    # transform noise, so the reported loss (before each update) tracks one fixed objective
    losses = [float(tr.step(x, y, torch.Generator().manual_seed(0))["loss"]) for _ in range(4)]
    assert losses[-1] < losses[0] - 1e-3, losses
    clf_params = [p.clone() for p in clf.parameters()]
    tr.step(x, y, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(clf_params, clf.parameters()))  # classifier frozen


def test_fgsm_examples_within_eps() -> None:
    from benchmark.train.atop import attack_batch

    cfg = _cfg(attack="fgsm")
    x, y = _x(4), torch.arange(4)
    xa = attack_batch(cfg, TinyClassifier(), x, y)
    assert (xa - x).abs().max() <= 8 / 255 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert (xa - x).abs().max() > 7 / 255


def _fake_cifar(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for c in range(10):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


def _classifier_run(root: Path) -> Path:
    from defenses.classifiers import build_arch
    from defenses.weights import save_safetensors

    run = root / "clf"
    m = build_arch("airnet", dataset="cifar10", seed=0, widths=[8, 16, 16])
    save_safetensors(m.state_dict(), run / "weights.safetensors")
    (run / "recipe.json").write_text(json.dumps(
        {"config": {"dataset": "cifar10", "model": {"arch": "airnet", "kwargs": {"widths": [8, 16, 16]}}}}))
    return run


def test_train_pretrain_then_finetune_with_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    import benchmark.train.atop as A
    from defenses.weights import load_state_dict

    data = _fake_cifar(tmp_path / "data", per_class=2)
    # a narrow generator and critic keep this test fast; the code path is the shipped one
    common = dict(batch_size=10, epochs=2, eval_images=10, log_every=1, augment=True, cnum=8, fine_cnum=4, d_cnum=8)
    pre_cfg = tmp_path / "pre.yaml"
    pre_cfg.write_text(yaml.safe_dump(dict(purifier="gan", stage="pretrain", pretrain_rts=["rt1", "rt2"], **common)))
    pre = A.main(str(pre_cfg), device="cpu", out_dir=str(tmp_path / "pre"), data_root=str(data))
    rec = json.loads((pre / "recipe.json").read_text())
    assert rec["finished"] and rec["steps"] == 4 and len(rec["epochs_log"]) == 2
    assert rec["first_epoch_loss"] is not None and rec["data_sha256"] and rec["git_commit"]
    assert (pre / "weights.safetensors").is_file() and (pre / "discriminator.safetensors").is_file()
    ck = torch.load(pre / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4

    run = _classifier_run(tmp_path)
    ft_cfg = tmp_path / "ft.yaml"
    ft_cfg.write_text(yaml.safe_dump(dict(purifier="gan", stage="finetune", rt="rt2", init=str(pre),
                                          classifier_run=str(run), **common)))
    # uninterrupted reference run
    ref = A.main(str(ft_cfg), device="cpu", out_dir=str(tmp_path / "ref"), data_root=str(data))
    # interrupted after the first epoch (2 steps), then resumed by the same command
    calls = {"n": 0}
    orig = A.Trainer.step

    def flaky(self, *a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    monkeypatch.setattr(A.Trainer, "step", flaky)
    with pytest.raises(KeyboardInterrupt):
        A.main(str(ft_cfg), device="cpu", out_dir=str(tmp_path / "ft"), data_root=str(data))
    assert torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "ft" / "recipe.json").exists()
    monkeypatch.setattr(A.Trainer, "step", orig)
    out = A.main(str(ft_cfg), device="cpu", out_dir=str(tmp_path / "ft"), data_root=str(data))
    a = load_state_dict(ref / "weights.safetensors")
    b = load_state_dict(out / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r = json.loads((out / "recipe.json").read_text())
    assert r["classifier"]["arch"] == "airnet" and r["steps"] == 4 and r["config"]["rt"] == "rt2"
    assert [e["epoch"] for e in r["epochs_log"]] == [1, 2]
    assert {"acc_clean", "acc_fgsm_transfer", "recon_l1"} <= set(r["metrics"])
    # a finished run is not redone
    monkeypatch.setattr(A.Trainer, "step", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    A.main(str(ft_cfg), device="cpu", out_dir=str(tmp_path / "ft"), data_root=str(data))

    # shipping: the manifest records the narrow architecture, the registry path rebuilds it
    import importlib.util

    import defenses.weights as W

    spec = importlib.util.spec_from_file_location("ship_weights", Path(__file__).parents[1] / "scripts" / "ship_weights.py")
    ship = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(ship)
    wdir = tmp_path / "weights"
    assert ship.main([str(out), "atop_gan_rt2", "--weights-dir", str(wdir)]) == 0
    entry = json.loads((wdir / "manifest.json").read_text())["atop_gan_rt2"]
    assert entry["arch"] == "atop_gan" and entry["arch_kwargs"] == {"cnum": 8, "fine_cnum": 4}
    monkeypatch.setattr(W, "WEIGHTS_DIR", wdir)
    monkeypatch.setattr(W, "MANIFEST", wdir / "manifest.json")
    d = make_atop("atop_gan", classifier_module=TinyClassifier())
    assert d.info["weights_sha256"] == entry["sha256"] and d.info["purifier_params"] == sum(v.numel() for v in b.values())
    x = torch.rand(2, 3, 32, 32)
    assert d(x, generator=torch.Generator().manual_seed(0)).shape == (2, 10)


def test_config_errors(tmp_path: Path) -> None:
    import benchmark.train.atop as A

    with pytest.raises(BenchError, match="allowed keys"):
        A.load_atop_config(None, {"lamda": 0.1})
    with pytest.raises(BenchError, match="rt must be one of"):
        A.load_atop_config(None, {"rt": "rt9"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("purifier: gan\nstage: finetune\nclassifier_run: /nonexistent\ninit: x.safetensors\n")
    with pytest.raises(BenchError, match="classifier run"):
        A.main(str(cfg), device="cpu", out_dir=str(tmp_path / "o"), data_root=str(tmp_path))


def test_shipped_configs_parse() -> None:
    import benchmark.train.atop as A

    root = Path(__file__).resolve().parents[1]
    for _, path, _, _ in A.JOB_VARIANTS:
        cfg = A.load_atop_config(root / path)
        assert cfg.sigma == 0.25 and cfg.rate == 0.25
        if cfg.stage == "finetune":
            assert cfg.lam == 0.1 and abs(cfg.eps - 8 / 255) < 1e-9 and cfg.attack == "fgsm"
