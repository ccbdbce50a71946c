"""`bench train atop`: pre-train AToP purifiers and fine-tune them with the AToP loss.

Two stages (config ``stage``):

- ``pretrain``: the purifier's original loss on clean images behind random transforms.
  GAN (DeepFill-style, :mod:`defenses.gan`): L_df = L1 (fine + coarse output) plus the
  hinge-GAN generator term, the SN-PatchGAN discriminator trained with the hinge loss.
  The paper writes L_df as E[D(x)] - E[D(g(t(x)))] + ||x - g(t(x))||_1 (Eq. 9); we use its
  hinge form (DeepFill v2's SN-PatchGAN loss) and weight the adversarial term by
  ``gan_weight`` (0.1 by default, 1 in Eq. 9) for stability of short runs.
  AE (DMAE-style, :mod:`defenses.ae`): L_mae = pixel MSE to the clean image.
  ``pretrain_rts`` lists the transforms that make the inputs (the batch is split evenly
  between them): the paper pre-trains one purifier and plugs it behind every RT (its
  supplementary shows "the pre-trained GAN-based model without adversarial training"
  purifying RT1, RT2 and RT3 inputs), so our GAN pre-training mixes RT1 (no noise) and RT2
  (noise) inputs; RT3's views have the RT2 distribution (each hides exactly r = 0.25).
- ``finetune`` (Algorithm 1): the classifier f is frozen; each step builds x' = x + delta
  by FGSM (or PGD) on the classifier at eps = 8/255, then minimises
  L_org(x') + lambda * CE(y, f(g(t(x')))), lambda = 0.1 (Eq. 9; with ``recon_target: adv``
  the reconstruction target is x', as written there; ``clean`` uses x). For RT3 the CE is
  on the combined x-hat (Eq. 4) and L_org on each of the N purified views.

Training keeps the whole dataset on the device as uint8 (no DataLoader; random crop + flip
on the device), draws every step's randomness from a generator seeded by (seed, step),
checkpoints every epoch atomically and resumes from the checkpoint, stops at
``time_budget_s`` (then it saves what it has), and writes ``weights.safetensors`` (purifier
only, ``save_dtype``), ``discriminator.safetensors`` (GAN) and ``recipe.json``.

``python -m benchmark.train.atop job --out DIR --data DIR`` runs the whole GPU job of
``scripts/gpu/atop.sh`` in one process: pretrain GAN and AE, then fine-tune every variant.

Import-time dependencies: torch, numpy, PIL, yaml, safetensors only (the GPU box has no
attack libraries).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.build import resolve_device
from benchmark.config import from_dict, read_yaml, to_dict
from benchmark.errors import BenchError
from benchmark.provenance import git_commit, hardware, library_versions
from benchmark.results import atomic_torch_save, atomic_write_text
from defenses.atop import build_net
from defenses.gan import PatchDiscriminator
from defenses.rt import RandomTransform
from defenses.weights import load_shipped, load_state_dict
from defenses.weights import sha256_file
from benchmark.data.folder import load_image_folder
from defenses.weights import save_safetensors
from defenses.gan import n_params

REPO_ROOT = Path(__file__).resolve().parents[2]
CIFAR10_ARCHIVE_SHA256 = "820394552d8cd6cf2834c7f34753d3e36624717e73e6a373a57a01edb25bc5f0"


# ----------------------------------------------------------------------------- config
@dataclass
class AToPConfig:
    """Training config of an AToP purifier (YAML under configs/train/atop_*.yaml)."""

    purifier: str = "gan"  # gan | ae
    rt: str = "rt2"  # rt1 | rt2 | rt3: the transform of fine-tuning (and the default of pre-training)
    stage: str = "finetune"  # pretrain | finetune
    pretrain_rts: list[str] = field(default_factory=list)  # pre-training transforms (default: [rt])
    sigma: float = 0.25
    rate: float = 0.25
    n_masks: int = 4
    # architecture (defaults = the shipped models)
    cnum: int = 16
    fine_cnum: int = 8
    d_cnum: int = 32
    ae_dim: int = 128
    ae_depth: int = 4
    ae_dec_dim: int = 96
    ae_dec_depth: int = 2
    # optimisation
    batch_size: int = 256
    epochs: int = 10
    max_steps: int = 0  # 0: epochs * steps per epoch
    lr: float = 5e-4
    d_lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant
    gan_weight: float = 0.1
    coarse_weight: float = 1.0
    augment: bool = True
    # AToP fine-tuning
    init: str | None = None  # pretrained purifier: run dir, .safetensors file or shipped name
    lam: float = 0.1
    attack: str = "fgsm"  # fgsm | pgd | none (none = fine-tune on clean images, Fig. 4a)
    attack_target: str = "classifier"  # classifier (as in the paper) | pipeline (through g and t)
    eps: float = 8 / 255
    pgd_steps: int = 10
    pgd_alpha: float = 2 / 255
    recon_target: str = "adv"  # adv: x' (Eq. 9) | clean: x
    classifier: str = "cifar10_standard"  # registry name, used when no classifier_run is given
    classifier_run: str | None = None  # run dir (weights.safetensors + recipe.json); else $CLASSIFIER_RUN
    # data and run
    dataset: str = "cifar10"
    train_limit: int = 0  # use the first N training images (0: all), for smoke tests
    eval_images: int = 1000
    seed: int = 0
    time_budget_s: float = 0.0  # 0: none; else stop (and save) after this many seconds
    amp: bool = True  # bf16 autocast on CUDA
    amp_cpu: bool = False  # and on CPU (fast only where the CPU has bf16 instructions, e.g. avx512_bf16)
    save_dtype: str = "float16"
    log_every: int = 50

    def validate(self) -> None:
        checks = {
            "purifier": ("gan", "ae"), "rt": ("rt1", "rt2", "rt3"), "stage": ("pretrain", "finetune"),
            "schedule": ("cosine", "constant"), "attack": ("fgsm", "pgd", "none"),
            "attack_target": ("classifier", "pipeline"), "recon_target": ("adv", "clean"),
            "save_dtype": ("float16", "float32"), "dataset": ("cifar10",),
        }
        for key, allowed in checks.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        for r in self.pretrain_rts:
            if r not in ("rt1", "rt2", "rt3"):
                raise ValueError(f"pretrain_rts entries must be rt1/rt2/rt3; got {r!r}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        if len(self.betas) != 2:
            raise ValueError("betas must have two numbers")
        if self.lam < 0 or self.eps < 0:
            raise ValueError("lam and eps must be >= 0")


def load_atop_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> AToPConfig:
    data = read_yaml(path) if path is not None else {}
    if data is not None and not isinstance(data, dict):
        raise BenchError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    data = dict(data or {})
    data.update(dict(overrides or {}))
    return from_dict(AToPConfig, data, where=str(path or "config"))


# ------------------------------------------------------------------------ models
def purifier_arch_kwargs(cfg: AToPConfig | Mapping[str, Any], image_size: int = 32) -> dict[str, Any]:
    """The purifier's constructor arguments from a config (dataclass or a recipe's config dict);
    shipping records them in the manifest so the registry rebuilds the same network."""
    get = (lambda k: cfg[k]) if isinstance(cfg, Mapping) else (lambda k: getattr(cfg, k))
    if get("purifier") == "gan":
        return {"cnum": int(get("cnum")), "fine_cnum": int(get("fine_cnum"))}
    return {"image_size": image_size, "dim": int(get("ae_dim")), "depth": int(get("ae_depth")),
            "dec_dim": int(get("ae_dec_dim")), "dec_depth": int(get("ae_dec_depth"))}


def build_purifier(cfg: AToPConfig, image_size: int = 32) -> nn.Module:
    return build_net(cfg.purifier, **purifier_arch_kwargs(cfg, image_size))


def build_discriminator(cfg: AToPConfig) -> nn.Module | None:
    if cfg.purifier != "gan":
        return None
    return PatchDiscriminator(cnum=cfg.d_cnum)


def build_transform(cfg: AToPConfig, kind: str | None = None) -> "Any":
    return RandomTransform(kind or cfg.rt, sigma=cfg.sigma, rate=cfg.rate, n_masks=cfg.n_masks)


def resolve_init(spec: str) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Pretrained purifier (and discriminator, when found) from a run dir, a file or a shipped name."""
    p = Path(spec)
    if p.is_dir():
        w = p / "weights.safetensors"
        if not w.is_file():
            raise BenchError(f"init run dir {p} has no weights.safetensors (did its pretraining finish?)")
        d = p / "discriminator.safetensors"
        return load_state_dict(w), (load_state_dict(d) if d.is_file() else None)
    if p.suffix in (".safetensors", ".pt", ".pth"):
        return load_state_dict(p), None
    return load_shipped(spec), None


# ---------------------------------------------------------------------- classifier
def load_classifier(cfg: AToPConfig, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen classifier: from ``classifier_run`` / $CLASSIFIER_RUN (a run dir of the
    classifier trainer) or else the registry name ``classifier``."""
    run = cfg.classifier_run or os.environ.get("CLASSIFIER_RUN")
    if run:
        model, info = load_classifier_run(run, dataset=cfg.dataset)
    else:
        from benchmark.registry import CLASSIFIERS, load_builtins

        load_builtins()
        model = CLASSIFIERS.create(cfg.classifier, device="cpu")
        info = {"classifier": cfg.classifier, "weights_sha256": getattr(model, "weights_sha256", None)}
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


def load_classifier_run(run: str | Path, *, dataset: str = "cifar10") -> tuple[nn.Module, dict[str, Any]]:
    """A classifier from a training run dir (weights.safetensors + recipe.json naming the arch)."""
    p = Path(run)
    weights = p / "weights.safetensors" if p.is_dir() else p
    recipe_path = (p if p.is_dir() else p.parent) / "recipe.json"
    if not weights.is_file():
        raise BenchError(f"classifier run {p}: no weights.safetensors (set CLASSIFIER_RUN or classifier_run "
                         "to the classifier trainer's output dir)")
    if not recipe_path.is_file():
        raise BenchError(f"classifier run {p}: no recipe.json beside the weights, cannot tell the architecture")
    recipe = json.loads(recipe_path.read_text())
    ccfg = recipe.get("config", {})
    model_cfg = ccfg.get("model", {}) if isinstance(ccfg.get("model"), dict) else {}
    arch = model_cfg.get("arch") or ccfg.get("arch")
    if not arch:
        raise BenchError(f"classifier run {p}: recipe.json config names no model.arch")
    ds = ccfg.get("dataset", dataset)
    if ds != dataset:
        raise BenchError(f"classifier run {p} is for dataset {ds!r}, not {dataset!r}")
    try:
        from defenses.classifiers import load_checkpoint_classifier
    except ImportError as e:
        raise BenchError(f"cannot load classifier run {p}: defenses.classifiers unavailable ({e})") from None
    model = load_checkpoint_classifier(weights, arch, dataset=ds, num_classes=model_cfg.get("num_classes"),
                                       **model_cfg.get("kwargs", {}))
    return model, {"classifier_run": str(p), "arch": arch, "weights_sha256": sha256_file(weights),
                   "classifier_metrics": recipe.get("metrics", recipe.get("final_metrics"))}


# ----------------------------------------------------------------------------- data
@dataclass
class DeviceData:
    images: Tensor  # uint8 (N, 3, H, W) on the device
    labels: Tensor  # int64 (N,) on the device
    sha256: str  # of the decoded uint8 images + labels


def data_folder(data_root: str | Path | None) -> Path:
    """The CIFAR-10 image folder: ``data_root`` itself or ``data_root/cifar10-jpeg``."""
    if data_root is None:
        data_root = os.environ.get("DATA") or str(REPO_ROOT.parent / "data")
    root = Path(data_root)
    for cand in (root, root / "cifar10-jpeg"):
        if (cand / "train").is_dir():
            return cand
    raise BenchError(f"no CIFAR-10 image folder under {root} (expected {root}/cifar10-jpeg/train/<class>/*.jpg)")


def load_split(data_root: str | Path | None, split: str, device: torch.device, limit: int = 0) -> DeviceData:
    """Decode a split once (npz-cached) and move it to the device."""
    import hashlib


    cache = os.environ.get("PURIFYBENCH_CACHE")
    fd = load_image_folder(data_folder(data_root), split, cache_dir=(Path(cache) / "data") if cache else None)
    images, labels = fd.images, fd.labels
    if limit and limit < len(labels):
        # a class-balanced subset: interleave the classes by each image's rank within its class
        counts = torch.bincount(labels)
        first = torch.cumsum(counts, 0) - counts  # folders are sorted by class
        rank_in_class = torch.arange(len(labels)) - first[labels]
        order = torch.argsort(rank_in_class * (int(labels.max()) + 1) + labels, stable=True)[:limit]
        images, labels = images[order], labels[order]
    h = hashlib.sha256(images.numpy().tobytes())
    h.update(labels.numpy().tobytes())
    return DeviceData(images.to(device), labels.to(device), h.hexdigest())


def augment(x: Tensor, gen: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop (reflect pad 4) and horizontal flip, per image, on the device."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    off = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen, device=gen.device).to(x.device)
    rows = off[:, :1] + torch.arange(h, device=x.device)  # (n, h)
    cols = off[:, 1:] + torch.arange(w, device=x.device)  # (n, w)
    flip = torch.rand(n, generator=gen, device=gen.device).to(x.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- losses
def attack_batch(cfg: AToPConfig, classifier: nn.Module, x: Tensor, y: Tensor,
                 purify: Callable[[Tensor], Tensor] | None = None, gen: torch.Generator | None = None) -> Tensor:
    """x' = x + delta by FGSM / PGD (L_inf, eps) on the classifier (or through the purifier)."""
    if cfg.attack == "none" or cfg.eps == 0:
        return x
    fwd = (lambda z: classifier(purify(z))) if (purify is not None and cfg.attack_target == "pipeline") else classifier
    steps, alpha = (1, cfg.eps) if cfg.attack == "fgsm" else (cfg.pgd_steps, cfg.pgd_alpha)
    xa = x.detach()
    if cfg.attack == "pgd":
        xa = (xa + (2 * torch.rand(x.shape, generator=gen, device=gen.device if gen is not None else x.device)
                    .to(x.device) - 1) * cfg.eps).clamp(0, 1)
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        loss = F.cross_entropy(fwd(xa).float(), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - cfg.eps), x + cfg.eps).clamp(0, 1)
    return xa.detach()


def lr_at(cfg: AToPConfig, step: int, total: int, base: float) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total <= 0:
        return base
    t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return base * 0.5 * (1 + math.cos(math.pi * t))


class Trainer:
    """One purifier's training state and its step (pretraining or AToP fine-tuning)."""

    def __init__(self, cfg: AToPConfig, device: torch.device, classifier: nn.Module | None,
                 init: tuple[Mapping[str, Tensor], Mapping[str, Tensor] | None] | None = None,
                 image_size: int = 32) -> None:
        self.cfg, self.device = cfg, device
        self.classifier = classifier
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.g = build_purifier(cfg, image_size).to(device)
            self.d = build_discriminator(cfg)
        if self.d is not None:
            self.d = self.d.to(device)
        if init is not None:
            gs, ds = init
            self.g.load_state_dict({k: v.float() for k, v in gs.items()})
            if ds is not None and self.d is not None:
                self.d.load_state_dict({k: v.float() for k, v in ds.items()})
        self.rt = build_transform(cfg)
        rts = cfg.pretrain_rts or [cfg.rt]
        self.pre_rts = [build_transform(cfg, k) for k in rts] if cfg.stage == "pretrain" else [self.rt]
        betas = (float(cfg.betas[0]), float(cfg.betas[1]))
        if cfg.purifier == "ae":
            self.opt_g: torch.optim.Optimizer = torch.optim.AdamW(self.g.parameters(), lr=cfg.lr, betas=betas,
                                                                  weight_decay=cfg.weight_decay)
        else:
            self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.d_lr, betas=betas) if self.d is not None else None
        if cfg.stage == "finetune" and classifier is None:
            raise BenchError("AToP fine-tuning needs the frozen classifier")
        self.amp = cfg.amp and (device.type == "cuda" or cfg.amp_cpu)
        if self.amp and device.type == "cpu":
            # bf16 convolutions on CPU are fastest in channels-last layout (measured with the classifier: 0.62 -> 0.49 s/step)
            self.g = self.g.to(memory_format=torch.channels_last)

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _d(self, img: Tensor) -> Tensor:
        """Discriminator scores in float32 (spectral norm's power iteration stays out of autocast)."""
        assert self.d is not None
        with torch.autocast(self.device.type, enabled=False):
            return self.d(img.float())

    def _purify(self, x: Tensor, noise: Any) -> Tensor:
        return self.rt.purify(x, noise, self.g)

    def step(self, x: Tensor, y: Tensor, gen: torch.Generator, lr_scale: float = 1.0) -> dict[str, Tensor]:
        """One optimisation step on a batch of clean images; returns detached loss terms."""
        cfg = self.cfg
        for grp in self.opt_g.param_groups:
            grp["lr"] = cfg.lr * lr_scale
        if self.opt_d is not None:
            for grp in self.opt_d.param_groups:
                grp["lr"] = cfg.d_lr * lr_scale
        self.g.train()
        out: dict[str, Tensor] = {}
        finetune = cfg.stage == "finetune"
        if finetune:
            assert self.classifier is not None
            with self.autocast():
                noise_a = self.rt.sample(x, gen)
                xadv = attack_batch(cfg, self.classifier, x, y, lambda z: self._purify(z, noise_a), gen)
            src = xadv
            target_img = xadv if cfg.recon_target == "adv" else x
        else:
            src, target_img = x, x
        # transform views (pretraining may split the batch between several RTs)
        chunks = torch.arange(src.shape[0], device=src.device).tensor_split(len(self.pre_rts))
        views, keeps, targets, noises = [], [], [], []
        for rt, idx in zip(self.pre_rts, chunks):
            noise = rt.sample(src[idx], gen)
            xt, keep = rt.views(src[idx], noise)
            views.append(xt)
            keeps.append(keep)
            targets.append(target_img[idx].repeat(rt.k, 1, 1, 1))
            noises.append(noise)
        xt, keep, tgt = torch.cat(views), torch.cat(keeps), torch.cat(targets)
        with self.autocast():
            if cfg.purifier == "gan":
                x1, x2 = self.g.forward_both(xt, keep)
            else:
                x1, x2 = None, self.g(xt, keep)
        # discriminator step (hinge)
        if self.d is not None and self.opt_d is not None:
            from defenses.gan import d_hinge_loss

            self.d.train()
            d_loss = d_hinge_loss(self._d(tgt), self._d(x2.detach()))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            out["d"] = d_loss.detach()
        # purifier loss
        x2f = x2.float()
        if cfg.purifier == "gan":
            from defenses.gan import g_adv_loss

            rec = (x2f - tgt).abs().mean() + cfg.coarse_weight * (x1.float() - tgt).abs().mean()
            adv = g_adv_loss(self._d(x2))
            loss = rec + cfg.gan_weight * adv
            out["l1"], out["g_adv"] = rec.detach(), adv.detach()
        else:
            rec = F.mse_loss(x2f, tgt)
            loss = rec
            out["mse"] = rec.detach()
        if finetune:
            assert self.classifier is not None
            xhat = self.rt.combine(x2, noises[0])
            with self.autocast():
                logits = self.classifier(xhat).float()
            ce = F.cross_entropy(logits, y)
            loss = loss + cfg.lam * ce
            out["ce"] = ce.detach()
            out["acc_adv"] = (logits.argmax(1) == y).float().mean().detach()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        out["loss"] = loss.detach()
        return out

    # --- evaluation ---------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: DeviceData, n: int, seed: int, batch: int = 500) -> dict[str, float]:
        """Clean accuracy through t, g, f (one noise draw), purifier reconstruction error, and,
        with a classifier, accuracy on FGSM-on-classifier examples (the fine-tuning attack)."""
        self.g.eval()
        n = min(n, len(data.labels))
        gen = torch.Generator(device=self.device).manual_seed(seed)
        tot: dict[str, float] = {}
        for s in range(0, n, batch):
            x = data.images[s:s + batch].float() / 255
            y = data.labels[s:s + batch]
            with self.autocast():
                noise = self.rt.sample(x, gen)
                xhat = self._purify(x, noise).float()
            res = {"recon_l1": (xhat - x).abs().mean(dim=(1, 2, 3)).sum().item()}
            if self.classifier is not None:
                with self.autocast():
                    res["acc_classifier_clean"] = (self.classifier(x).argmax(1) == y).sum().item()
                    res["acc_clean"] = (self.classifier(xhat).argmax(1) == y).sum().item()
                with torch.enable_grad():
                    fg = AToPConfig(attack="fgsm", attack_target="classifier", eps=self.cfg.eps)
                    with self.autocast():
                        xa = attack_batch(fg, self.classifier, x, y)
                with self.autocast():
                    res["acc_fgsm_transfer"] = (self.classifier(self._purify(xa, noise)).argmax(1) == y).sum().item()
                    res["acc_classifier_fgsm"] = (self.classifier(xa).argmax(1) == y).sum().item()
            for k, v in res.items():
                tot[k] = tot.get(k, 0.0) + v
        return {k: round(v / n, 5) for k, v in tot.items()} | {"eval_images": n}

    # --- state ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        s: dict[str, Any] = {"g": self.g.state_dict(), "opt_g": self.opt_g.state_dict()}
        if self.d is not None and self.opt_d is not None:
            s["d"], s["opt_d"] = self.d.state_dict(), self.opt_d.state_dict()
        return s

    def load(self, s: Mapping[str, Any]) -> None:
        self.g.load_state_dict(s["g"])
        self.opt_g.load_state_dict(s["opt_g"])
        if self.d is not None and self.opt_d is not None:
            self.d.load_state_dict(s["d"])
            self.opt_d.load_state_dict(s["opt_d"])


def _write_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ------------------------------------------------------------------------ training
def train(
    cfg: AToPConfig,
    *,
    device: torch.device,
    out_dir: Path,
    train_data: DeviceData,
    test_data: DeviceData | None,
    classifier: nn.Module | None,
    classifier_info: Mapping[str, Any] | None = None,
    init: tuple[Mapping[str, Tensor], Mapping[str, Tensor] | None] | None = None,
    resume: bool = True,
    deadline: float | None = None,
    write_recipe: bool = True,
    keep_checkpoint: bool = True,
    config_path: str | None = None,
) -> tuple[Trainer, dict[str, Any]]:
    """Train one purifier into ``out_dir``; returns the trainer and the recipe record.

    ``deadline`` (time.monotonic() value) and ``cfg.time_budget_s`` both stop the run early;
    the planned number of steps is then fitted to the time left after 30 measured steps, so
    the learning-rate schedule still ends at zero.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    if cfg.time_budget_s > 0:
        deadline = min(deadline or math.inf, t_start + cfg.time_budget_s)
    n = len(train_data.labels)
    bs = min(cfg.batch_size, n)
    spe = max(1, n // bs)
    total = cfg.max_steps or cfg.epochs * spe
    trainer = Trainer(cfg, device, classifier, init, image_size=int(train_data.images.shape[-1]))
    ckpt_path = out_dir / "checkpoint.pt"
    step, log, elapsed_before, planned_fit = 0, [], 0.0, False
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck.get("config") != to_dict(cfg):
            raise BenchError(f"checkpoint {ckpt_path} was made with another config; use a new --out or --no-resume")
        trainer.load(ck["trainer"])
        step, total, log = int(ck["step"]), int(ck["total"]), list(ck["log"])
        elapsed_before, planned_fit = float(ck["elapsed"]), bool(ck.get("planned_fit", False))
    first_log = len(log) == 0
    step0 = step  # the eta's rate counts this invocation's steps only
    from benchmark.progress import format_seconds

    acc: dict[str, float] = {}
    acc_n = 0
    t_epoch = time.monotonic()
    stopped = False
    t_measure: tuple[int, float] | None = None

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def save_ckpt() -> None:
        atomic_torch_save({"trainer": trainer.state(), "step": step, "total": total, "log": log,
                            "config": to_dict(cfg), "planned_fit": planned_fit,
                            "elapsed": elapsed_before + time.monotonic() - t_start}, ckpt_path)

    while step < total:
        epoch = step // spe
        perm_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=perm_gen)[: spe * bs].view(spe, bs).to(device)
        while step < total and step // spe == epoch:
            gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
            idx = perm[step % spe]
            x = train_data.images[idx].float() / 255
            y = train_data.labels[idx]
            if cfg.augment:
                x = augment(x, gen)
            terms = trainer.step(x, y, gen, lr_at(cfg, step, total, 1.0))
            for k, v in terms.items():
                acc[k] = acc.get(k, 0.0) + v  # type: ignore[assignment]
            acc_n += 1
            step += 1
            # fit the planned steps to the time left, once, after 30 measured steps
            if deadline is not None and not planned_fit:
                if t_measure is None and acc_n == 5:
                    sync()
                    t_measure = (step, time.monotonic())
                elif t_measure is not None and step - t_measure[0] == 30:
                    sync()
                    per = (time.monotonic() - t_measure[1]) / 30
                    fit = step + int(0.95 * (deadline - time.monotonic()) / per)
                    total = max(step, min(total, fit))
                    planned_fit = True
            if step % cfg.log_every == 0 or step == total:
                sync()
                if deadline is not None and time.monotonic() > deadline and step < total:
                    stopped = True
                    break
        # end of epoch (or stop): log, checkpoint
        means = {k: round(float(v) / max(1, acc_n), 5) for k, v in acc.items()}
        ep_time = time.monotonic() - t_epoch
        log.append({"epoch": epoch + 1, "step": step, "seconds": round(ep_time, 2), **means})
        run_s = time.monotonic() - t_start
        eta = run_s / max(1, step - step0) * (total - step) if step > step0 else None
        print(f"[atop {cfg.purifier}/{cfg.stage}/{cfg.rt}] {'first ' if first_log else ''}epoch {epoch + 1} "
              f"step {step}/{total} {ep_time:.1f}s elapsed {format_seconds(run_s)} "
              f"eta {format_seconds(eta) if eta is not None else '?'} {means}", flush=True)
        first_log = False
        acc, acc_n, t_epoch = {}, 0, time.monotonic()
        save_ckpt()
        if stopped:
            break
    wall = elapsed_before + time.monotonic() - t_start
    metrics: dict[str, Any] = {}
    if test_data is not None and cfg.eval_images > 0:
        metrics = trainer.evaluate(test_data, cfg.eval_images, seed=cfg.seed + 12345)
    dt = torch.float16 if cfg.save_dtype == "float16" else torch.float32
    gsd = {k: v.to(dt) if v.is_floating_point() else v for k, v in trainer.g.state_dict().items()}
    meta = {"purifier": cfg.purifier, "rt": cfg.rt, "stage": cfg.stage}
    digest = save_safetensors(gsd, out_dir / "weights.safetensors", metadata=meta)
    files = {"weights.safetensors": digest}
    if trainer.d is not None and keep_checkpoint:
        files["discriminator.safetensors"] = save_safetensors(trainer.d.state_dict(),
                                                              out_dir / "discriminator.safetensors")
    recipe = {
        "kind": "atop",
        "config": to_dict(cfg),
        "config_path": config_path,
        "seed": cfg.seed,
        "data_archive_sha256": CIFAR10_ARCHIVE_SHA256,
        "data_sha256": train_data.sha256,
        "train_images": n,
        "git_commit": git_commit(),
        "versions": library_versions(),
        "hardware": hardware(device),
        "wall_time_s": round(wall, 1),
        "steps": step,
        "planned_steps": total,
        "stopped_by_deadline": stopped,
        "epochs_log": log,
        "first_epoch_loss": log[0].get("loss") if log else None,
        "metrics": metrics,
        "purifier_params": n_params(trainer.g),
        "discriminator_params": n_params(trainer.d) if trainer.d is not None else 0,
        "classifier": dict(classifier_info or {}),
        "init": cfg.init if init is None or cfg.init else "in-memory (same job)",
        "files": files,
        "finished": True,
    }
    if write_recipe:
        _write_json(recipe, out_dir / "recipe.json")
    if not keep_checkpoint and ckpt_path.is_file():
        ckpt_path.unlink()
    return trainer, recipe


def default_out_dir(cfg: AToPConfig) -> Path:
    name = f"atop_{cfg.purifier}_{'pre' if cfg.stage == 'pretrain' else 'ft'}_{cfg.rt}"
    return Path("runs") / "train" / name


def main(config_path: str, *, device: str, out_dir: str | None, data_root: str | None,
         resume: bool = True, overrides: dict | None = None) -> Path:
    """`bench train atop`: train one purifier (pretrain or AToP fine-tune) per the config."""
    cfg = load_atop_config(config_path, overrides)
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir else default_out_dir(cfg)
    rec = out / "recipe.json"
    if resume and rec.is_file() and json.loads(rec.read_text()).get("finished") and \
            json.loads(rec.read_text()).get("config") == to_dict(cfg):
        print(f"{out}: already trained (recipe.json finished); nothing to do", flush=True)
        return out
    classifier, cinfo = (None, {})
    if cfg.stage == "finetune":
        classifier, cinfo = load_classifier(cfg, dev)
    init = None
    if cfg.stage == "finetune":
        if not cfg.init:
            raise BenchError("stage finetune needs `init`: the pretrained purifier (run dir, .safetensors or "
                             "shipped name such as atop_gan_pre)")
        init = resolve_init(cfg.init)
    train_data = load_split(data_root, "train", dev, cfg.train_limit)
    test_data = load_split(data_root, "test", dev, cfg.eval_images) if cfg.eval_images > 0 else None
    train(cfg, device=dev, out_dir=out, train_data=train_data, test_data=test_data, classifier=classifier,
          classifier_info=cinfo, init=init, resume=resume, config_path=config_path)
    return out


# ------------------------------------------------------------------------ GPU job
# variant -> (config file, init variant); ordered by importance (atop_gan first after its pretraining)
JOB_VARIANTS: list[tuple[str, str, str | None, float]] = [
    ("atop_gan_pre", "configs/train/atop_gan_pretrain.yaml", None, 0.27),
    ("atop_gan_rt2", "configs/train/atop_gan_rt2.yaml", "atop_gan_pre", 0.14),
    ("atop_ae_pre", "configs/train/atop_ae_pretrain.yaml", None, 0.16),
    ("atop_ae", "configs/train/atop_ae.yaml", "atop_ae_pre", 0.12),
    ("atop_gan_rt1", "configs/train/atop_gan_rt1.yaml", "atop_gan_pre", 0.13),
    ("atop_gan_rt3", "configs/train/atop_gan_rt3.yaml", "atop_gan_pre", 0.18),
]


def run_job(out: str | Path, *, data_root: str | None, device: str = "cuda", budget_s: float = 400.0,
            overrides: Mapping[str, Any] | None = None, variants: list[str] | None = None) -> Path:
    """All AToP purifiers in one process (data decoded once): pretrain GAN and AE, fine-tune
    rt2, ae, rt1, rt3. Each phase gets its share of ``budget_s``; time a phase leaves unused
    passes to the next. Writes <out>/<variant>/weights.safetensors and one <out>/recipe.json."""
    t0 = time.monotonic()
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [v for v in JOB_VARIANTS if variants is None or v[0] in variants]
    cfgs = {name: load_atop_config(path, overrides) for name, path, _, _ in chosen}
    first = next(iter(cfgs.values()))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    classifier, cinfo = (None, {})
    classifier_error = None
    if any(c.stage == "finetune" for c in cfgs.values()):
        try:
            classifier, cinfo = load_classifier(first, dev)
        except (BenchError, ImportError) as e:
            # still pre-train (no classifier needed); fine-tuning variants are skipped
            classifier_error = str(e)
            print(f"[job] ERROR: no classifier ({e}); only the pre-training phases will run", flush=True)
            chosen = [v for v in chosen if cfgs[v[0]].stage == "pretrain"]
    limit = max(c.train_limit for c in cfgs.values()) if all(c.train_limit for c in cfgs.values()) else 0
    train_data = load_split(data_root, "train", dev, limit)
    n_eval = max(c.eval_images for c in cfgs.values())
    test_data = load_split(data_root, "test", dev, n_eval) if n_eval > 0 else None
    print(f"[job] data on {dev} after {time.monotonic() - t0:.1f}s; classifier {cinfo}", flush=True)
    if classifier is not None and test_data is not None:
        with torch.no_grad():
            accs = [(classifier(test_data.images[s:s + 500].float() / 255).argmax(1)
                     == test_data.labels[s:s + 500]).float().sum().item() for s in range(0, len(test_data.labels), 500)]
        print(f"[job] classifier clean accuracy on {len(test_data.labels)} test images: "
              f"{sum(accs) / len(test_data.labels):.4f}", flush=True)
    end = t0 + budget_s
    trained: dict[str, tuple[dict[str, Tensor], dict[str, Tensor] | None]] = {}
    recipes: dict[str, Any] = {}
    recipe_path = out / "recipe.json"
    share_left = sum(s for *_, s in chosen)
    for name, path, init_name, share in chosen:
        cfg = cfgs[name]
        now = time.monotonic()
        phase_budget = (end - now) * share / share_left
        share_left -= share
        init = None
        if cfg.stage == "finetune":
            if init_name in trained:
                init = trained[init_name]
            elif cfg.init:
                init = resolve_init(cfg.init)
            else:
                raise BenchError(f"{name}: no pretrained purifier {init_name} in this job and no init in {path}")
        print(f"[job] {name}: budget {phase_budget:.0f}s", flush=True)
        trainer, recipe = train(cfg, device=dev, out_dir=out / name, train_data=train_data, test_data=test_data,
                                classifier=classifier if cfg.stage == "finetune" else None,
                                classifier_info=cinfo if cfg.stage == "finetune" else None, init=init,
                                deadline=now + phase_budget, write_recipe=False, keep_checkpoint=False,
                                config_path=path)
        if cfg.stage == "pretrain":
            # pretrain metrics with the classifier too (the ablation's "without AToP" numbers)
            if classifier is not None and test_data is not None:
                for rt in (["rt1", "rt2", "rt3"] if cfg.purifier == "gan" else [cfg.rt]):
                    trainer.classifier, trainer.rt = classifier, build_transform(cfg, rt)
                    recipe["metrics"][f"with_classifier_{rt}"] = trainer.evaluate(test_data, cfg.eval_images,
                                                                                   seed=cfg.seed + 12345)
            trained[name] = ({k: v.detach().clone() for k, v in trainer.g.state_dict().items()},
                             {k: v.detach().clone() for k, v in trainer.d.state_dict().items()}
                             if trainer.d is not None else None)
        recipe["variant"] = name
        if init is not None and init_name in trained:
            recipe["init"] = f"in-memory: {init_name} of this job"
        recipes[name] = recipe
        print(f"[job] {name}: {recipe['steps']} steps in {recipe['wall_time_s']}s, metrics {recipe['metrics']}",
              flush=True)
        _write_json({"job": "atop", "budget_s": budget_s, "variants": recipes,
                            "elapsed_s": round(time.monotonic() - t0, 1)}, recipe_path)
        del trainer
    print(f"[job] done in {time.monotonic() - t0:.1f}s", flush=True)
    for name, r in recipes.items():
        m = r["metrics"].get(f"with_classifier_{r['config']['rt']}", r["metrics"])
        print(f"[job] {name:14s} steps {r['steps']:5d}  clean {m.get('acc_clean', '-')}  "
              f"fgsm-transfer {m.get('acc_fgsm_transfer', '-')}  recon_l1 {m.get('recon_l1', '-')}", flush=True)
    if classifier_error:
        raise BenchError(f"fine-tuning skipped: {classifier_error}")
    return out


def _cli(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmark.train.atop")
    sub = ap.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("job", help="the whole GPU job (all variants)")
    j.add_argument("--out", required=True)
    j.add_argument("--data", default=None)
    j.add_argument("--device", default="cuda")
    j.add_argument("--budget", type=float, default=400.0, help="seconds for all training phases")
    j.add_argument("--variants", default=None, help="comma-separated subset")
    j.add_argument("--set", action="append", default=[], help="override KEY=YAMLVALUE for every variant")
    t = sub.add_parser("train", help="one config (same as `bench train atop`)")
    t.add_argument("config")
    t.add_argument("--out", default=None)
    t.add_argument("--data", default=None)
    t.add_argument("--device", default="cpu")
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--set", action="append", default=[])
    a = ap.parse_args(argv)
    import yaml

    ov = {}
    for s in a.set:
        k, _, v = s.partition("=")
        ov[k] = yaml.safe_load(v)
    try:
        if a.cmd == "job":
            run_job(a.out, data_root=a.data, device=a.device, budget_s=a.budget, overrides=ov,
                    variants=a.variants.split(",") if a.variants else None)
        else:
            main(a.config, device=a.device, out_dir=a.out, data_root=a.data, resume=not a.no_resume, overrides=ov)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    _cli()
