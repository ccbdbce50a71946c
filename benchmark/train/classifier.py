"""`bench train classifier`: train a zoo classifier from a YAML config.

One code path for a laptop CPU and a GPU (``--device cuda``): the whole image folder is
decoded once into a uint8 tensor on the device, batches are augmented there (flip,
translation, random-resized crop), and, for adversarial training, attacked there by a
self-contained PGD / FGSM-RS. Progress shows an ETA; a checkpoint is written atomically
after every epoch, and the same command resumes an interrupted run. The output folder gets
``weights.safetensors``, ``recipe.json`` (config, seed, data sha256, git commit, library
versions, hardware, wall time, per-epoch log with the first-epoch loss, final metrics) and
``train.log``.

Determinism: every epoch draws its shuffling, augmentation and attack noise from
generators seeded by (seed, epoch), so a resumed run continues exactly where an
uninterrupted one would be (bit for bit on CPU; on CUDA, cuDNN autotuning is on for speed).

Imports only torch/numpy/PIL/yaml/rich/safetensors (it runs on a bare GPU box).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.build import resolve_device
from benchmark.config import config_hash, from_dict, read_yaml, to_dict
from benchmark.errors import BenchError
from benchmark.provenance import git_state, hardware, library_versions
from benchmark.results import atomic_torch_save, atomic_write_text
from benchmark.seeds import derive_seed, generator
from benchmark.data.folder import decode, list_folder
from defenses.classifiers import build_arch
from defenses.weights import save_safetensors

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_OPTIONS = ("max_epochs", "checkpoint_dir")  # overrides that steer this run but are not part of the recipe


# --------------------------------------------------------------------------- config
@dataclass
class ModelCfg:
    arch: str = "airnet"
    kwargs: dict = field(default_factory=dict)  # passed to the architecture (defenses.classifiers.ARCHS)
    num_classes: int | None = None  # default: the dataset's
    whiten_init: bool = False  # airbench's data-dependent whitening init of the first conv (weights then frozen)
    whiten_init_images: int = 5000
    whiten_bias_epochs: int = 3  # the whitening conv's bias trains this many epochs, then freezes


@dataclass
class DataCfg:
    dir: str = ""  # image folder <dir>/<split>/<class>/*.jpg, relative to --data-root
    source: str = "folder"  # folder | torchvision (downloads CIFAR10/CIFAR100; online machines only)
    train_split: str = "train"
    test_split: str = "test"
    size: int | None = None  # resize train/test images at decode time (None: native)
    classes: list[str] | None = None  # class folder names in label order (default: sorted)
    max_per_class: int | None = None  # use only the first N training images per class (smoke runs)
    subset_dir: str | None = None  # folder of the embedded-equivalent eval subset (default: dir)
    subset_split: str | None = None  # its split (default: test_split)
    subset_per_class: int = 100  # the subset is the first N images per class (in file order)
    subset_size: int | None = None  # decode size of the subset (None: native; the model resizes)
    subset_first: int | None = None  # instead: the first N test images in the source's order (canonical sources)
    full_eval: bool = True  # also report accuracy on the whole test split
    archive: str | None = None  # archive the folder came from (looked for in --data-root)
    archive_sha256: str | None = None  # its published sha256 (recorded; checked if the archive is found)

    def validate(self) -> None:
        if not self.dir:
            raise ValueError("data.dir is required")
        if self.source not in ("folder", "torchvision"):
            raise ValueError(f"data.source must be folder or torchvision, got {self.source!r}")


@dataclass
class AugCfg:
    flip: bool = True
    translate: int = 2  # random translation by up to this many pixels (reflect padding)
    crop_scale: list[float] | None = None  # random-resized-crop area range, e.g. [0.35, 1.0]
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])


@dataclass
class OptCfg:
    epochs: int = 10
    batch_size: int = 512
    lr: float = 0.1  # peak learning rate (mean loss over the batch)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    norm_lr_scale: float = 1.0  # lr multiplier of BatchNorm parameters (airbench: 64); their decay is divided by it
    label_smoothing: float = 0.0
    warmup_frac: float = 0.0  # fraction of all steps with a linear warm-up ...
    warmup_start: float = 0.2  # ... from this fraction of the peak lr
    final_lr_frac: float = 0.0  # linear decay to this fraction of the peak at the last step
    time_budget_s: float | None = None  # after epochs 1 and 2, cut the epoch count to fit (recorded)
    eval_batch_size: int = 500

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("opt.epochs and opt.batch_size must be >= 1")


@dataclass
class AdvCfg:
    method: str = "none"  # none | pgd (PGD-AT, Madry et al.) | fgsm_rs (Wong et al. 2020)
    eps_255: float = 8.0  # Linf radius in pixel units
    step_255: float = 2.0  # attack step (fgsm_rs: Wong's alpha = 1.25 eps)
    steps: int = 10
    random_start: bool = True
    holdout: int = 0  # training images held out for a per-epoch PGD check
    check_steps: int = 10
    early_stop_drop: float | None = None  # stop and keep the best epoch if holdout PGD acc falls this far below its best
    eval_steps: int = 20  # final PGD-k evaluation (step step_255, random start)
    eval_full: bool = True  # PGD evaluation on the whole test split too

    def validate(self) -> None:
        if self.method not in ("none", "pgd", "fgsm_rs"):
            raise ValueError(f"adv.method must be none, pgd or fgsm_rs, got {self.method!r}")


@dataclass
class TrainConfig:
    name: str
    dataset: str
    data: DataCfg
    model: ModelCfg = field(default_factory=ModelCfg)
    aug: AugCfg = field(default_factory=AugCfg)
    opt: OptCfg = field(default_factory=OptCfg)
    adv: AdvCfg = field(default_factory=AdvCfg)
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    # bf16 autocast and channels_last on CPU too: 2.5x faster per step on a CPU with avx512_bf16
    # (AMD EPYC, 2 cores: 0.49 s vs 1.23 s for a 256-image airnet step); slow where bf16 is emulated
    amp_cpu: bool = False
    channels_last: bool = True  # on CUDA, and on CPU with amp_cpu
    keep_checkpoint: bool = False  # keep checkpoint.pt after a finished run
    out_dir: str | None = None  # default runs/train/<name>


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        if not isinstance(cur.get(p), dict):
            cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The config with dotted-key overrides applied, and the run options: ``max_epochs`` (stop
    once this many epochs are done, as if interrupted; the same command without it resumes) and
    ``checkpoint_dir`` (where checkpoint.pt goes; default: the output folder)."""
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: expected a mapping")
    run_opts: dict[str, Any] = {}
    for k, v in (overrides or {}).items():
        if k in RUN_OPTIONS:
            run_opts[k] = v
        else:
            _set_dotted(raw, k, v)
    return from_dict(TrainConfig, raw, where=str(path)), run_opts


# ----------------------------------------------------------------------------- data
@dataclass
class Split:
    images: Tensor  # uint8 (N, 3, H, W)
    labels: Tensor  # int64 (N,)
    classes: list[str]
    files: list[str] = field(default_factory=list)


def _resolve_dir(d: str, data_root: str | None) -> Path:
    p = Path(d).expanduser()
    if p.is_absolute():
        return p
    root = data_root or os.environ.get("PURIFYBENCH_DATA") or "data"
    return Path(root) / p


def _load_folder(root: Path, split: str, *, classes: Sequence[str] | None, size: int | None,
                 per_class: int | None = None) -> Split:
    """Decode (part of) a split with a thread pool (PIL releases the GIL while decoding)."""
    import numpy as np


    classes, items = list_folder(root, split, classes)
    if per_class is not None:
        seen: dict[int, int] = {}
        kept = []
        for rel, lab in items:
            if seen.get(lab, 0) < per_class:
                kept.append((rel, lab))
                seen[lab] = seen.get(lab, 0) + 1
        items = kept
    base = root / split
    workers = max(1, min(16, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as ex:
        arrs = list(ex.map(lambda it: decode(base / it[0], size), items, chunksize=256))
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise BenchError(f"images under {base} have different sizes {sorted(shapes)[:3]}; set data.size")
    images = torch.from_numpy(np.ascontiguousarray(np.stack(arrs).transpose(0, 3, 1, 2)))
    labels = torch.tensor([lab for _, lab in items], dtype=torch.long)
    return Split(images, labels, list(classes), [rel for rel, _ in items])


def _load_torchvision(dataset: str, root: Path, train: bool) -> Split:
    import benchmark.compat  # noqa: F401
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}.get(dataset)
    if cls is None:
        raise BenchError(f"data.source torchvision supports cifar10 and cifar100, not {dataset!r}")
    try:
        ds = cls(root=str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types
        raise BenchError(f"cannot download {dataset} with torchvision into {root} ({type(e).__name__}: {e})") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return Split(images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes))


def _first_per_class(split: Split, n: int) -> Split:
    keep: list[int] = []
    count: dict[int, int] = {}
    for i, lab in enumerate(split.labels.tolist()):
        if count.get(lab, 0) < n:
            keep.append(i)
            count[lab] = count.get(lab, 0) + 1
    idx = torch.tensor(keep, dtype=torch.long)
    return Split(split.images[idx], split.labels[idx], split.classes,
                 [split.files[i] for i in keep] if split.files else [])


def _tree_sha256(root: Path, splits: Sequence[str]) -> str:
    """sha256 over (relative path, file sha256) of every file of the splits: a fingerprint of
    the training data that does not need the original archive."""
    h = hashlib.sha256()
    for split in splits:
        base = root / split
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(root)).encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _archive_info(cfg: DataCfg, data_root: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {"archive": cfg.archive, "archive_sha256_published": cfg.archive_sha256}
    if cfg.archive is None:
        return info
    candidates = [_resolve_dir(cfg.archive, data_root), REPO_ROOT / ".carry" / cfg.archive,
                  REPO_ROOT.parent / "shared" / "data" / cfg.archive]
    for c in candidates:
        if c.is_file():
            from defenses.weights import sha256_file

            got = sha256_file(c)
            info.update(archive_sha256=got, archive_verified=(cfg.archive_sha256 in (None, got)))
            if cfg.archive_sha256 is not None and got != cfg.archive_sha256:
                raise BenchError(f"data archive {c} has sha256 {got[:16]}..., the config expects "
                                 f"{cfg.archive_sha256[:16]}... (different data)")
            return info
    info.update(archive_sha256=cfg.archive_sha256, archive_verified=False)
    return info


# ---------------------------------------------------------------------- augment
def augment(x: Tensor, cfg: AugCfg, gen: torch.Generator) -> Tensor:
    """Random flip / translation / resized crop of a float batch, on its device."""
    n, _, h, w = x.shape
    dev = x.device
    flip = torch.rand(n, generator=gen, device=dev) < 0.5 if cfg.flip else None
    if cfg.crop_scale is not None:
        lo, hi = cfg.crop_scale
        area = lo + (hi - lo) * torch.rand(n, generator=gen, device=dev)
        logr = math.log(cfg.crop_ratio[0]) + (math.log(cfg.crop_ratio[1]) - math.log(cfg.crop_ratio[0])) * torch.rand(
            n, generator=gen, device=dev)
        ratio = torch.exp(logr)
        sw = torch.sqrt(area * ratio).clamp(max=1.0)
        sh = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1 - sw) * (2 * torch.rand(n, generator=gen, device=dev) - 1)
        cy = (1 - sh) * (2 * torch.rand(n, generator=gen, device=dev) - 1)
        sx = torch.where(flip, -sw, sw) if flip is not None else sw
        theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sh, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if flip is not None:
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    t = cfg.translate
    if t > 0:
        xp = F.pad(x, (t, t, t, t), mode="reflect")
        shift = torch.randint(0, 2 * t + 1, (n, 2), generator=gen, device=dev)
        rows = (torch.arange(h, device=dev).view(1, h) + shift[:, :1]).view(n, 1, h, 1)
        cols = (torch.arange(w, device=dev).view(1, w) + shift[:, 1:]).view(n, 1, 1, w)
        bidx = torch.arange(n, device=dev).view(n, 1, 1, 1)
        cidx = torch.arange(x.shape[1], device=dev).view(1, -1, 1, 1)
        x = xp[bidx, cidx, rows, cols]
    return x


# ------------------------------------------------------------------------ attacks
def pgd_linf(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float, steps: int,
    gen: torch.Generator | None, random_start: bool = True, autocast: Callable[[], Any] | None = None,
) -> Tensor:
    """Untargeted Linf PGD on the cross-entropy (Madry et al.); FGSM-RS is steps=1, alpha=1.25 eps.

    Self-contained on purpose: the training code does not depend on the attack library.
    """
    if random_start:
        delta = (2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1) * eps
        delta = (x + delta).clamp(0, 1) - x
    else:
        delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        if autocast is not None:
            with autocast():
                loss = F.cross_entropy(model(x + delta), y)
        else:
            loss = F.cross_entropy(model(x + delta), y)
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


# -------------------------------------------------------------------------- eval
def _to_float(u8: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = u8.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def evaluate(
    model: nn.Module, split: Split, *, device: torch.device, batch_size: int, channels_last: bool = False,
    pgd: dict[str, Any] | None = None, gen: torch.Generator | None = None,
) -> float:
    """Top-1 accuracy (fp32, eval mode), optionally under PGD (keys eps, alpha, steps)."""
    model.eval()
    correct = 0
    for i in range(0, len(split.labels), batch_size):
        x = _to_float(split.images[i:i + batch_size], device, channels_last)
        y = split.labels[i:i + batch_size].to(device)
        if pgd is not None:
            x = pgd_linf(model, x, y, eps=pgd["eps"], alpha=pgd["alpha"], steps=pgd["steps"], gen=gen)
        with torch.no_grad():
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(1, len(split.labels))


# ----------------------------------------------------------------------- records
def _lr_factor(step: int, total: int, opt: OptCfg) -> float:
    warm = int(total * opt.warmup_frac)
    if step < warm:
        return opt.warmup_start + (1 - opt.warmup_start) * step / warm
    frac = (step - warm) / max(1, total - warm)
    return 1.0 + (opt.final_lr_frac - 1.0) * frac


# -------------------------------------------------------------------------- main
def main(
    config_path: str,
    *,
    device: str = "cpu",
    out_dir: str | None = None,
    data_root: str | None = None,
    resume: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Train (or resume) the classifier of ``config_path``; return the output folder."""
    from rich.console import Console

    t_start = time.time()
    cfg, run_opts = load_train_config(config_path, overrides)
    dev = resolve_device(device)
    out = Path(out_dir or cfg.out_dir or Path("runs") / "train" / cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    recipe_path, log_path = out / "recipe.json", out / "train.log"
    ckpt_dir = Path(run_opts.get("checkpoint_dir") or out)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / "checkpoint.pt"
    chash = config_hash(cfg)
    console = Console(stderr=True)

    def log(msg: str) -> None:
        console.print(msg, markup=False, highlight=False, soft_wrap=True)
        with open(log_path, "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")

    if resume and recipe_path.is_file():
        rec = json.loads(recipe_path.read_text())
        if rec.get("config_sha256") == chash and rec.get("status") == "complete":
            log(f"{cfg.name}: already complete in {out} (use --no-resume to train again)")
            return out
    state: dict[str, Any] | None = None
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("config_sha256") != chash:
            raise BenchError(f"{out} holds a run of a different config; use --no-resume to overwrite or "
                             f"another --out")
    elif not resume:
        for p in (ckpt_path, recipe_path, log_path):
            p.unlink(missing_ok=True)

    # ---- data
    t_data = time.time()
    if cfg.data.source == "torchvision":
        root = _resolve_dir(cfg.data.dir, data_root)
        train = _load_torchvision(cfg.dataset, root, True)
        test = _load_torchvision(cfg.dataset, root, False)
        data_info: dict[str, Any] = {"source": "torchvision", "dir": str(root)}
    else:
        root = _resolve_dir(cfg.data.dir, data_root)
        if not root.is_dir():
            raise BenchError(f"training data folder not found: {root} (pass --data-root, the folder holding "
                             f"{cfg.data.dir!r}, or set PURIFYBENCH_DATA)")
        train = _load_folder(root, cfg.data.train_split, classes=cfg.data.classes, size=cfg.data.size,
                             per_class=cfg.data.max_per_class)
        test = _load_folder(root, cfg.data.test_split, classes=train.classes, size=cfg.data.size)
        data_info = {"source": "folder", "dir": str(root)}
        if state is not None and "data" in state:
            data_info = json.loads(state["data"])
        else:
            data_info["tree_sha256"] = _tree_sha256(root, [cfg.data.train_split, cfg.data.test_split])
            if (root / "PACK.json").is_file():  # made by scripts/pack_imagenette.py
                data_info["pack"] = json.loads((root / "PACK.json").read_text())
            data_info.update(_archive_info(cfg.data, data_root))
    if cfg.data.subset_dir is not None:
        sroot = _resolve_dir(cfg.data.subset_dir, data_root)
        subset = _load_folder(sroot, cfg.data.subset_split or cfg.data.test_split, classes=train.classes,
                              size=cfg.data.subset_size, per_class=cfg.data.subset_per_class)
    elif cfg.data.subset_first is not None:
        k = min(cfg.data.subset_first, len(test.labels))
        subset = Split(test.images[:k], test.labels[:k], test.classes, test.files[:k])
    else:
        subset = _first_per_class(test, cfg.data.subset_per_class)
    num_classes = cfg.model.num_classes or len(train.classes)
    n_hold = cfg.adv.holdout if cfg.adv.method != "none" else 0
    perm0 = torch.randperm(len(train.labels), generator=generator(cfg.seed, "holdout"))
    hold_idx, train_idx = perm0[:n_hold].sort().values, perm0[n_hold:].sort().values
    holdout = Split(train.images[hold_idx], train.labels[hold_idx], train.classes)
    train = Split(train.images[train_idx], train.labels[train_idx], train.classes)
    data_info.update(n_train=len(train.labels), n_holdout=n_hold, n_test=len(test.labels),
                     n_subset=len(subset.labels), classes=train.classes,
                     subset=(f"first {cfg.data.subset_first} of {cfg.data.dir}/{cfg.data.test_split}"
                             if cfg.data.subset_first is not None and cfg.data.subset_dir is None else
                             f"first {cfg.data.subset_per_class} per class of "
                             f"{cfg.data.subset_dir or cfg.data.dir}/{cfg.data.subset_split or cfg.data.test_split}"))
    log(f"{cfg.name}: data {root} train {tuple(train.images.shape)} test {tuple(test.images.shape)} "
        f"subset {tuple(subset.images.shape)} holdout {n_hold} ({time.time() - t_data:.1f}s)")

    # ---- model and optimiser
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    channels_last = cfg.channels_last and (cuda or cfg.amp_cpu)
    model = build_arch(cfg.model.arch, dataset=cfg.dataset, num_classes=num_classes, seed=derive_seed(cfg.seed, "init"),
                       **cfg.model.kwargs)
    if cfg.model.whiten_init:
        if state is None:
            gi = generator(cfg.seed, "whiten")
            pick = torch.randperm(len(train.labels), generator=gi)[: cfg.model.whiten_init_images]
            model.init_whitening(train.images[pick].float() / 255)  # type: ignore[operator]
        model.whiten.weight.requires_grad_(False)  # type: ignore[union-attr]
    if state is not None:
        model.load_state_dict(state["model"])
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    norm_params = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    other_params = [p for n, p in model.named_parameters() if "norm" not in n and p.requires_grad]
    o = cfg.opt
    groups = [dict(params=other_params, lr=o.lr, weight_decay=o.weight_decay, base_lr=o.lr)]
    if norm_params:
        groups.append(dict(params=norm_params, lr=o.lr * o.norm_lr_scale, weight_decay=o.weight_decay / o.norm_lr_scale,
                           base_lr=o.lr * o.norm_lr_scale))
    optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    n_params = sum(p.numel() for p in model.parameters())

    epoch_log: list[dict[str, Any]] = list(state["log"]) if state else []
    start_epoch = int(state["epoch"]) if state else 0
    epochs_total = int(state["epochs_total"]) if state else o.epochs
    replans: list[dict[str, Any]] = list(state.get("replans", [])) if state else []
    train_time = float(state["train_time_s"]) if state else 0.0
    wall_before = float(state.get("wall_time_s", 0.0)) if state else 0.0
    best: dict[str, Any] | None = None
    if state is not None and "best_model" in state:
        best = {"epoch": int(state["best_epoch"]), "acc": float(state["best_acc"]), "model": state["best_model"]}
    stopped_early = bool(state.get("stopped_early", False)) if state else False
    max_epochs = run_opts.get("max_epochs")

    train_images = train.images.to(dev)
    train_labels = train.labels.to(dev)
    n = len(train_labels)
    bs = min(o.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    amp = cfg.amp and (cuda or cfg.amp_cpu)

    def autocast() -> Any:
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp)

    adv = cfg.adv
    eps, alpha = adv.eps_255 / 255, adv.step_255 / 255
    if adv.method == "fgsm_rs":
        attack_steps, attack_alpha = 1, 1.25 * eps
    else:
        attack_steps, attack_alpha = adv.steps, alpha
    log(f"{cfg.name}: {cfg.model.arch} {n_params / 1e6:.2f}M params on {dev} "
        f"({'bf16 autocast' if amp else 'fp32'}), {epochs_total} epochs x {steps_per_epoch} steps of {bs}"
        f"{f', adversarial {adv.method} eps {adv.eps_255}/255' if adv.method != 'none' else ''}"
        f"{f', resuming after epoch {start_epoch}' if start_epoch else ''}")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not console.is_terminal,
                        transient=True)
    epoch = start_epoch
    with progress:
        task_e = progress.add_task(f"{cfg.name} epochs", total=epochs_total, completed=start_epoch)
        task_s = progress.add_task("steps", total=steps_per_epoch)
        while epoch < epochs_total and not stopped_early:
            if max_epochs is not None and epoch >= int(max_epochs):
                break
            t0 = time.time()
            model.train()
            if cfg.model.whiten_init and epoch >= cfg.model.whiten_bias_epochs:
                model.whiten.bias.requires_grad_(False)  # type: ignore[union-attr]
                model.whiten.bias.grad = None  # type: ignore[union-attr]
            gcpu = generator(cfg.seed, "epoch", epoch)
            gdev = generator(cfg.seed, "epoch-device", epoch, device=dev)
            order = torch.randperm(n, generator=gcpu).to(dev)
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev, dtype=torch.long)
            progress.reset(task_s, total=steps_per_epoch)
            for s in range(steps_per_epoch):
                gstep = epoch * steps_per_epoch + s
                f = _lr_factor(gstep, epochs_total * steps_per_epoch, o)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * f
                idx = order[s * bs:(s + 1) * bs]
                x = train_images[idx].float().div_(255)
                y = train_labels[idx]
                x = augment(x, cfg.aug, gdev)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if adv.method != "none":
                    x = pgd_linf(model, x, y, eps=eps, alpha=attack_alpha, steps=attack_steps, gen=gdev,
                                 random_start=adv.random_start, autocast=autocast)
                with autocast():
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=o.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().float()
                correct += (logits.detach().argmax(1) == y).sum()
                progress.advance(task_s)
            train_loss = float(loss_sum) / steps_per_epoch
            if not math.isfinite(train_loss):
                raise BenchError(f"{cfg.name}: training diverged at epoch {epoch + 1} (loss {train_loss}); "
                                 f"lower opt.lr")
            train_acc = float(correct) / (steps_per_epoch * bs)
            if cuda:
                torch.cuda.synchronize(dev)
            epoch_time = time.time() - t0
            train_time += epoch_time
            with autocast():
                sub_acc = evaluate(model, subset, device=dev, batch_size=o.eval_batch_size, channels_last=channels_last)
            entry: dict[str, Any] = {"epoch": epoch + 1, "loss": train_loss, "train_acc": train_acc,
                                     "subset_acc": sub_acc, "lr_end": optimizer.param_groups[0]["lr"],
                                     "time_s": round(epoch_time, 3)}
            if n_hold:
                ghold = generator(cfg.seed, "holdout-pgd", device=dev)
                with autocast():
                    hacc = evaluate(model, holdout, device=dev, batch_size=o.eval_batch_size,
                                    channels_last=channels_last,
                                    pgd={"eps": eps, "alpha": alpha, "steps": adv.check_steps}, gen=ghold)
                entry["holdout_pgd_acc"] = hacc
                if best is None or hacc >= best["acc"]:
                    best = {"epoch": epoch + 1, "acc": hacc,
                            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
                elif adv.early_stop_drop is not None and hacc < best["acc"] - adv.early_stop_drop:
                    stopped_early = True
                    entry["early_stop"] = f"holdout PGD acc {hacc:.3f} < best {best['acc']:.3f} - {adv.early_stop_drop}"
            epoch_log.append(entry)
            epoch += 1
            # fit the time budget: after epochs 1 and 2, set the epoch count to what fits (at most
            # opt.epochs; epoch 1 includes warm-up costs, so epoch 2 may give some epochs back)
            if o.time_budget_s is not None and epoch <= 2 and epoch < epochs_total:
                fit = epoch + int(max(0.0, o.time_budget_s - train_time) // max(epoch_time, 1e-6))
                new_total = max(epoch + 1, min(o.epochs, fit))
                if new_total != epochs_total:
                    replans.append({"after_epoch": epoch, "epoch_time_s": round(epoch_time, 3),
                                    "from": epochs_total, "to": new_total})
                    log(f"{cfg.name}: time budget {o.time_budget_s:.0f}s: {epochs_total} -> {new_total} epochs")
                    epochs_total = new_total
                    progress.update(task_e, total=epochs_total)
            ckpt: dict[str, Any] = {"format": 1, "config_sha256": chash, "epoch": epoch, "epochs_total": epochs_total,
                                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "log": epoch_log, "replans": replans, "train_time_s": train_time,
                                    "wall_time_s": wall_before + time.time() - t_start,
                                    "stopped_early": stopped_early, "data": json.dumps(data_info)}
            if best is not None:
                ckpt.update(best_epoch=best["epoch"], best_acc=best["acc"], best_model=best["model"])
            atomic_torch_save(ckpt, ckpt_path)
            progress.advance(task_e)
            mean_t = train_time / max(1, len(epoch_log))
            eta = mean_t * (epochs_total - epoch)
            log(f"{cfg.name}: epoch {epoch}/{epochs_total} loss {train_loss:.4f} train_acc {train_acc:.4f} "
                f"subset_acc {sub_acc:.4f}"
                + (f" holdout_pgd{adv.check_steps} {entry['holdout_pgd_acc']:.4f}" if n_hold else "")
                + f" {epoch_time:.1f}s eta {eta:.0f}s")

    if epoch < epochs_total and not stopped_early:
        log(f"{cfg.name}: stopped after epoch {epoch} of {epochs_total} (max_epochs); rerun the same command to resume")
        return out

    # ---- final weights and evaluation
    if stopped_early and best is not None:
        log(f"{cfg.name}: early stop; keeping epoch {best['epoch']} (holdout PGD acc {best['acc']:.4f})")
        model.load_state_dict(best["model"])
    model.eval()
    metrics: dict[str, Any] = {}
    t_eval = time.time()
    metrics["clean_acc_subset"] = evaluate(model, subset, device=dev, batch_size=o.eval_batch_size,
                                           channels_last=channels_last)
    metrics["n_subset"] = len(subset.labels)
    if cfg.data.full_eval:
        metrics["clean_acc_full"] = evaluate(model, test, device=dev, batch_size=o.eval_batch_size,
                                             channels_last=channels_last)
        metrics["n_full"] = len(test.labels)
    if adv.method != "none":
        spec = {"eps": eps, "alpha": alpha, "steps": adv.eval_steps}
        key = f"pgd{adv.eval_steps}_acc"
        metrics[f"{key}_subset"] = evaluate(model, subset, device=dev, batch_size=o.eval_batch_size,
                                            channels_last=channels_last, pgd=spec,
                                            gen=generator(cfg.seed, "eval-pgd-subset", device=dev))
        if adv.eval_full:
            metrics[f"{key}_full"] = evaluate(model, test, device=dev, batch_size=o.eval_batch_size,
                                              channels_last=channels_last, pgd=spec,
                                              gen=generator(cfg.seed, "eval-pgd-full", device=dev))
        metrics["pgd"] = (f"Linf eps {adv.eps_255}/255, {adv.eval_steps} steps of {adv.step_255}/255, "
                          f"uniform random start, cross-entropy, fp32, 1 restart")
    metrics["eval_time_s"] = round(time.time() - t_eval, 2)
    state_cpu = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    weights_sha = save_safetensors(state_cpu, out / "weights.safetensors", metadata={"name": cfg.name})
    try:
        cfg_rel = str(Path(config_path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        cfg_rel = str(config_path)
    first = epoch_log[0] if epoch_log else {}
    recipe = {
        "status": "complete",
        "name": cfg.name,
        "dataset": cfg.dataset,
        "config_path": cfg_rel,
        "config": to_dict(cfg),
        "config_sha256": chash,
        "overrides": {k: v for k, v in (overrides or {}).items() if k not in RUN_OPTIONS},
        "seed": cfg.seed,
        "deterministic": not cuda,
        "data": data_info,
        "git": git_state(),
        "versions": library_versions(),
        "hardware": hardware(dev),
        "device": str(dev),
        "precision": "bf16 autocast" if amp else "fp32",
        "params": n_params,
        "weights": {"file": "weights.safetensors", "sha256": weights_sha,
                    "bytes": (out / "weights.safetensors").stat().st_size},
        "epochs_planned": o.epochs,
        "epochs_run": len(epoch_log),
        "replans": replans,
        "stopped_early": stopped_early,
        "kept_epoch": best["epoch"] if (stopped_early and best) else len(epoch_log),
        "first_epoch_loss": first.get("loss"),
        "train_time_s": round(train_time, 2),
        "wall_time_s": round(wall_before + time.time() - t_start, 2),  # all sessions, data loading and eval included
        "epochs": epoch_log,
        "metrics": metrics,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(recipe_path, json.dumps(recipe, indent=2, sort_keys=False, default=str) + "\n")
    if not cfg.keep_checkpoint:
        ckpt_path.unlink(missing_ok=True)
    log(f"{cfg.name}: done; " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in metrics.items() if k != "pgd")
        + f"; weights {out / 'weights.safetensors'}")
    return out


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmark.train.classifier`` (same flags as ``bench train classifier``),
    for machines where the full CLI's dependencies are not installed."""
    import yaml

    p = argparse.ArgumentParser(prog="python -m benchmark.train.classifier")
    p.add_argument("--config", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    overrides = {}
    for item in a.set:
        if "=" not in item:
            print(f"error: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        k, v = item.split("=", 1)
        overrides[k.strip()] = yaml.safe_load(v)
    try:
        out = main(a.config, device=a.device, out_dir=a.out, data_root=a.data_root, resume=not a.no_resume,
                   overrides=overrides)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    # run the importable module's copy (its dataclasses resolve their type hints by module name)
    from benchmark.train import classifier as _module

    sys.exit(_module.cli())
