"""`bench train ddpm`: a CIFAR-10 DDPM (epsilon prediction, linear betas 1e-4..2e-2, T = 1000).

The UNet is :class:`defenses.unet.UNet`, sized for exact-gradient attacks on a CPU (see its
docstring). The same command trains on a CPU (smoke settings) and on a GPU: the training set is
decoded once into a uint8 tensor on the device, batches are gathered and flipped there (no
DataLoader), the forward pass runs under bf16 autocast on CUDA, and an EMA of the weights is
what gets shipped. Timesteps can be concentrated on the low noise levels purification uses
(``t_max``/``t_full_frac``; the recipe record says so). A wall-clock ``time_limit_s`` saves a
checkpoint and stops; the same command resumes exactly (position inside the epoch and both
random generators are in the checkpoint).

Outputs in ``out_dir``: ``weights.safetensors`` (EMA weights; UNet config and schedule in its
metadata), ``recipe.json`` (config, seed, data fingerprint, git commit, versions, hardware,
wall time, per-epoch log, sanity metrics), ``train.log``, and the resume file ``checkpoint.pt``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.build import resolve_device
from benchmark.config import config_hash, from_dict, read_yaml, to_dict
from benchmark.errors import BenchError
from benchmark.provenance import git_commit, hardware, library_versions
from benchmark.results import atomic_torch_save, atomic_write_text
from defenses.diffusion import Schedule, q_sample
from defenses.unet import UNet, UNetConfig, count_params
from benchmark.data.folder import load_image_folder
from benchmark.resources import cache_dir
from defenses.classifiers import load_checkpoint_classifier
from defenses.base import Noise
from defenses.diffpure import DiffusionPurifier
from defenses.weights import save_safetensors

# Keys that only steer one session (how long, what to measure); changing them keeps a resume valid.
RUN_CONTROL_KEYS = ("time_limit_s", "epochs", "eval_images", "eval_steps", "eval_t_star", "log_every", "classifier_run")


@dataclass
class DDPMTrainConfig:
    dataset: str = "cifar10"
    data_dir: str = "cifar10-jpeg"  # under data_root: <data_dir>/{train,test}/<class>/*.jpg
    unet: UNetConfig = field(default_factory=UNetConfig)
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    t_max: int = 300  # most timesteps are drawn from [0, t_max): the levels purification uses
    t_full_frac: float = 0.1  # the rest uniformly from [0, T)
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 500
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9995
    epochs: int = 100
    time_limit_s: float = 0.0  # 0 = no limit; else save and stop after this many seconds of training
    amp: bool = True  # bf16 autocast on CUDA
    amp_cpu: bool = False  # and on CPU (fast only where the CPU has bf16 instructions, e.g. avx512_bf16)
    hflip: bool = True
    n_train: int = 0  # 0 = whole training split; else a fixed evenly spread subset (smoke tests)
    seed: int = 0
    log_every: int = 0  # steps between log lines inside an epoch (0 = epoch lines only)
    eval_images: int = 256  # sanity metric: purify this many test images ...
    eval_t_star: float = 0.1  # ... diffused to this t* ...
    eval_steps: int = 10  # ... with this many DDPM steps
    classifier_run: str = ""  # run folder of a classifier (weights.safetensors + recipe.json); "" = $CLASSIFIER_RUN

    def validate(self) -> None:
        if self.dataset != "cifar10":
            raise ValueError("only dataset cifar10 is supported")
        if not 0 < self.t_max <= self.T:
            raise ValueError(f"t_max must be in 1..T={self.T}")
        if not 0.0 <= self.t_full_frac <= 1.0:
            raise ValueError("t_full_frac must be in [0, 1]")
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0:
            raise ValueError("batch_size, epochs and lr must be positive")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1)")
        self.unet.validate()


# --- shared helpers (also used by benchmark.train.addt) -----------------------------------
def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"unet.ch": 16}`` -> raw["unet"]["ch"] = 16 (dotted keys reach nested sections)."""
    out = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise BenchError(f"override {key!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def load_train_config(config_path: str | Path, cls: type, overrides: dict[str, Any] | None) -> Any:
    raw = read_yaml(config_path) or {}
    if not isinstance(raw, dict):
        raise BenchError(f"{config_path}: expected a mapping")
    return from_dict(cls, apply_overrides(raw, overrides or {}), where=str(config_path))


def resume_hash(cfg: Any) -> str:
    d = to_dict(cfg)
    for k in RUN_CONTROL_KEYS:
        d.pop(k, None)
    return config_hash(d)


def data_fingerprint(data_root: Path, data_dir: str) -> dict[str, Any]:
    """sha256 of the data archive when it sits beside the folder, and of the file list (names + sizes)."""
    folder = data_root / data_dir
    out: dict[str, Any] = {"folder": str(folder)}
    for cand in (data_root / f"{data_dir}.tar.gz", data_root.parent / f"{data_dir}.tar.gz"):
        if cand.is_file():
            from defenses.weights import sha256_file

            out["archive"], out["archive_sha256"] = str(cand), sha256_file(cand)
            break
    h = hashlib.sha256()
    for split in ("train", "test"):
        base = folder / split
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                if p.is_file():
                    h.update(f"{p.relative_to(folder)}:{p.stat().st_size}\n".encode())
    out["file_list_sha256"] = h.hexdigest()
    return out


def resolve_data_root(data_root: str | None) -> Path:
    for cand in (data_root, os.environ.get("DATA"), "data", "/work/data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    raise BenchError("no training data: pass --data-root <folder holding cifar10-jpeg/{train,test}> (or set $DATA)")


def load_split(data_root: Path, data_dir: str, split: str, n: int = 0) -> tuple[Tensor, Tensor]:
    """uint8 (N,3,32,32) images and labels of a split; ``n`` > 0 keeps n evenly spread images."""
    data = load_image_folder(data_root / data_dir, split, cache_dir=cache_dir() / "data")
    images, labels = data.images, data.labels
    if n and n < len(labels):
        idx = torch.arange(n) * len(labels) // n
        images, labels = images[idx], labels[idx]
    return images, labels


class Logger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ep = [p for p in ema.parameters()]
    mp = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ep, mp, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def sample_t(n: int, T: int, t_max: int, t_full_frac: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """Timesteps: a fraction t_full_frac uniform over [0, T), the rest over [0, t_max)."""
    full = torch.randint(0, T, (n,), generator=generator, device=device)
    low = torch.randint(0, t_max, (n,), generator=generator, device=device)
    pick = torch.rand(n, generator=generator, device=device) < t_full_frac
    return torch.where(pick, full, low)


def t_uniform(T: int, t_max: int, t_full_frac: float) -> bool:
    """Whether :func:`sample_t` draws every timestep uniformly over [0, T) (as ADDT's reference)."""
    return t_max >= T or t_full_frac >= 1.0


def to_model_range(x_uint8: Tensor, hflip: bool, generator: torch.Generator) -> Tensor:
    x = x_uint8.float() / 127.5 - 1.0
    if hflip:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def load_classifier_run(path: str | Path, device: torch.device) -> nn.Module:
    """The zoo helper's classifier from a training run folder (weights.safetensors + recipe.json)."""
    p = Path(path)
    rec_path = p / "recipe.json"
    if not rec_path.is_file():
        raise BenchError(f"classifier run {p} has no recipe.json")
    rec = json.loads(rec_path.read_text())
    conf = rec.get("config", {})
    model_cfg = conf.get("model") if isinstance(conf.get("model"), dict) else {}
    arch = model_cfg.get("arch") or rec.get("arch") or conf.get("arch")
    dataset = rec.get("dataset") or conf.get("dataset") or "cifar10"
    if not arch:
        raise BenchError(f"{rec_path} names no architecture (config.model.arch)")
    model = load_checkpoint_classifier(p / "weights.safetensors", arch, dataset=dataset,
                                       num_classes=model_cfg.get("num_classes"), **(model_cfg.get("kwargs") or {}))
    model = model.to(device).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return model


@torch.no_grad()
def sanity_metrics(
    unet: nn.Module, schedule: Schedule, images: Tensor, labels: Tensor, *, t_star: float, steps: int,
    device: torch.device, classifier: nn.Module | None, seed: int, batch: int = 256,
) -> dict[str, Any]:
    """Purify clean test images (DDPM, t*, steps): PSNR to the clean image, and the classifier's
    accuracy on clean and purified images when a classifier is given."""
    pur = DiffusionPurifier(unet, schedule, t_star=t_star, steps=steps, sampler="ddpm", use_checkpoint=False)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    psnrs, correct_clean, correct_pur = [], 0, 0
    was_training = unet.training
    unet.eval()
    for i in range(0, len(labels), batch):
        x = images[i:i + batch].to(device).float() / 255.0
        y = labels[i:i + batch].to(device)
        noise = Noise(x.shape[0], pur.sample_noise(x, g))
        xp = pur(x, noise).float()
        mse = (xp - x).pow(2).flatten(1).mean(1).clamp_min(1e-12)
        psnrs.append(10 * torch.log10(1.0 / mse))
        if classifier is not None:
            correct_clean += int((classifier(x).argmax(1) == y).sum())
            correct_pur += int((classifier(xp).argmax(1) == y).sum())
    unet.train(was_training)
    out: dict[str, Any] = {"images": int(len(labels)), "t_star": t_star, "steps": steps, "sampler": "ddpm",
                           "psnr_purified_vs_clean_db": round(float(torch.cat(psnrs).mean()), 3)}
    if classifier is not None:
        out["classifier_acc_clean"] = correct_clean / len(labels)
        out["classifier_acc_purified"] = correct_pur / len(labels)
    return out


def eval_subset(n: int, total: int) -> Tensor:
    """n evenly spread indices of a class-sorted split (all classes represented)."""
    n = min(n, total)
    return torch.arange(n) * total // n


def optional_classifier(cfg_value: str, device: torch.device, log: Callable[[str], None]) -> tuple[nn.Module | None, str]:
    path = cfg_value or os.environ.get("CLASSIFIER_RUN", "")
    if not path:
        return None, ""
    try:
        return load_classifier_run(path, device), path
    except Exception as e:  # the sanity metric must not lose a finished training run
        log(f"classifier {path} not loaded for the sanity metric: {type(e).__name__}: {e}")
        return None, path


def run_loop(
    cfg: Any, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
    perm_gen: torch.Generator, n: int, bs: int, loss_fn: Callable[[Tensor], Tensor], save_ckpt: Callable[[], None],
    log: Callable[[str], None], dev: torch.device,
) -> bool:
    """Epochs of shuffled batches with warmup, clipping, EMA, a checkpoint per epoch and at the deadline.
    Returns True when the wall-clock limit stopped it. ``state`` is updated in place."""
    from benchmark.progress import format_seconds

    steps_per_epoch = n // bs
    t0 = time.time()
    step0 = state["step"]  # the rate (for the eta) counts this invocation's steps only
    elapsed0 = float(state["elapsed"])
    stopped_by_deadline = False
    model.train()
    while state["epoch"] < cfg.epochs and not stopped_by_deadline:
        perm_gen.set_state(state["perm_state"])
        perm = torch.randperm(n, generator=perm_gen, device=dev)
        loss_sum = torch.zeros((), device=dev)
        loss_n = 0
        t_epoch = time.time()
        b0 = int(state["batch"])
        for b in range(b0, steps_per_epoch):
            loss = loss_fn(perm[b * bs:(b + 1) * bs])
            lr = cfg.lr * min(1.0, (state["step"] + 1) / max(1, cfg.warmup_steps))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            state["step"] += 1
            ema_update(ema, model, min(cfg.ema_decay, (1 + state["step"]) / (10 + state["step"])))
            loss_sum += loss.detach()
            loss_n += 1
            state["batch"] = b + 1
            if cfg.log_every and state["step"] % cfg.log_every == 0:
                log(f"epoch {state['epoch'] + 1} step {state['step']} loss {loss.item():.4f} lr {lr:.2e}")
            if cfg.time_limit_s and time.time() - t0 >= cfg.time_limit_s:
                stopped_by_deadline = True
                break
        dt = time.time() - t_epoch
        mean_loss = float(loss_sum) / max(1, loss_n)
        finished_epoch = state["batch"] >= steps_per_epoch
        state["elapsed"] = elapsed0 + time.time() - t0
        entry = {"epoch": state["epoch"] + 1, "complete": finished_epoch, "batches": loss_n, "loss": round(mean_loss, 5),
                 "step": state["step"], "images_per_s": round(loss_n * bs / max(dt, 1e-9), 1),
                 "elapsed_s": round(state["elapsed"], 1)}
        state["log"] = [*state["log"], entry]
        steps_left = cfg.epochs * steps_per_epoch - state["step"]
        eta = (time.time() - t0) / max(1, state["step"] - step0) * steps_left if state["step"] > step0 else None
        log(f"epoch {entry['epoch']}{'' if finished_epoch else ' (partial)'}/{cfg.epochs}: loss {mean_loss:.4f}, "
            f"{entry['images_per_s']:.0f} img/s, step {state['step']}, {state['elapsed']:.0f}s"
            f", eta {format_seconds(eta) if eta is not None else '?'}")
        if finished_epoch:
            state["epoch"] += 1
            state["batch"] = 0
            state["perm_state"] = perm_gen.get_state()  # the generator after this epoch's randperm
        save_ckpt()
    if stopped_by_deadline:
        log(f"time limit {cfg.time_limit_s:.0f}s reached: checkpoint saved, the same command resumes")
    return stopped_by_deadline


def load_train_eval(root: Path, cfg: Any, dev: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training images (on ``dev``) and labels, and the sanity-metric test subset (``cfg.eval_images``)."""
    train_x, train_y = load_split(root, cfg.data_dir, "train", cfg.n_train)
    test_x, test_y = load_split(root, cfg.data_dir, "test")
    sel = eval_subset(cfg.eval_images, len(test_y))
    return train_x.to(dev), train_y, test_x[sel], test_y[sel]


def start_run(kind: str, config_path: str, device: str, out_dir: str | None, data_root: str | None, *,
              tf32: bool) -> tuple[torch.device, Path, Logger, Path]:
    """Device (a BenchError when CUDA is asked for and absent), output folder (default
    runs/<kind>/<config stem>), its train.log and the data root; cuDNN autotuning (and TF32) on CUDA."""
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir else Path("runs") / kind / Path(config_path).stem
    out.mkdir(parents=True, exist_ok=True)
    log = Logger(out / "train.log")
    root = resolve_data_root(data_root)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    return dev, out, log, root


def start_training(
    cfg: Any, model: nn.Module, dev: torch.device, out: Path, *, resume: bool, seed_offset: int,
    log: Callable[[str], None],
) -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator, torch.Generator, dict[str, Any], Callable[[], None]]:
    """EMA copy, AdamW, the shuffling and noise generators (seeded ``cfg.seed * 1000 + seed_offset``
    and ``+ 1``) and the loop state, restored from ``out/checkpoint.pt`` when it holds a run of the
    same config. Returns them with ``save_ckpt()``, which writes that checkpoint atomically."""
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=dev.type == "cuda")
    perm_gen = torch.Generator(device=dev)
    perm_gen.manual_seed(cfg.seed * 1000 + seed_offset)
    gen = torch.Generator(device=dev)
    gen.manual_seed(cfg.seed * 1000 + seed_offset + 1)
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "elapsed": 0.0, "log": [],
                             "perm_state": perm_gen.get_state()}
    ckpt = out / "checkpoint.pt"
    rhash = resume_hash(cfg)
    if resume and ckpt.is_file():
        c = torch.load(ckpt, map_location="cpu", weights_only=True)
        if c.get("config_hash") != rhash:
            raise BenchError(f"{ckpt} was written with a different config; use another --out or --no-resume")
        model.load_state_dict(c["model"])
        ema.load_state_dict(c["ema"])
        opt.load_state_dict(c["opt"])
        gen.set_state(c["gen"])
        state.update({k: c[k] for k in ("epoch", "batch", "step", "elapsed", "log", "perm_state")})
        log(f"resumed from {ckpt}: epoch {state['epoch']}, batch {state['batch']}, step {state['step']}")

    def save_ckpt() -> None:
        atomic_torch_save({
            "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
            "config_hash": rhash, **state,
        }, ckpt)

    return ema, opt, perm_gen, gen, state, save_ckpt


# --- training ----------------------------------------------------------------------------
def main(
    config_path: str,
    *,
    device: str = "cpu",
    out_dir: str | None = None,
    data_root: str | None = None,
    resume: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Train (or resume) a DDPM and write weights.safetensors + recipe.json into the output folder."""
    cfg: DDPMTrainConfig = load_train_config(config_path, DDPMTrainConfig, overrides)
    dev, out, log, root = start_run("ddpm", config_path, device, out_dir, data_root, tf32=True)

    t_load = time.time()
    train_x, _, test_x, test_y = load_train_eval(root, cfg, dev)
    log(f"data: {len(train_x)} training images from {root / cfg.data_dir} on {dev} ({time.time() - t_load:.1f}s)")

    schedule = Schedule(cfg.T, cfg.beta_start, cfg.beta_end)
    alpha_bar = schedule.alpha_bar.to(dev)
    with torch.random.fork_rng(devices=[]):  # seeded parameter init that leaves the global RNG alone
        torch.manual_seed(cfg.seed)
        model = UNet(cfg.unet)
    model = model.to(dev)
    ema, opt, perm_gen, gen, state, save_ckpt = start_training(cfg, model, dev, out, resume=resume, seed_offset=1,
                                                               log=log)
    n = len(train_x)
    bs = min(cfg.batch_size, n)
    n_params = count_params(model)
    log(f"UNet {n_params / 1e6:.3f}M parameters; batch {bs}, {n // bs} steps/epoch, epochs {cfg.epochs}, "
        f"t ~ {cfg.t_full_frac:g} U[0,{cfg.T}) + {1 - cfg.t_full_frac:g} U[0,{cfg.t_max})")

    use_amp = cfg.amp and (dev.type == "cuda" or cfg.amp_cpu)

    def loss_fn(idx: Tensor) -> Tensor:
        x0 = to_model_range(train_x[idx], cfg.hflip, gen)
        t = sample_t(len(idx), cfg.T, cfg.t_max, cfg.t_full_frac, gen, dev)
        eps = torch.randn(x0.shape, generator=gen, device=dev)
        xt = q_sample(x0, t, eps, alpha_bar)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = model(xt, t)
        return F.mse_loss(pred.float(), eps)

    stopped_by_deadline = run_loop(cfg, model, ema, opt, state, perm_gen, n, bs, loss_fn, save_ckpt, log, dev)

    return finish(cfg, out, ema, cfg.unet, schedule, test_x, test_y, dev, state, n_params, root, stopped_by_deadline,
                  log, kind="ddpm", extra={"config_path": str(config_path)})


def finish(
    cfg: Any, out: Path, ema: nn.Module, unet_config: UNetConfig, schedule: Schedule, test_x: Tensor, test_y: Tensor, dev: torch.device,
    state: dict[str, Any], n_params: int, root: Path, stopped: bool, log: Callable[[str], None], *, kind: str,
    extra: dict[str, Any], classifier: nn.Module | None = None, classifier_path: str = "",
) -> Path:
    """Write EMA weights (UNet config + schedule in the metadata), sanity metrics and the recipe record."""
    if classifier is None:
        classifier, classifier_path = optional_classifier(getattr(cfg, "classifier_run", ""), dev, log)
    clf_path = classifier_path
    t = time.time()
    metrics = sanity_metrics(ema, schedule, test_x, test_y, t_star=cfg.eval_t_star, steps=cfg.eval_steps,
                             device=dev, classifier=classifier, seed=cfg.seed)
    metrics["eval_seconds"] = round(time.time() - t, 2)
    log(f"sanity: {metrics}")
    unet_cfg = json.dumps(unet_config.to_dict())
    sched = json.dumps(schedule.to_dict())
    sha = save_safetensors({k: v.float() for k, v in ema.state_dict().items()}, out / "weights.safetensors",
                           metadata={"unet": unet_cfg, "schedule": sched, "kind": kind, "weights": "ema"})
    cfg_dict = to_dict(cfg)
    recipe = {
        "kind": kind,
        "config": cfg_dict,
        "config_sha256": config_hash(cfg_dict),
        "seed": cfg.seed,
        "schedule": schedule.to_dict(),
        "unet": unet_config.to_dict(),
        "unet_params": n_params,
        "weights": {"file": "weights.safetensors", "sha256": sha, "ema_decay": cfg.ema_decay,
                    "bytes": (out / "weights.safetensors").stat().st_size},
        "timestep_sampling": (f"uniform over [0, {schedule.T})" if t_uniform(schedule.T, cfg.t_max, cfg.t_full_frac) else
                              f"{cfg.t_full_frac:g} of the batches' timesteps uniform over [0, {schedule.T}), the rest uniform over "
                              f"[0, {cfg.t_max}): training concentrates on the noise levels purification uses "
                              f"(t* = 0.1 is index 99); the model is not meant for sampling from pure noise"),
        "data": data_fingerprint(root, cfg.data_dir),
        "git_commit": git_commit(),
        "versions": library_versions(),
        "hardware": hardware(dev),
        "wall_time_s": round(float(state["elapsed"]), 1),
        "steps": state["step"],
        "epochs_completed": state["epoch"],
        "completed": state["epoch"] >= cfg.epochs,
        "stopped_by_time_limit": stopped,
        "log": state["log"],
        "first_epoch_loss": state["log"][0]["loss"] if state["log"] else None,
        "final_metrics": metrics,
        "classifier_run": clf_path,
        **extra,
    }
    atomic_write_text(out / "recipe.json", json.dumps(recipe, indent=1))
    log(f"wrote {out / 'weights.safetensors'} (sha256 {sha[:16]}...) and recipe.json")
    return out
