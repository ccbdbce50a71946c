"""DiffPure on CIFAR-10 as its authors run it (score_sde DDPM++ deep, reverse VP-SDE), and ADDT's VP-SDE family.

``diffpure_sde`` is what NVlabs/DiffPure runs for its main CIFAR-10 table (``eval_sde_adv.py
--diffusion_type sde --score_type score_sde --t 100``, ``runners/diffpure_sde.py``,
``run_scripts/cifar10/run_cifar_rand_inf.sh``):

1. the [0, 1] image to [-1, 1];
2. diffuse: ``x_t = sqrt(abar[t-1]) x + sqrt(1 - abar[t-1]) eps_f`` with t = 100 (t* = 0.1) and the
   discrete ``abar = cumprod(1 - linspace(0.1/1000, 20/1000, 1000))`` (``RevGuidedDiffusion``);
3. solve the reverse VP-SDE (beta 0.1..20) with ``torchsde.sdeint_adjoint(method='euler')`` at its
   default dt = 1e-3 from s = 1 - t/1000 to s = 1 - 1e-5 (100 steps, the last one shorter), in
   s = 1 - t: ``y <- y + f h + g sqrt(h) z`` with ``f = 0.5 beta(t) y - beta(t) eps(y, 999 t) / std(t)``,
   ``g = sqrt(beta(t))``, ``std(t) = sqrt(1 - exp(-0.5 (20 - 0.1) t^2 - 0.1 t))`` (score_sde's
   ``get_score_fn`` for a continuous VP model: labels ``999 t``, score ``-eps / std``);
4. classify ``(x + 1) / 2`` (no clipping) with RobustBench's CIFAR-10 Linf ``Standard`` WRN-28-10.

Weights: the score_sde checkpoint ``checkpoint_8.pth`` of ``vp/cifar10_ddpmpp_deep_continuous`` (a
dict ``optimizer`` / ``model`` / ``ema`` / ``step``; ``model`` is the DataParallel state dict with
``module.`` keys). DiffPure's ``restore_checkpoint`` loads ``model`` with ``strict=False`` into the
unwrapped network (so the ``module.`` keys load nothing), then ``ema.copy_to(model.parameters())``:
the weights that run are ``ema['shadow_params']``, a list in ``parameters()`` order. We read that
list (``torch.load(weights_only=True)``), check its count and shapes against our parameters (whose
order is the authors', tested) and the ``model`` entry's names against our layout.

``addt_sde`` is ADDT's VP-SDE DDPM++ family (LYMDLUT/ADDT ``train_VPSDE_DDPMPP_ADDT``,
``Robustness_test/main_code/vp_attack_eval_*.py``): the same network fine-tuned, saved by its
training script as ``<output_dir>/unet/net.pth`` (a plain state dict of ``all_modules.*``, EMA
weights copied in; the eval strips ``module.``) or ``unet_ema/ema_net.pth`` (diffusers EMAModel
state: ``shadow_params`` list). Its evaluation process (``sampler=pc``): diffusers'
``ScoreSdeVpScheduler`` with ``set_timesteps(1000)`` (t = linspace(1, 1e-3, 1000)) and denoise
strength 0.1, i.e. the 101 times from index 899 (t = 0.101) down to 1e-3; forward noise with the
continuous marginal ``exp(lmc) x + sqrt(1 - exp(2 lmc)) eps_f``, ``lmc = -0.25 t^2 (b1 - b0) - 0.5 t b0``;
per time one Langevin corrector step (snr 0.16, step ``(0.16 |z| / |score|)^2 * 2 alpha[int(999 t)]``,
alpha = 1 - linspace(1e-4, 2e-2, 1000)) then one Euler-Maruyama predictor step of dt = 1/1000;
the output is the last predictor mean, ``(x + 1) / 2``. 202 network calls per purification.

Noise parts (DW-box names as for our DDPM DiffPure): ``forward`` eps_f (N, 3, 32, 32) and
``reverse`` (N, K, 3, 32, 32) for the Euler solver, (N, K, 2, 3, 32, 32) for the PC sampler
(corrector, predictor). Gradients are exact through every step, each network call wrapped in
gradient checkpointing (DiffPure uses the adjoint method; we backpropagate exactly).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.errors import BenchError
from benchmark.registry import register_defense

from .base import Defense, Noise, Stage, randn
from .diffpure_imagenet import VPSDE, euler_grid
from .diffusion import call_eps
from .ncsnpp import CIFAR10_DDPMPP_DEEP, NCSNpp, NCSNppConfig, reduced_config
from .weights import load_container, sha256_file

SCORE_SDE_FILE = "checkpoint_8.pth"
SCORE_SDE_PAGE = ("the score_sde_pytorch checkpoints folder vp/cifar10_ddpmpp_deep_continuous/checkpoints/ "
                  "(Google Drive link in github.com/yang-song/score_sde_pytorch README, 'Pretrained checkpoints'; "
                  "DiffPure's README: put it at pretrained/score_sde/checkpoint_8.pth)")
ADDT_PAGE = ("ADDT's VP-SDE fine-tuning output folder <output_dir> (LYMDLUT/ADDT train_VPSDE_DDPMPP_ADDT/ADDT.sh: "
             "ddpmpp-cifar10-100e-ADDT), holding unet/net.pth")
RB_STANDARD = "Standard.pt (RobustBench cifar10/Linf 'Standard', WRN-28-10; robustbench downloads it to models/cifar10/Linf/)"


# --------------------------------------------------------------------------- loading
def _read(path: Path) -> Any:
    return load_container(path)  # safetensors or torch.load(weights_only=True), one-line errors


def _strip(state: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("module."): v for k, v in state.items() if k.removeprefix("module.") != "sigmas"}


def ncsnpp_state(obj: Any, model: NCSNpp, *, use_ema: bool, where: str) -> tuple[dict[str, Tensor], str]:
    """The network's state dict from one of the authors' containers; returns it and the format's name.

    - score_sde / DiffPure ``{'model', 'ema': {'shadow_params': [...]}, 'optimizer', 'step'}``: the EMA
      list in parameter order (``model`` with ``use_ema=False``);
    - diffusers ``EMAModel.state_dict()`` (ADDT's ``unet_ema/ema_net.pth``): its ``shadow_params``;
    - a plain state dict (ADDT's ``unet/net.pth``, or a safetensors conversion), ``module.`` stripped.
    """
    ref = model.state_dict()
    names = [n for n, _ in model.named_parameters()]

    def fit(state: dict[str, Any]) -> dict[str, Tensor]:
        missing = [k for k in ref if k not in state]
        unexpected = [k for k in state if k not in ref]
        bad = [k for k in ref if k in state and (not isinstance(state[k], Tensor) or tuple(state[k].shape) != tuple(ref[k].shape))]
        if missing or unexpected or bad:
            raise BenchError(f"{where} does not fit score_sde's NCSN++ ({_layout_name(model.cfg)} layout): missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad[:3]}")
        return state

    def from_list(shadow: Any, what: str) -> dict[str, Tensor]:
        if not isinstance(shadow, (list, tuple)) or not all(isinstance(t, Tensor) for t in shadow):
            raise BenchError(f"{where}: {what} is not a list of tensors")
        if len(shadow) != len(names):
            raise BenchError(f"{where}: {what} holds {len(shadow)} tensors, score_sde's NCSN++ "
                             f"({_layout_name(model.cfg)} layout) has {len(names)} parameters")
        return fit(dict(zip(names, shadow)))

    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict) and "shadow_params" in obj["ema"]:
        if isinstance(obj.get("model"), dict):
            fit(_strip(obj["model"]))  # the names the authors saved, checked against ours
        if use_ema:
            return from_list(obj["ema"]["shadow_params"], "ema['shadow_params']"), "score_sde (ema)"
        if not isinstance(obj.get("model"), dict):
            raise BenchError(f"{where}: ema=false needs the checkpoint's 'model' entry")
        return fit(_strip(obj["model"])), "score_sde (model, not EMA)"
    if isinstance(obj, dict) and "shadow_params" in obj:
        return from_list(obj["shadow_params"], "shadow_params"), "diffusers EMAModel"
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return fit(_strip(obj)), "state dict"
    raise BenchError(f"{where} is neither a score_sde checkpoint (model/ema/optimizer/step), a diffusers EMAModel "
                     "state, nor a state dict of tensors")


def _layout_name(cfg: NCSNppConfig) -> str:
    return "cifar10_ddpmpp_deep" if cfg == CIFAR10_DDPMPP_DEEP else f"reduced nf={cfg.nf} blocks={cfg.num_res_blocks}"


def resolve_weights(weights: str | Path, kind: str) -> Path:
    """A file, or for ADDT an output folder (``unet/net.pth`` inside)."""
    p = Path(weights)
    if p.is_dir():
        for rel in ("unet/net.pth", "net.pth", "unet_ema/ema_net.pth"):
            if (p / rel).is_file():
                return p / rel
        raise BenchError(f"{p} holds no unet/net.pth ({ADDT_PAGE})")
    if not p.is_file():
        want = SCORE_SDE_FILE if kind == "diffpure_sde" else "unet/net.pth"
        raise BenchError(f"weights {p} not found; the published file is {want}: {SCORE_SDE_PAGE if kind == 'diffpure_sde' else ADDT_PAGE}")
    return p


def load_ncsnpp(weights: str | Path | None, cfg: NCSNppConfig, *, kind: str = "diffpure_sde",
                use_ema: bool = True) -> tuple[NCSNpp, dict[str, Any]]:
    """The DDPM++ network from an authors' file (never unpickled); returns it and its provenance."""
    if not weights:
        if kind == "diffpure_sde":
            raise BenchError(f"diffpure_sde needs score_sde's {SCORE_SDE_FILE} (vp/cifar10_ddpmpp_deep_continuous; "
                             f"no sha256 published): download it from {SCORE_SDE_PAGE} and pass --defense-opt weights=PATH")
        raise BenchError(f"addt_sde needs ADDT's fine-tuned VP-SDE DDPM++ weights (none published): {ADDT_PAGE}; "
                         "pass --defense-opt weights=PATH (the folder or its unet/net.pth)")
    path = resolve_weights(weights, kind)
    model = NCSNpp(cfg)
    state, fmt = ncsnpp_state(_read(path), model, use_ema=use_ema, where=str(path))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), {"file": str(path), "sha256": sha256_file(path), "format": fmt}


# --------------------------------------------------------------------------- purifiers
def continuous_marginal(t: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[Tensor, Tensor]:
    """score_sde's VP marginal at time t: (mean coefficient exp(lmc), std sqrt(1 - exp(2 lmc)))."""
    lmc = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    return torch.exp(lmc), torch.sqrt(1.0 - torch.exp(2.0 * lmc))


class DiffPureSDECifarPurifier(Stage):
    """[0,1] images -> diffuse to t* (discrete abar) -> Euler-Maruyama reverse VP-SDE (score_sde labels)."""

    noise_names = ("forward", "reverse")

    def __init__(self, model: nn.Module, *, t: int = 100, dt: float = 1e-3, t_end: float = 1e-5,
                 use_checkpoint: bool = True) -> None:
        super().__init__()
        if not 1 <= int(t) <= 1000:
            raise BenchError(f"t must be in 1..1000 (t* = t/1000; DiffPure CIFAR-10 uses 100), got {t}")
        if not 0.0 < float(dt) <= 1.0:
            raise BenchError(f"dt must be in (0, 1] (DiffPure: torchsde's default 1e-3), got {dt}")
        self.model, self.t, self.dt, self.use_checkpoint = model, int(t), float(dt), use_checkpoint
        self.sde = VPSDE()
        self.abar_t = float(self.sde.discrete_alpha_bar()[self.t - 1])
        self.grid = euler_grid(1.0 - self.t / 1000.0, 1.0 - t_end, self.dt)
        self.steps = len(self.grid)

    def extra_repr(self) -> str:
        return f"t={self.t}, dt={self.dt}, steps={self.steps}"

    def sample_noise(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        return {"forward": randn(x.shape, generator, x), "reverse": randn((x.shape[0], self.steps, *x.shape[1:]), generator, x)}

    def drift(self, y: Tensor, t: Tensor) -> Tensor:
        """The reverse-time drift -f(x, 1 - s) of DiffPure's RevVPSDE with score_type score_sde."""
        beta = float(self.sde.beta(t))
        std = float(continuous_marginal(t)[1])
        eps = call_eps(self.model, y, (t * 999).expand(y.shape[0]).to(y.device), self.use_checkpoint)
        return 0.5 * beta * y - beta * eps.to(y.dtype) / std

    def forward(self, x: Tensor, noise: Noise) -> Tensor:
        y = self.abar_t**0.5 * (2.0 * x - 1.0) + (1.0 - self.abar_t) ** 0.5 * noise["forward"]
        z = noise["reverse"]
        for i, (s, nxt) in enumerate(self.grid):
            t = 1.0 - s
            h = float(nxt - s)
            y = y + self.drift(y, t) * h + float(self.sde.beta(t)) ** 0.5 * h**0.5 * z[:, i]
        return (y + 1.0) / 2.0


class ADDTVPPurifier(Stage):
    """ADDT's VP-SDE evaluation: continuous-marginal diffusion, then per time a Langevin corrector and an
    Euler-Maruyama predictor step (diffusers ScoreSdeVpScheduler, ADDT's ``step_correct``)."""

    noise_names = ("forward", "reverse")

    def __init__(self, model: nn.Module, *, inference_steps: int = 1000, strength: float = 0.1, snr: float = 0.16,
                 sampling_eps: float = 1e-3, use_checkpoint: bool = True) -> None:
        super().__init__()
        if not 2 <= int(inference_steps) <= 100000:
            raise BenchError(f"inference_steps must be an integer >= 2 (ADDT: 1000), got {inference_steps}")
        if not 0.0 < float(strength) <= 1.0:
            raise BenchError(f"strength must be in (0, 1] (ADDT's --denoise_strength 0.1), got {strength}")
        self.model, self.n, self.snr, self.use_checkpoint = model, int(inference_steps), float(snr), use_checkpoint
        times = torch.linspace(1, sampling_eps, self.n)
        self.times = times[round((1 - float(strength)) * self.n) - 1:]
        self.steps = len(self.times)
        self.strength = float(strength)
        # ADDT's set_alpha: alphas of a linspace(b0/n, b1/n, n) beta grid, indexed by int(999 t)
        self.alphas = 1.0 - torch.linspace(0.1 / self.n, 20.0 / self.n, self.n)

    def extra_repr(self) -> str:
        return f"inference_steps={self.n}, strength={self.strength}, steps={self.steps}, t0={float(self.times[0]):.4f}"

    def sample_noise(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        return {"forward": randn(x.shape, generator, x),
                "reverse": randn((x.shape[0], self.steps, 2, *x.shape[1:]), generator, x)}

    def forward(self, x: Tensor, noise: Noise) -> Tensor:
        t0 = self.times[0].to(x.device)
        mean, std = continuous_marginal(t0)
        y = mean * (2.0 * x - 1.0) + std * noise["forward"]
        z = noise["reverse"]
        b = x.shape[0]
        y_mean = y
        for i, t in enumerate(self.times.to(x.device)):
            labels = (t * (self.n - 1)).expand(b)
            std = continuous_marginal(t)[1]
            score = -call_eps(self.model, y, labels, self.use_checkpoint) / std
            zc = z[:, i, 0]
            grad_norm = score.reshape(b, -1).norm(dim=-1)
            noise_norm = zc.reshape(b, -1).norm(dim=-1)
            step = ((self.snr * noise_norm / grad_norm) ** 2 * 2 * self.alphas[labels.long().cpu()].to(x.device)).view(b, 1, 1, 1)
            y = y + step * score + (2 * step) ** 0.5 * zc
            score = -call_eps(self.model, y, labels, self.use_checkpoint) / std
            beta = 0.1 + t * (20.0 - 0.1)
            dt = -1.0 / self.n
            y_mean = y + (-0.5 * beta * y - beta * score) * dt
            y = y_mean + beta.sqrt() * math.sqrt(-dt) * z[:, i, 1]
        return (y_mean + 1.0) / 2.0


# --------------------------------------------------------------------------- classifier and registry
def robustbench_standard(weights: str | Path | None) -> tuple[nn.Module, str]:
    """RobustBench's CIFAR-10 Linf 'Standard' WRN-28-10 (DiffPure's cifar10-wideresnet-28-10) from a local file."""
    if not weights:
        raise BenchError(f"classifier robustbench:Standard needs {RB_STANDARD}: pass --defense-opt classifier_weights=PATH "
                         "(or classifier=<a registry classifier> for a local one)")
    if not Path(weights).is_file():
        raise BenchError(f"classifier weights {weights} not found; the published file is {RB_STANDARD}")
    from .zoo import robustbench_model

    return robustbench_model("Standard", dataset="cifar10", threat="linf", checkpoint=weights)


_OPTIONS = ("weights", "checkpoint", "ema", "classifier", "classifier_weights", "t", "t_star", "dt", "nf",
            "num_res_blocks", "grad_checkpoint", "sampler", "inference_steps", "strength")


def _int(cfg: dict[str, Any], key: str, default: int, name: str) -> int:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise BenchError(f"{name}: {key} must be an integer, got {v!r}")
    return v


def build_sde(name: str, *, dataset: str, device: str | torch.device, default_sampler: str, **cfg: Any) -> Defense:
    unknown = [k for k in cfg if k not in _OPTIONS]
    if unknown:
        raise BenchError(f"{name}: unknown option {unknown[0]!r}; options: {', '.join(_OPTIONS)}")
    if dataset != "cifar10":
        raise BenchError(f"{name} is a CIFAR-10 defense, not for {dataset!r}")
    if cfg.get("weights") and cfg.get("checkpoint") and cfg["weights"] != cfg["checkpoint"]:
        raise BenchError(f"{name}: give weights or checkpoint, not both")
    sampler = str(cfg.get("sampler", default_sampler))
    if sampler not in ("euler", "pc"):
        raise BenchError(f"{name}: sampler must be euler (DiffPure) or pc (ADDT's predictor-corrector), got {sampler!r}")
    nf = _int(cfg, "nf", CIFAR10_DDPMPP_DEEP.nf, name)
    blocks = _int(cfg, "num_res_blocks", CIFAR10_DDPMPP_DEEP.num_res_blocks, name)
    if nf < 4 or nf % 4 or blocks < 1:
        raise BenchError(f"{name}: nf must be a positive multiple of 4 and num_res_blocks >= 1 (published: 128, 8)")
    ucfg = CIFAR10_DDPMPP_DEEP if (nf, blocks) == (128, 8) else reduced_config(nf=nf, num_res_blocks=blocks)
    model, source = load_ncsnpp(cfg.get("weights") or cfg.get("checkpoint"), ucfg, kind=name,
                                use_ema=bool(cfg.get("ema", True)))
    ckpt = bool(cfg.get("grad_checkpoint", True))
    info: dict[str, Any] = {"sde": "VP beta 0.1..20 (continuous)", "network": "score_sde ncsnpp DDPM++",
                            "network_config": ucfg.to_dict(), "weights": source, "sampler": sampler,
                            "network_params": sum(p.numel() for p in model.parameters())}
    purifier: Stage
    if sampler == "euler":
        if "t" in cfg and "t_star" in cfg:
            raise BenchError(f"{name}: give t (1..1000) or t_star, not both")
        t = _int(cfg, "t", 100, name) if "t" in cfg else int(round(float(cfg.get("t_star", 0.1)) * 1000))
        purifier = DiffPureSDECifarPurifier(model, t=t, dt=float(cfg.get("dt", 1e-3)), use_checkpoint=ckpt)
        info.update({"t": t, "t_star": t / 1000, "solver": "euler-maruyama", "dt": purifier.dt, "steps": purifier.steps,
                     "forward_marginal": "discrete abar[t-1]"})
    else:
        purifier = ADDTVPPurifier(model, inference_steps=_int(cfg, "inference_steps", 1000, name),
                                  strength=float(cfg.get("strength", 0.1)), use_checkpoint=ckpt)
        info.update({"solver": "predictor-corrector (langevin snr 0.16 + euler-maruyama)", "steps": purifier.steps,
                     "network_calls": 2 * purifier.steps, "t_start": float(purifier.times[0]),
                     "inference_steps": purifier.n, "strength": purifier.strength, "forward_marginal": "continuous"})
    cls_name = str(cfg.get("classifier", "robustbench:Standard"))
    if cls_name == "robustbench:Standard":
        classifier, cls_sha = robustbench_standard(cfg.get("classifier_weights"))
    else:
        from benchmark.registry import CLASSIFIERS, load_builtins

        if cfg.get("classifier_weights"):
            raise BenchError(f"{name}: classifier_weights applies to classifier=robustbench:Standard")
        load_builtins()
        classifier = CLASSIFIERS.create(cls_name, device=device)
        cls_sha = getattr(classifier, "weights_sha256", None)
    info.update({"classifier": cls_name, "classifier_sha256": cls_sha})
    return Defense(classifier, purifier=purifier, name=name, info=info).to(device).freeze()


@register_defense("diffpure_sde", datasets=("cifar10",), stochastic=True,
                  summary=f"DiffPure CIFAR-10 (the paper's main model): weights=PATH to score_sde's {SCORE_SDE_FILE} "
                  "(vp/cifar10_ddpmpp_deep_continuous, github.com/yang-song/score_sde_pytorch), t*=0.1, reverse VP-SDE "
                  "Euler dt=1e-3, RobustBench Standard WRN-28-10 (classifier_weights=PATH to its Standard.pt)")
def make_diffpure_sde(*, dataset: str = "cifar10", device: str | torch.device = "cpu", **cfg: Any) -> Defense:
    """DiffPure (CIFAR-10, authors' process): score_sde DDPM++ deep (EMA) + reverse VP-SDE + WRN-28-10."""
    return build_sde("diffpure_sde", dataset=dataset, device=device, default_sampler="euler", **cfg)


@register_defense("addt_sde", datasets=("cifar10",), stochastic=True,
                  summary="ADDT's VP-SDE DDPM++ family: weights=PATH to an ADDT output folder (unet/net.pth, "
                  "github.com/LYMDLUT/ADDT train_VPSDE_DDPMPP_ADDT), its PC sampler (1000-step grid, strength 0.1: "
                  "101 times, 202 calls); sampler=euler for DiffPure's solver")
def make_addt_sde(*, dataset: str = "cifar10", device: str | torch.device = "cpu", **cfg: Any) -> Defense:
    """ADDT (VP-SDE family): the ADDT-fine-tuned DDPM++ with ADDT's predictor-corrector evaluation."""
    return build_sde("addt_sde", dataset=dataset, device=device, default_sampler="pc", **cfg)
