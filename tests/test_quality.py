"""Purification quality: PSNR/SSIM against closed forms and skimage, FD/KID through torch-fidelity."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.cli import main
from benchmark.data import load_eval_set
from benchmark.errors import BenchError
from defenses.base import Defense, Stage
from leaderboards.quality import (
    _fidelity_metrics,
    evaluate_quality,
    gaussian_window,
    inception_weights_path,
    penultimate_features,
    psnr,
    register_classifier_features,
    ssim,
    to_uint8,
)

ROOT = Path(__file__).resolve().parent.parent
C1, C2 = 0.01 ** 2, 0.03 ** 2


@pytest.fixture(autouse=True)
def _no_inception(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # never a real Inception file


def rand_images(n=4, size=32, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 3, size, size, generator=g)


# ----------------------------------------------------------------- PSNR / SSIM
def test_identical_images():
    x = rand_images()
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()
    assert torch.allclose(ssim(x, x), torch.ones(4, dtype=torch.float64), atol=1e-12)


def test_psnr_known_noise():
    x = rand_images(lo=0.2, hi=0.8)
    sign = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    y = x + 0.05 * sign  # every pixel off by exactly 0.05: MSE = 0.0025
    assert psnr(y, x) == pytest.approx(torch.full((4,), -20 * math.log10(0.05), dtype=torch.float64), abs=1e-4)
    assert psnr(y, x)[0] == pytest.approx(26.0206, abs=1e-3)
    assert psnr(2 * y, 2 * x, data_range=2.0)[0] == pytest.approx(26.0206, abs=1e-3)


def test_ssim_closed_form_on_constant_images():
    # constant images: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly
    for a, b in [(0.2, 0.7), (0.5, 0.5), (0.9, 0.1)]:
        x = torch.full((1, 3, 16, 16), a)
        y = torch.full((1, 3, 16, 16), b)
        expect = (2 * a * b + C1) / (a * a + b * b + C1)
        assert float(ssim(x, y)) == pytest.approx(expect, rel=1e-6)
    # a mirrored image loses the structure; a slight contrast/brightness change keeps most of it
    x = rand_images(1)
    assert float(ssim(x, x.flip(-1))) < 0.5 < float(ssim(x, (x * 0.95 + 0.02)))


def test_gaussian_window():
    w = gaussian_window()
    assert w.shape == (11, 11) and float(w.sum()) == pytest.approx(1.0)
    assert w.argmax() == 60  # the centre
    assert float(w[5, 6] / w[5, 5]) == pytest.approx(math.exp(-1 / (2 * 1.5 ** 2)))
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 8, 8))


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    x = rand_images(3, seed=2)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    ours = ssim(y, x)
    for i in range(3):
        ref = skm.structural_similarity(y[i].double().numpy(), x[i].double().numpy(), channel_axis=0,
                                        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=1.0)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-9)
        assert float(psnr(y[i:i + 1], x[i:i + 1])) == pytest.approx(
            skm.peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=1.0), abs=1e-4)


# ---------------------------------------------------------------- FD / KID
class MeanFeatures(nn.Module):
    """Penultimate features = per-channel means (3-dim), so FD/KID have a hand-computable reference."""

    def __init__(self):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(3, 10)

    def forward(self, x):
        return self.head(self.pool(x))


def _kernel(a, b):  # torch-fidelity's KID kernel: (a.b / d + 1)^3
    return (a @ b.T / a.shape[1] + 1) ** 3


def test_fd_kid_through_torch_fidelity_match_reference():
    from scipy.linalg import sqrtm

    model = MeanFeatures().eval()
    real, fake = rand_images(40, 16, seed=4), (rand_images(40, 16, seed=5) * 0.8)
    name = register_classifier_features("toy_means", model)
    assert name == "purifybench-toy_means"
    cpu = torch.device("cpu")
    m = _fidelity_metrics(real, fake, extractor=name, device=cpu, seed=0)
    f1 = (to_uint8(real).double() / 255).mean((2, 3)).numpy()
    f2 = (to_uint8(fake).double() / 255).mean((2, 3)).numpy()
    assert np.allclose(penultimate_features(model, to_uint8(real).float() / 255).numpy(), f1, atol=1e-6)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    fd = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert m["fd"] == pytest.approx(fd, rel=1e-5)
    n = len(f1)
    kxx, kyy, kxy = _kernel(f1, f1), _kernel(f2, f2), _kernel(f1, f2)
    off = lambda k: k.sum() - np.trace(k)  # noqa: E731
    # paired sets (fake[i] made from real[i]): the u-statistic leaves the matched pairs out
    assert m["kid"] == pytest.approx((off(kxx) + off(kyy) - 2 * off(kxy)) / (n * (n - 1)), rel=1e-5)
    assert "kid_std" not in m  # one subset = all 40 images: no spread to report
    # unpaired: torch-fidelity's own estimator, and the same number as its calculate_metrics
    u = _fidelity_metrics(real, fake, extractor=name, device=cpu, seed=0, paired=False)
    assert u["kid"] == pytest.approx((off(kxx) + off(kyy)) / (n * (n - 1)) - 2 * kxy.mean(), rel=1e-5)
    from leaderboards.quality import _fidelity, _Images

    ref = _fidelity().calculate_metrics(input1=_Images(real), input2=_Images(fake), fid=True, kid=True,
                                        feature_extractor=name, cuda=False, kid_subset_size=40, cache=False,
                                        save_cpu_ram=True, verbose=False)
    assert u["fd"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-9)
    assert u["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    # identical sets: FD and the paired KID are 0
    same = _fidelity_metrics(real, real, extractor=name, device=cpu, seed=0)
    assert abs(same["fd"]) < 1e-8 and abs(same["kid"]) < 1e-9 and m["fd"] > 1e-4 and m["kid"] > 0
    # subsets (n > subset size) take the same images from both sets and report a spread
    sub = _fidelity_metrics(real, fake, extractor=name, device=cpu, seed=0, kid_subsets=5, kid_subset_size=20)
    assert sub["kid_std"] > 0 and sub["kid"] == pytest.approx(m["kid"], rel=0.5)
    register_classifier_features("toy_means", MeanFeatures().eval())  # registering again swaps the model


# ---------------------------------------------------------- evaluate_quality
class Dim(Stage):
    def forward(self, x, noise):
        return 0.9 * x


def test_evaluate_quality_on_a_known_purifier():
    ev = load_eval_set("cifar10", "first:12")
    d = Defense(MeanFeatures(), purifier=Dim(), name="dim").freeze()
    rep = evaluate_quality(d, evalset=ev, features="cifar10_standard")
    x = ev.images.double()
    expect = [float(-10 * torch.log10(((0.1 * x[i]) ** 2).mean())) for i in range(12)]
    assert rep.psnr == pytest.approx(expect, abs=1e-4)
    assert rep.ssim == pytest.approx([float(v) for v in ssim(0.9 * ev.images, ev.images)])
    assert 0.5 < rep.ssim_mean < 1.0
    assert set(rep.distances) == {"FD-cifar10_standard", "KID-cifar10_standard"}
    assert rep.distances["FD-cifar10_standard"] > 0
    assert not any(k.startswith("FID") for k in rep.distances)
    assert any("Inception" in n and "not available locally" in n for n in rep.notes)
    assert json.loads(json.dumps(rep.to_dict(), allow_nan=False))["n"] == 12


def test_inception_weights_path(tmp_path):
    assert inception_weights_path() is None  # the hub dir is empty in tests
    with pytest.raises(BenchError, match="no such file"):
        inception_weights_path(tmp_path / "missing.pth")


def test_cli_quality(tmp_path, capsys):
    out = tmp_path / "q.json"
    assert main(["quality", "--defense", "standard", "--subset", "first:8", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["psnr_mean_db"] == "inf" and rep["n_identical"] == 8 and rep["ssim_mean"] == pytest.approx(1.0)
    assert abs(rep["distances"]["FD-cifar10_standard"]) < 1e-3 and abs(rep["distances"]["KID-cifar10_standard"]) < 1e-6
    printed = capsys.readouterr().out
    assert "no transform or purifier" in printed and "not an FID" in printed
    for argv, msg in ((["quality", "--defense", "nosuch"], "unknown defense 'nosuch'"),
                      (["quality", "--defense", "standard", "--features", "nosuch"], "unknown classifier 'nosuch'"),
                      (["quality", "--defense", "standard", "--subset", "first:0"], "")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0]


def test_inception_path_when_weights_are_local(tmp_path, monkeypatch):
    """With torch-fidelity's Inception weights on disk, FID/KID are computed and labelled as such
    (random weights here: the numbers mean nothing, the plumbing is what is tested)."""
    from leaderboards.quality import _fidelity

    _fidelity()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        state = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(empty)).state_dict()
    w = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    w.parent.mkdir(parents=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, w)  # half the bytes
    assert inception_weights_path() == w  # found where torch-fidelity keeps a download
    ev = load_eval_set("cifar10", "first:3")
    d = Defense(MeanFeatures(), purifier=Dim(), name="dim").freeze()
    # its 64-d early features instead of the 2048-d pool: the same code path, without a 2048x2048
    # eigen-decomposition and a full 299 px Inception pass on this test's CPU budget
    monkeypatch.setattr(FeatureExtractorInceptionV3, "get_default_feature_layer_for_metric", staticmethod(lambda m: "64"))
    rep = evaluate_quality(d, evalset=ev, features="cifar10_standard")
    assert {"FID", "KID", "FD-cifar10_standard", "KID-cifar10_standard"} <= set(rep.distances)
    assert all(math.isfinite(v) for v in rep.distances.values())
    assert any("not comparable with published FIDs" in n for n in rep.notes)
    assert not any("not available locally" in n for n in rep.notes)
