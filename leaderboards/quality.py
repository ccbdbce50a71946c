"""Purification quality: how far a defense's purified images are from the clean ones.

- PSNR and SSIM per image (SSIM as Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
  K1 = 0.01, K2 = 0.03, data range 1, means over the valid window positions and the channels;
  it matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``).
- Distribution distances through torch-fidelity. The standard FID/KID use its Inception-v3
  weights, which are used only when present locally (torch-fidelity would download them; this
  benchmark runs offline). Always available: the same Frechet distance and KID computed on the
  penultimate features of one of our registered classifiers, reported as ``FD-<classifier>`` and
  ``KID-<classifier>``, never as FID (the numbers are not comparable with published FIDs).

Images go to torch-fidelity as 8-bit (as when saved to PNG), the convention of FID. Purified
images are paired with their clean originals, so KID uses torch-fidelity's u-statistic MMD
estimator (matched pairs left out of the cross term); see :func:`_fidelity_metrics`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from benchmark.errors import BenchError
from benchmark.seeds import generator
from benchmark.build import make_defense, resolve_device
from benchmark.data import load_eval_set
from benchmark.registry import CLASSIFIERS, load_builtins

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's converted TF Inception


# ------------------------------------------------------------------ PSNR / SSIM
def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two image batches (N, C, H, W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB (float64, shape (N,)); +inf for identical images."""
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)  # mse 0 -> inf


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 2-D Gaussian window (float64, size x size)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: Tensor, y: Tensor, *, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Per-image SSIM (float64, shape (N,)): the SSIM map over valid window positions, averaged
    over positions and channels (identical images give exactly 1)."""
    _check_pair(x, y)
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {win_size}x{win_size} SSIM window")
    c = x.shape[1]
    w = gaussian_window(win_size, sigma).to(x.device).expand(c, 1, win_size, win_size)
    x, y = x.double(), y.double()

    def filt(t: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(t, w, groups=c)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.flatten(1).mean(1)


# ------------------------------------------------------------ torch-fidelity
_FEATURE_MODELS: dict[str, nn.Module] = {}
_REGISTERED: dict[str, type] = {}


def _fidelity():
    import benchmark.compat  # noqa: F401  (torchvision on a CPU-only torch, before torch-fidelity imports it)
    import torch_fidelity

    return torch_fidelity


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier's final linear layer (its input is the penultimate feature vector)."""
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not lin:
        raise BenchError(f"{type(model).__name__} has no nn.Linear layer to take penultimate features from")
    return lin[-1]


def penultimate_features(model: nn.Module, x: Tensor) -> Tensor:
    """The input of ``model``'s last linear layer for images ``x`` (float [0,1] NCHW)."""
    lin = last_linear(model)
    got: list[Tensor] = []
    handle = lin.register_forward_hook(lambda mod, inp, out: got.append(inp[0].flatten(1)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if not got:
        raise BenchError(f"{type(model).__name__}: the last linear layer was not called in forward")
    return got[-1]


def register_classifier_features(classifier: str, model: nn.Module) -> str:
    """Register ``model``'s penultimate features as a torch-fidelity feature extractor named
    ``purifybench-<classifier>`` (one feature, ``penultimate``, used for FID and KID) and return
    the name. Registering again replaces the model behind the name."""
    tf = _fidelity()
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    name = f"purifybench-{classifier}"
    _FEATURE_MODELS[name] = model
    if name in _REGISTERED:
        return name

    class ClassifierFeatures(FeatureExtractorBase):
        """Penultimate features of one of our classifiers; takes uint8 (N, 3, H, W) images."""

        def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
            super().__init__(name, features_list)
            self.model = _FEATURE_MODELS[name]

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("penultimate",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "penultimate"

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> Tensor:
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, x: Tensor) -> tuple[Tensor]:
            if x.dtype != torch.uint8:
                raise ValueError(f"expected uint8 images, got {x.dtype}")
            return (penultimate_features(self.model, x.float() / 255.0).double(),)

    if name not in tf.registry.FEATURE_EXTRACTORS_REGISTRY:
        tf.register_feature_extractor(name, ClassifierFeatures)
    else:  # registered by an earlier import of this module (e.g. a reloaded plugin): replace it
        tf.registry.FEATURE_EXTRACTORS_REGISTRY[name] = ClassifierFeatures
    _REGISTERED[name] = ClassifierFeatures
    return name


def to_uint8(x: Tensor) -> Tensor:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


class _Images(torch.utils.data.Dataset):
    """uint8 (3, H, W) images for torch-fidelity."""

    def __init__(self, images: Tensor) -> None:
        self.images = to_uint8(images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def fidelity_extractor(extractor: str, *, device: torch.device, weights_path: str | None = None) -> tuple[Any, str]:
    """A registered torch-fidelity feature extractor, built once, and the layer it uses for FID
    (Inception: the 2048-d pool; ours: ``penultimate``)."""
    tf = _fidelity()
    from torch_fidelity.utils import create_feature_extractor

    layer = tf.registry.FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric("fid")
    kw: dict[str, Any] = {"verbose": False}
    if weights_path is not None:
        kw["feature_extractor_weights_path"] = weights_path
    return create_feature_extractor(extractor, [layer], cuda=device.type == "cuda", **kw), layer


def fidelity_features(images: Tensor, fe: Any, layer: str, *, device: torch.device, batch_size: int = 64) -> Tensor:
    """Features of ``images`` (float [0,1], sent as uint8, as torch-fidelity expects) at ``layer``."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    cuda = device.type == "cuda"
    feats = get_featuresdict_from_dataset(_Images(images), fe, batch_size, cuda, True, False)  # save_cpu_ram: no workers
    return feats[layer].cpu()


def _fidelity_metrics(real: Tensor, fake: Tensor, *, extractor: str, device: torch.device, seed: int,
                      weights_path: str | None = None, kid_subsets: int = 100, kid_subset_size: int = 1000,
                      paired: bool = True) -> dict[str, float]:
    """FD and KID between two image sets with torch-fidelity's feature extraction, Frechet distance,
    polynomial kernel and MMD estimators.

    ``paired``: ``fake[i]`` is made from ``real[i]`` (purified vs clean). KID then uses the
    u-statistic, which leaves the matched pairs out of the cross term, on subsets that take the
    same images from both sets; torch-fidelity's default estimator assumes independent sets and
    is biased low on paired ones (identical sets of 64 CIFAR images: -1.9 instead of 0).
    Unpaired, this is exactly torch-fidelity's ``calculate_metrics`` (independent subsets)."""
    _fidelity()
    import numpy as np
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kernel_poly, mmd2

    n1, n2 = len(real), len(fake)
    if min(n1, n2) < 2:
        raise BenchError(f"FD/KID need at least 2 images per set, got {n1} and {n2}")
    if paired and n1 != n2:
        raise ValueError(f"paired sets must have the same size, got {n1} and {n2}")
    fe, layer = fidelity_extractor(extractor, device=device, weights_path=weights_path)
    f1 = fidelity_features(real, fe, layer, device=device)
    f2 = fidelity_features(fake, fe, layer, device=device)
    fd = fid_statistics_to_metric(fid_features_to_statistics(f1), fid_features_to_statistics(f2), False)
    size = min(kid_subset_size, n1, n2)
    whole = size == n1 == n2
    rng = np.random.RandomState(seed)
    a1, a2 = f1.numpy(), f2.numpy()
    mmds = []
    for _ in range(1 if whole else kid_subsets):
        i1 = np.arange(n1) if whole else rng.choice(n1, size, replace=False)
        i2 = i1 if paired else (np.arange(n2) if whole else rng.choice(n2, size, replace=False))
        x, y = a1[i1], a2[i2]
        mmds.append(mmd2(kernel_poly(x, x), kernel_poly(x, y), kernel_poly(y, y),
                         mmd_est="u-statistic" if paired else "unbiased"))
    out = {"fd": float(fd["frechet_inception_distance"]), "kid": float(np.mean(mmds))}
    if not whole:  # with one subset holding every image there is no spread to report
        out["kid_std"] = float(np.std(mmds))
    return out


def inception_weights_path(path: str | Path | None = None) -> Path | None:
    """torch-fidelity's Inception weights if present locally: ``path`` or the torch hub cache
    where torch-fidelity keeps them after a download. None when absent."""
    if path is not None:
        from benchmark.safe_io import is_file

        p = Path(path)
        if not is_file(p):
            raise BenchError(f"--inception-weights {p}: no such file")
        return p
    p = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return p if p.is_file() else None


# ------------------------------------------------------------------- report
@dataclass
class QualityReport:
    defense: str
    dataset: str
    subset: str
    n: int
    seed: int
    noise: str
    psnr: list[float]
    ssim: list[float]
    distances: dict[str, float] = field(default_factory=dict)  # label -> value, e.g. "FD-cifar10_standard"
    notes: list[str] = field(default_factory=list)

    @property
    def psnr_mean(self) -> float:
        """Mean PSNR over the images that differ from their clean image (inf if none differ)."""
        finite = [v for v in self.psnr if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else math.inf

    @property
    def n_identical(self) -> int:
        return sum(1 for v in self.psnr if not math.isfinite(v))

    @property
    def ssim_mean(self) -> float:
        return sum(self.ssim) / len(self.ssim)

    def to_dict(self) -> dict[str, Any]:
        fin = lambda v: v if math.isfinite(v) else ("inf" if v > 0 else "-inf")  # noqa: E731  JSON has no inf
        return {"defense": self.defense, "dataset": self.dataset, "subset": self.subset, "n": self.n,
                "seed": self.seed, "noise": self.noise, "psnr_mean_db": fin(self.psnr_mean),
                "n_identical": self.n_identical, "ssim_mean": self.ssim_mean, "distances": self.distances,
                "notes": self.notes, "psnr_db": [fin(v) for v in self.psnr], "ssim": self.ssim}


def purified(defense: Any, images: Tensor, *, seed: int, batch_size: int = 64,
             device: torch.device | str = "cpu") -> Tensor:
    """``defense.purify`` of every image with one noise draw per batch (derived from ``seed``), on CPU."""
    out = []
    dev = torch.device(device)
    with torch.no_grad():
        for b, lo in enumerate(range(0, images.shape[0], batch_size)):
            x = images[lo:lo + batch_size].to(dev)
            noise = defense.sample_noise(x, generator(seed, "quality", b, device=dev))
            out.append(defense.purify(x, noise).detach().float().cpu())
    return torch.cat(out)


def evaluate_quality(
    defense: str | Any,
    *,
    dataset: str = "cifar10",
    subset: str = "first:64",
    features: str | None = None,
    inception_weights: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    data_root: str | None = None,
    evalset: Any = None,
    kid_subsets: int = 100,
    on_note: Callable[[str], None] | None = None,
) -> QualityReport:
    """PSNR/SSIM of purified vs clean images of ``subset``, and FD/KID between the two sets on the
    penultimate features of classifier ``features`` (default ``<dataset>_standard``) and, if its
    weights are here, the standard Inception FID/KID."""
    dev = resolve_device(device)
    if batch_size < 1:
        raise BenchError(f"batch size must be a positive integer, got {batch_size}")
    if inception_weights is not None:  # a missing, empty or pickled file fails before any work
        from defenses.weights import load_state_dict

        load_state_dict(inception_weights_path(inception_weights))
    if evalset is None:
        evalset = load_eval_set(dataset, subset, root=data_root)
    name = defense if isinstance(defense, str) else getattr(defense, "name", "defense")
    d = make_defense(defense, dataset=dataset, device=dev) if isinstance(defense, str) else defense
    x = evalset.images
    xp = purified(d, x, seed=seed, batch_size=batch_size, device=dev)
    rep = QualityReport(name, evalset.dataset, evalset.subset, len(evalset), seed, d.describe_noise(),
                        [float(v) for v in psnr(xp, x)], [float(v) for v in ssim(xp, x)])
    if not d.has_purifier:
        rep.notes.append("the defense has no transform or purifier: purified images are the clean images")
    elif d.stochastic:
        rep.notes.append("one noise draw per image (seeded)")

    load_builtins()
    feat = features or f"{evalset.dataset}_standard"
    if feat not in CLASSIFIERS:
        if features is not None:
            CLASSIFIERS.get(feat)  # BenchError naming the known classifiers
        rep.notes.append(f"FD/KID on classifier features skipped: no classifier {feat!r} (pick one with --features)")
    else:
        try:
            model = CLASSIFIERS.create(feat, device=dev)
        except BenchError as e:
            if features is not None:
                raise
            model = None
            rep.notes.append(f"FD/KID on classifier features skipped: {e}")
        if model is not None:
            ext = register_classifier_features(feat, model)
            m = _fidelity_metrics(x, xp, extractor=ext, device=dev, seed=seed, kid_subsets=kid_subsets)
            rep.distances[f"FD-{feat}"] = m["fd"]
            rep.distances[f"KID-{feat}"] = m["kid"]
            if "kid_std" in m:
                rep.distances[f"KID-{feat} std"] = m["kid_std"]
            dim = int(penultimate_features(model, x[:1].to(dev)).shape[1])
            if len(evalset) <= dim:
                rep.notes.append(f"FD on {len(evalset)} images of {dim}-dim features: covariances are singular "
                                 "and FD is biased upward; compare FD values only at equal n")
            if len(evalset) <= 1000:
                rep.notes.append(f"KID: one estimate on all {len(evalset)} image pairs (no subset spread)")

    w = inception_weights_path(inception_weights)
    if w is None:
        where = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        rep.notes.append(f"FID/KID (Inception) not computed: torch-fidelity's Inception-v3 weights are not available "
                         f"locally (looked for {where}); online, torch-fidelity downloads them on first use, or pass "
                         "--inception-weights PATH")
    else:
        from defenses.weights import load_state_dict

        load_state_dict(w)  # weights_only=True: refuse a file that is more than tensors before torch-fidelity reads it
        try:
            m = _fidelity_metrics(x, xp, extractor="inception-v3-compat", device=dev, seed=seed, weights_path=str(w),
                                  kid_subsets=kid_subsets)
        except (RuntimeError, KeyError, ValueError) as e:  # tensors, but not torch-fidelity's Inception
            raise BenchError(f"--inception-weights {w} do not fit torch-fidelity's Inception-v3 "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
        rep.distances["FID"] = m["fd"]
        rep.distances["KID"] = m["kid"]
        if "kid_std" in m:
            rep.distances["KID std"] = m["kid_std"]
        if len(evalset) < 2048:
            rep.notes.append(f"FID on {len(evalset)} images (< 2048, the Inception feature size) is biased upward; "
                             "not comparable with published FIDs on 10k-50k images")
    if on_note:
        for n in rep.notes:
            on_note(n)
    return rep


def quality_table(rep: QualityReport) -> Any:
    """A rich table of the report."""
    from rich.table import Table

    t = Table(title=f"purification quality: {rep.defense} on {rep.dataset} {rep.subset} (n={rep.n})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("meaning")
    ps = rep.psnr_mean
    t.add_row("PSNR (dB)", "inf" if math.isinf(ps) else f"{ps:.2f}",
              "mean over images of purified vs clean" + (f"; {rep.n_identical} identical (inf) left out"
                                                         if rep.n_identical and math.isfinite(ps) else ""))
    t.add_row("SSIM", f"{rep.ssim_mean:.4f}", "mean over images; 11x11 Gaussian window, sigma 1.5")
    for k, v in rep.distances.items():
        what = ("Inception (standard)" if not k.startswith(("FD-", "KID-")) else
                f"penultimate features of {k.split('-', 1)[1].removesuffix(' std')}, not Inception: not an FID")
        t.add_row(k, f"{v:.5g}", what)
    return t


__all__ = ["psnr", "ssim", "gaussian_window", "evaluate_quality", "QualityReport", "quality_table",
           "register_classifier_features", "penultimate_features", "inception_weights_path", "purified"]
