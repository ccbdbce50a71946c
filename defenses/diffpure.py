"""DiffPure and ADDT: diffusion-based purification with explicit, replayable noise.

Purification (Nie et al. 2022, DiffPure; Liu et al., "Understanding and Enhancing the
Robustness of Diffusion-Based Purification", NeurIPS 2024 submission 1523, i.e. ADDT):
diffuse the image to t* with forward noise ``eps_f``, then denoise with DDPM ancestral steps
(each with its own noise ``eps_t``) or deterministic DDIM steps. The noise parts are named as
in the ADDT rebuttal's DW-box definition (x_t = F(x, eps_f); x'_{t-1} = R_s(x_t, t, eps_t)):

- ``forward``: eps_f, shape (N, C, H, W);
- ``reverse``: eps_t of every denoising step, shape (N, steps, C, H, W) (DDPM only; the last
  step has zero variance and ignores its slice).

so the attack suite's ``fixed:forward`` / ``fixed:reverse`` / ``fixed:all`` policies are the
rebuttal's DW_Fwd / DW_Rev / DW_Both. Gradients are exact through every step: each UNet call
is wrapped in ``torch.utils.checkpoint`` (``use_reentrant=False``), the gradient checkpointing
the ADDT authors use for exact-gradient evaluation, so memory does not grow with the steps.

``defense.surrogate(steps=K)`` is Lee & Kim's ("Robust evaluation of diffusion-based
adversarial purification", ICCV 2023) attack-side surrogate: the same weights purifying with K
strided steps; ``surrogate.derive_noise(full_noise)`` maps the defense's noise onto it (see
:func:`defenses.diffusion.surrogate_noise_weights`).

Registered defenses (CIFAR-10, on the zoo's ``cifar10_standard`` classifier): ``diffpure``
(DDPM reverse), ``diffpure_ddim`` (DDIM reverse) and ``addt`` (DDPM reverse with the
ADDT-fine-tuned UNet). Options: ``t_star`` (fraction of T, default 0.1), ``steps`` (denoising
steps, default all n = t* T as in DiffPure, fewer = evenly strided), ``sampler``, ``weights``
(shipped name, run folder, or diffusers folder; ``checkpoint`` is an alias), ``classifier``,
``clip_denoised``, ``grad_checkpoint``, ``variance`` (``fixed_small``, the posterior's, default; ``fixed_large``:
beta, ADDT's ``--fix_type large``). ADDT's DDPM evaluation (``Robustness_test/main_code/ddpm_attack_eval_*.py``:
diffusers' DDPMScheduler(variance_type="fixed_large"), ``set_timesteps(1000)``, denoise strength 0.1, i.e.
add_noise at timestep 100 and the 101 steps 100..0) is ``t_star=0.101 variance=fixed_large``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.commands import train_command
from benchmark.errors import BenchError, first_line
from benchmark.registry import register_defense

from .base import Defense, Noise, Stage, randn
from .diffusion import Schedule, n_levels, reverse, step_coefs, surrogate_noise_weights, timesteps
from .unet import UNet, UNetConfig
from .weights import load_state_dict, sha256_file
from benchmark.registry import CLASSIFIERS, load_builtins

DDPM_WEIGHTS = "ddpm_cifar10"
ADDT_WEIGHTS = "addt_cifar10"
TRAIN_COMMAND = {
    DDPM_WEIGHTS: train_command("ddpm", "configs/train/ddpm_cifar10.yaml"),
    ADDT_WEIGHTS: train_command("addt", "configs/train/addt_cifar10.yaml"),
}


# --- loading -----------------------------------------------------------------------------
def unet_from_state(state: dict[str, Tensor], unet_config: dict[str, Any]) -> UNet:
    model = UNet(UNetConfig.from_dict(unet_config))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BenchError(f"UNet weights do not match the UNet config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def _meta(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise BenchError(f"corrupt safetensors file {path}: {first_line(e)}") from None


def _recipe_unet(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(UNet config, schedule) from a weights folder's ``recipe.json``, checked: a run folder is
    the user's, its files may be edited or truncated."""
    from benchmark.safe_io import read_text

    path = root / "recipe.json"
    try:
        rec = json.loads(read_text(path, "recipe"))
    except json.JSONDecodeError as e:
        raise BenchError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    unet = rec.get("unet") or (rec.get("config") or {}).get("unet") if isinstance(rec, dict) else None
    if not isinstance(unet, dict):
        raise BenchError(f"{path} names no UNet config (expected a mapping with 'unet' or 'config.unet')")
    sched = rec.get("schedule") or {}
    if not isinstance(sched, dict):
        raise BenchError(f"{path}: 'schedule' must be a mapping, got {type(sched).__name__}")
    return unet, sched


def load_unet_folder(folder: str | Path) -> tuple[nn.Module, Schedule, dict[str, Any]]:
    """A UNet + schedule from a local folder: our run dir (``weights.safetensors`` whose metadata or
    ``recipe.json`` holds the UNet config) or a diffusers DDPM folder (``unet/config.json``)."""
    root = Path(folder)
    if (root / "unet" / "config.json").is_file() or (root / "config.json").is_file() and not (root / "weights.safetensors").is_file():
        from .unet import load_diffusers_unet

        model, sched = load_diffusers_unet(root)
        if sched.get("beta_schedule", "linear") != "linear" or sched.get("trained_betas"):
            raise BenchError(f"{root}: only the linear beta schedule is supported, got {sched.get('beta_schedule')}")
        schedule = Schedule(
            T=int(sched.get("num_train_timesteps", 1000)),
            beta_start=float(sched.get("beta_start", 1e-4)),
            beta_end=float(sched.get("beta_end", 2e-2)),
        )
        return model, schedule, {"source": str(root), "format": "diffusers", "scheduler": sched}
    wfile = root / "weights.safetensors"
    if not wfile.is_file():
        raise BenchError(f"{root} holds neither weights.safetensors (a `bench train ddpm/addt` run) nor a diffusers unet/config.json")
    meta = _meta(wfile)
    if "unet" in meta:
        try:
            unet_cfg, sched_cfg = json.loads(meta["unet"]), json.loads(meta.get("schedule", "{}"))
        except json.JSONDecodeError as e:
            raise BenchError(f"{wfile}: its 'unet'/'schedule' metadata is not valid JSON ({e.msg})") from None
    elif (root / "recipe.json").exists():
        unet_cfg, sched_cfg = _recipe_unet(root)
    else:
        raise BenchError(f"{wfile} carries no UNet config (no metadata, no recipe.json beside it)")
    try:
        model = unet_from_state(load_state_dict(wfile), unet_cfg)
        schedule = Schedule(**{k: sched_cfg[k] for k in ("T", "beta_start", "beta_end") if k in sched_cfg})
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:  # a config that builds no UNet
        raise BenchError(f"{root}: the UNet config or schedule does not build a model "
                         f"({type(e).__name__}: {first_line(e)})") from None
    return model, schedule, {"source": str(root), "format": "purifybench", "sha256": sha256_file(wfile)}


def load_shipped_unet(name: str) -> tuple[nn.Module, Schedule, dict[str, Any]]:
    """Shipped weights by manifest name; missing ones raise a BenchError naming the training command."""
    from .weights import WEIGHTS_DIR, load_shipped, manifest  # at call time: WEIGHTS_DIR may be swapped (tests)

    entries = manifest()
    if name not in entries:
        cmd = TRAIN_COMMAND.get(name, TRAIN_COMMAND[DDPM_WEIGHTS])
        raise BenchError(
            f"diffusion weights {name!r} are not shipped in this copy; train them with `{cmd}` and pass "
            f"weights=<its output folder> (or weights=<a local diffusers DDPM folder, e.g. google/ddpm-cifar10-32>)"
        )
    state = load_shipped(name)
    path = WEIGHTS_DIR / entries[name]["file"]
    meta = _meta(path) if path.suffix == ".safetensors" else {}
    unet_cfg = json.loads(meta["unet"]) if "unet" in meta else entries[name].get("unet")
    if unet_cfg is None:
        raise BenchError(f"shipped weights {name!r} carry no UNet config (metadata 'unet' or manifest key 'unet')")
    sched_cfg = json.loads(meta["schedule"]) if "schedule" in meta else entries[name].get("schedule", {})
    schedule = Schedule(**{k: sched_cfg[k] for k in ("T", "beta_start", "beta_end") if k in sched_cfg})
    return unet_from_state(state, unet_cfg), schedule, {"source": f"shipped:{name}", "sha256": entries[name]["sha256"]}


def load_unet(weights: str | Path) -> tuple[nn.Module, Schedule, dict[str, Any]]:
    """A manifest name or a local folder."""
    p = Path(weights)
    if p.is_dir():
        return load_unet_folder(p)
    if isinstance(weights, str) and "/" not in weights and not p.suffix:
        return load_shipped_unet(weights)
    raise BenchError(f"weights {str(weights)!r} is neither a shipped name nor a folder")


# --- purifier ----------------------------------------------------------------------------
class DiffusionPurifier(Stage):
    """[0,1] images -> diffuse to t* -> K reverse steps -> [0,1] images."""

    def __init__(
        self,
        unet: nn.Module,
        schedule: Schedule,
        *,
        t_star: float = 0.1,
        steps: int | None = None,
        sampler: str = "ddpm",
        clip_denoised: bool = True,
        use_checkpoint: bool = True,
        variance: str = "fixed_small",
    ) -> None:
        super().__init__()
        if variance not in ("fixed_small", "fixed_large"):
            raise BenchError(f"variance must be fixed_small (the posterior's, DiffPure) or fixed_large (beta, ADDT's eval), got {variance!r}")
        if sampler not in ("ddpm", "ddim"):
            raise BenchError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if not 0.0 < float(t_star) <= 1.0:
            raise BenchError(f"t_star must be in (0, 1] (a fraction of T={schedule.T}), got {t_star}")
        self.unet = unet
        self.schedule = schedule
        self.t_star = float(t_star)
        self.n = n_levels(self.t_star, schedule.T)
        steps = self.n if steps is None else int(steps)
        if not 1 <= steps <= self.n:
            raise BenchError(f"steps must be in 1..{self.n} (t_star={t_star} gives {self.n} noise levels), got {steps}")
        self.steps = steps
        self.sampler = sampler
        self.clip_denoised = clip_denoised
        self.use_checkpoint = use_checkpoint
        self.ts = timesteps(self.n, steps)
        self.variance = variance
        self.coefs = step_coefs(schedule, self.ts, variance)
        self.noise_names = ("forward", "reverse") if sampler == "ddpm" else ("forward",)

    def sample_noise(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        parts = {"forward": randn(x.shape, generator, x)}
        if self.sampler == "ddpm":
            parts["reverse"] = randn((x.shape[0], self.steps, *x.shape[1:]), generator, x)
        return parts

    def diffuse(self, x: Tensor, eps_f: Tensor) -> Tensor:
        """x in [0,1] -> x_{t*} in the model's [-1,1] space (forward marginal at index n-1)."""
        ab = self.schedule.abar(self.n - 1)
        return ab**0.5 * (2.0 * x - 1.0) + (1.0 - ab) ** 0.5 * eps_f

    def forward(self, x: Tensor, noise: Noise) -> Tensor:
        xt = self.diffuse(x, noise["forward"])
        z = noise["reverse"] if self.sampler == "ddpm" else None
        x0 = reverse(self.unet, xt, self.coefs, self.sampler, z, clip_denoised=self.clip_denoised, use_checkpoint=self.use_checkpoint)  # type: ignore[arg-type]
        return ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)

    def with_steps(self, steps: int) -> "DiffusionPurifier":
        """The same purifier (shared UNet) with ``steps`` strided denoising steps."""
        return DiffusionPurifier(
            self.unet, self.schedule, t_star=self.t_star, steps=steps, sampler=self.sampler,
            clip_denoised=self.clip_denoised, use_checkpoint=self.use_checkpoint, variance=self.variance,
        )

    def extra_repr(self) -> str:
        return f"t_star={self.t_star}, n={self.n}, steps={self.steps}, sampler={self.sampler}"


class DiffPureDefense(Defense):
    """A Defense whose purifier is a :class:`DiffusionPurifier`, with Lee & Kim's surrogate."""

    purifier: DiffusionPurifier

    def surrogate(self, steps: int) -> "DiffPureDefense":
        """An attack-side surrogate sharing weights and classifier, purifying with ``steps`` strided steps.

        Use ``surrogate.derive_noise(noise)`` to turn this defense's noise into the surrogate's: the
        forward noise is shared; each surrogate reverse step gets the normalised weighted sum of the
        reverse noises of the defense steps it spans (:func:`surrogate_noise_weights`), so a DW-box
        attacker's knowledge carries over and the derived noise is still exactly N(0, 1).
        """
        child = DiffPureDefense(
            self.classifier, purifier=self.purifier.with_steps(steps), name=f"{self.name}@{steps}steps",
            info={**self.info, "steps": steps, "surrogate_of": self.name, "surrogate_parent_steps": self.purifier.steps},
        )
        child._parent_ts = list(self.purifier.ts)  # type: ignore[attr-defined]
        child.train(self.training)
        return child

    def derive_noise(self, parent_noise: Noise) -> Noise:
        """This surrogate's noise derived from its parent defense's noise (see :meth:`surrogate`)."""
        parent_ts: list[int] | None = getattr(self, "_parent_ts", None)
        if parent_ts is None:
            raise ValueError("derive_noise is for defenses made by .surrogate()")
        pur = self.purifier
        parts = {"forward": parent_noise["forward"]}
        if pur.sampler == "ddpm":
            z = parent_noise["reverse"]
            if z.shape[1] != len(parent_ts):
                raise ValueError(f"parent reverse noise has {z.shape[1]} steps, expected {len(parent_ts)}")
            groups = surrogate_noise_weights(pur.schedule, parent_ts, pur.ts, pur.variance)
            out = []
            for j, ws in enumerate(groups):
                if not ws:
                    raise ValueError(f"surrogate step {j} (t={pur.ts[j]}) spans no defense step; use fewer surrogate steps")
                norm = sum(w * w for _, w in ws) ** 0.5
                if norm == 0.0:  # zero-variance final step: its noise is unused, keep it N(0,1)
                    out.append(z[:, ws[0][0]])
                else:
                    out.append(sum(z[:, i] * (w / norm) for i, w in ws))
            parts["reverse"] = torch.stack(out, dim=1)
        return Noise(parent_noise.n, {k: parts[k] for k in self.noise_names})


# --- registry ----------------------------------------------------------------------------
# ``--scale cpu`` (benchmark.scalecut): a gradient through 100 UNet calls costs ~0.3 s per image and
# step on 2 CPU cores, so the default battery on 64 images would take hours. At the cpu scale the
# purifier denoises with 2 evenly strided steps (from the same t*) and the battery runs on 16 images
# with 5 attack steps, EOT-2 and 2 evaluation passes; every number of such a run says so.
CPU_SCALE_CUT: dict[str, Any] = {"n": 16, "steps": 5, "eot": 2, "eval_iter": 2, "autoattack_steps": 5,
                                 "defense_options": {"steps": 2}}
SCALE_CUTS: dict[str, Any] = {"cpu": CPU_SCALE_CUT, "smoke": {"n": 4, "defense_options": {"steps": 1}}}
# ``checkpoint`` is the CLI's ``--checkpoint PATH`` (a weights folder, same as ``weights``);
# ``grad_checkpoint`` switches gradient checkpointing (on by default).
_OPTIONS = ("t_star", "steps", "sampler", "weights", "checkpoint", "classifier", "clip_denoised", "grad_checkpoint",
            "variance")


def _given(unknown: dict[str, Any], **named: Any) -> dict[str, Any]:
    """The options a caller gave: named ones not left at None, and unknown ones (build refuses them)."""
    return {**{k: v for k, v in named.items() if v is not None}, **unknown}


def build(
    name: str,
    *,
    dataset: str = "cifar10",
    device: str | torch.device = "cpu",
    default_weights: str,
    default_sampler: str,
    fixed_sampler: bool,
    **cfg: Any,
) -> DiffPureDefense:
    unknown = [k for k in cfg if k not in _OPTIONS]
    if unknown:
        raise BenchError(f"{name}: unknown option {unknown[0]!r}; options: {', '.join(_OPTIONS)}")
    if dataset != "cifar10":
        raise BenchError(f"{name} is available for cifar10 only (got dataset {dataset!r})")
    sampler = str(cfg.get("sampler", default_sampler))
    if fixed_sampler and sampler != default_sampler:
        raise BenchError(f"{name} uses the {default_sampler} sampler; use the defense 'diffpure' for sampler={sampler}")
    steps = cfg.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
        raise BenchError(f"{name}: steps must be an integer, got {steps!r}")
    if cfg.get("weights") and cfg.get("checkpoint") and cfg["weights"] != cfg["checkpoint"]:
        raise BenchError(f"{name}: give weights or checkpoint, not both")
    unet, schedule, source = load_unet(cfg.get("weights") or cfg.get("checkpoint") or default_weights)
    purifier = DiffusionPurifier(
        unet, schedule, t_star=float(cfg.get("t_star", 0.1)), steps=steps, sampler=sampler,
        clip_denoised=bool(cfg.get("clip_denoised", True)), use_checkpoint=bool(cfg.get("grad_checkpoint", True)),
        variance=str(cfg.get("variance", "fixed_small")),
    )
    load_builtins()
    classifier = CLASSIFIERS.create(str(cfg.get("classifier", "cifar10_standard")), device=device)
    info = {
        "t_star": purifier.t_star, "noise_levels": purifier.n, "steps": purifier.steps, "sampler": sampler,
        "timesteps": purifier.ts, "weights": source, "classifier": str(cfg.get("classifier", "cifar10_standard")),
        "schedule": schedule.to_dict(),
    }
    if purifier.variance != "fixed_small":  # recorded only when set, so stored records of the default stay as they were
        info["variance"] = purifier.variance
    d = DiffPureDefense(classifier, purifier=purifier, name=name, info=info)
    return d.to(device).freeze()


@register_defense("diffpure", datasets=("cifar10",), stochastic=True, scale_cuts=SCALE_CUTS,
                  summary="DiffPure: diffuse to t*, DDPM ancestral reverse (noise: forward, reverse)")
def make_diffpure(*, dataset: str = "cifar10", device: str | torch.device = "cpu", t_star: float | None = None,
                 steps: int | None = None, sampler: str | None = None, weights: str | None = None,
                 checkpoint: str | None = None, classifier: str | None = None, clip_denoised: bool | None = None,
                 grad_checkpoint: bool | None = None, variance: str | None = None, **unknown: Any) -> Defense:
    """DiffPure with our CIFAR-10 DDPM and DDPM (or, with sampler=ddim, DDIM) reverse steps."""
    return build("diffpure", dataset=dataset, device=device, default_weights=DDPM_WEIGHTS,
                 default_sampler="ddpm", fixed_sampler=False, **_given(unknown, t_star=t_star, steps=steps, sampler=sampler, weights=weights, checkpoint=checkpoint,
                          classifier=classifier, clip_denoised=clip_denoised, grad_checkpoint=grad_checkpoint,
                          variance=variance))


@register_defense("diffpure_ddim", datasets=("cifar10",), stochastic=True, scale_cuts=SCALE_CUTS,
                  summary="DiffPure with deterministic DDIM reverse (noise: forward only)")
def make_diffpure_ddim(*, dataset: str = "cifar10", device: str | torch.device = "cpu", t_star: float | None = None,
                 steps: int | None = None, sampler: str | None = None, weights: str | None = None,
                 checkpoint: str | None = None, classifier: str | None = None, clip_denoised: bool | None = None,
                 grad_checkpoint: bool | None = None, variance: str | None = None, **unknown: Any) -> Defense:
    """DiffPure with DDIM reverse steps: the only randomness is the forward noise."""
    return build("diffpure_ddim", dataset=dataset, device=device, default_weights=DDPM_WEIGHTS,
                 default_sampler="ddim", fixed_sampler=True, **_given(unknown, t_star=t_star, steps=steps, sampler=sampler, weights=weights, checkpoint=checkpoint,
                          classifier=classifier, clip_denoised=clip_denoised, grad_checkpoint=grad_checkpoint,
                          variance=variance))


@register_defense("addt", datasets=("cifar10",), stochastic=True, scale_cuts=SCALE_CUTS,
                  summary="ADDT: DiffPure with the adversarially fine-tuned (ADDT+RBGM) DDPM")
def make_addt(*, dataset: str = "cifar10", device: str | torch.device = "cpu", t_star: float | None = None,
                 steps: int | None = None, sampler: str | None = None, weights: str | None = None,
                 checkpoint: str | None = None, classifier: str | None = None, clip_denoised: bool | None = None,
                 grad_checkpoint: bool | None = None, variance: str | None = None, **unknown: Any) -> Defense:
    """DiffPure purification with the ADDT-fine-tuned UNet (DDPM reverse unless sampler=ddim)."""
    return build("addt", dataset=dataset, device=device, default_weights=ADDT_WEIGHTS,
                 default_sampler="ddpm", fixed_sampler=False, **_given(unknown, t_star=t_star, steps=steps, sampler=sampler, weights=weights, checkpoint=checkpoint,
                          classifier=classifier, clip_denoised=clip_denoised, grad_checkpoint=grad_checkpoint,
                          variance=variance))
