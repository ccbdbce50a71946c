"""ADDT's EDM purifier family: EDM's DDPM++ SongUNet (EDMPrecond) with ADDT's stochastic Heun purification.

What LYMDLUT/ADDT runs (``Robustness_test/script_edm_sde/edm_run_attack_linf.sh``,
``main_code/edm_attack_eval_linf_vp.py``, ``main_code/sampler/edm.py``
``EDMStochasticSampler.purify``): the image in [-1, 1] plus ``sigma_max * eps_f`` with sigma_max 0.5;
the Karras schedule ``t_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, i < N,
then t_N = 0, with N = 50 (``--inference_step 50``), s_min 0.002, rho 7; per step the EDM
stochastic sampler: churn ``gamma = min(S_churn/N, sqrt 2 - 1)`` where S_min <= t_i <= S_max (S_churn
6 = ``--random_strength 6``, S_min 0.01, S_max 0.46, S_noise 1.007), ``t_hat = t_i (1 + gamma)``,
``x_hat = x + sqrt(t_hat^2 - t_i^2) S_noise z_i``, an Euler step and (except the last) Heun's
correction; output ``clamp(x/2 + 0.5, 0, 1)``. 2N - 1 = 99 network calls per purification.

Weights: EDM's training loop (``train_edm_ADDT/training/training_loop.py``) saves pickles
(``network-snapshot-*.pkl``, the class code inside); ADDT's eval does not read them but the state
dict that ADDT's ``train_edm_ADDT/export.py`` writes (``pickle.load(f)['ema'].state_dict()`` ->
``<name>.pth``; ADDT's scripts use ``edm_cifar_uncond_vp.pth`` and ``ADDT-010000.pth``). We load that
``.pth`` (or a safetensors copy) with ``torch.load(weights_only=True)`` and never unpickle: a ``.pkl``
gets an error with the authors' conversion command, to run in their environment on a file you trust.

Noise parts: ``forward`` eps_f (N, 3, 32, 32) and ``reverse`` the churn draws z_i (N, K, 3, 32, 32)
(steps outside [S_min, S_max] multiply theirs by 0). Exact gradients, each network call checkpointed.
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
from .diffpure_sde import _read, robustbench_standard
from .diffusion import call_eps
from .edm_unet import EDM_CIFAR10_DDPMPP, EDMPrecond, SongUNetConfig, reduced_config
from .weights import sha256_file

EDM_PAGE = ("ADDT's EDM state dicts: train_edm_ADDT/export.py --input network-snapshot-XXXXXX.pkl (github.com/LYMDLUT/ADDT) "
            "writes network-snapshot-XXXXXX.pth; the base model is EDM's edm-cifar10-32x32-uncond-vp.pkl "
            "(nvlabs-fi-cdn.nvidia.com/edm/pretrained/) exported the same way")
CONVERT = ("python export.py --input {pkl}  (ADDT's train_edm_ADDT/export.py, in the authors' environment; it unpickles, "
           "so only for a file you trust) -> a state-dict .pth that loads here")


def load_edm(weights: str | Path | None, cfg: SongUNetConfig) -> tuple[EDMPrecond, dict[str, Any]]:
    if not weights:
        raise BenchError(f"addt_edm needs an EDMPrecond state dict (none published by ADDT): {EDM_PAGE}; "
                         "pass --defense-opt weights=PATH")
    path = Path(weights)
    if path.suffix == ".pkl":
        raise BenchError(f"{path} is an EDM pickle (class code inside); refusing to unpickle it. Convert it: "
                         + CONVERT.format(pkl=path.name))
    if not path.is_file():
        raise BenchError(f"weights {path} not found; {EDM_PAGE}")
    obj = _read(path)
    if isinstance(obj, dict) and "ema" in obj and not all(isinstance(v, Tensor) for v in obj.values()):
        raise BenchError(f"{path} is not a state dict (an EDM snapshot?); convert it: " + CONVERT.format(pkl=path.name))
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise BenchError(f"{path} is not a state dict of tensors ({EDM_PAGE})")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    model = EDMPrecond(cfg)
    ref = model.state_dict()
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    bad = [k for k in ref if k in state and tuple(state[k].shape) != tuple(ref[k].shape)]
    if missing or unexpected or bad:
        layout = "edm cifar10 ddpmpp" if cfg == EDM_CIFAR10_DDPMPP else f"reduced {cfg.model_channels}ch {cfg.num_blocks} blocks"
        raise BenchError(f"{path} does not fit EDM's SongUNet ({layout} layout): missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shape {bad[:3]}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), {"file": str(path), "sha256": sha256_file(path), "format": "EDMPrecond state dict"}


class EDMPurifier(Stage):
    """[0,1] -> [-1,1] + sigma_max eps_f -> EDM stochastic Heun sampler from sigma_max to 0 -> [0,1]."""

    noise_names = ("forward", "reverse")

    def __init__(self, model: nn.Module, *, num_steps: int = 50, sigma_max: float = 0.5, sigma_min: float = 0.002,
                 rho: float = 7.0, s_churn: float = 6.0, s_min: float = 0.01, s_max: float = 0.46,
                 s_noise: float = 1.007, use_checkpoint: bool = True) -> None:
        super().__init__()
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise BenchError(f"num_steps must be an integer >= 2 (ADDT: 50), got {num_steps!r}")
        if not 0.0 < float(sigma_min) < float(sigma_max):
            raise BenchError(f"need 0 < sigma_min < sigma_max (ADDT: 0.002, 0.5), got {sigma_min}, {sigma_max}")
        self.model, self.steps, self.use_checkpoint = model, num_steps, use_checkpoint
        self.sigma_max, self.s_churn, self.s_min, self.s_max, self.s_noise = (
            float(sigma_max), float(s_churn), float(s_min), float(s_max), float(s_noise))
        i = torch.arange(num_steps, dtype=torch.float32)
        t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        self.t_steps = torch.cat([t, torch.zeros(1)])

    def extra_repr(self) -> str:
        return f"num_steps={self.steps}, sigma_max={self.sigma_max}, S_churn={self.s_churn}"

    def sample_noise(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        return {"forward": randn(x.shape, generator, x), "reverse": randn((x.shape[0], self.steps, *x.shape[1:]), generator, x)}

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return call_eps(self.model, x, sigma.expand(x.shape[0]).to(x.device), self.use_checkpoint).to(x.dtype)

    def forward(self, x: Tensor, noise: Noise) -> Tensor:
        x_next = (2.0 * x - 1.0) + noise["forward"] * self.sigma_max
        z = noise["reverse"]
        ts = self.t_steps
        for i in range(self.steps):
            t_cur, t_next = ts[i], ts[i + 1]
            gamma = min(self.s_churn / self.steps, math.sqrt(2) - 1) if bool(self.s_min <= t_cur <= self.s_max) else 0.0
            t_hat = t_cur + gamma * t_cur
            x_hat = x_next + float((t_hat**2 - t_cur**2).sqrt()) * self.s_noise * z[:, i]
            d_cur = (x_hat - self._denoise(x_hat, t_hat)) / float(t_hat)
            x_next = x_hat + float(t_next - t_hat) * d_cur
            if i < self.steps - 1:
                d_prime = (x_next - self._denoise(x_next, t_next)) / float(t_next)
                x_next = x_hat + float(t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        return (x_next / 2 + 0.5).clamp(0.0, 1.0)


_OPTIONS = ("weights", "checkpoint", "classifier", "classifier_weights", "num_steps", "sigma_max", "s_churn", "s_min",
            "s_max", "s_noise", "model_channels", "num_blocks", "grad_checkpoint")


@register_defense("addt_edm", datasets=("cifar10",), stochastic=True,
                  summary="ADDT's EDM family: weights=PATH to an EDMPrecond state dict (ADDT's train_edm_ADDT/export.py "
                  "output .pth; .pkl pickles are refused), sigma_max 0.5, 50 stochastic Heun steps (S_churn 6), "
                  "RobustBench Standard WRN-28-10 (classifier_weights=PATH)")
def make_addt_edm(*, dataset: str = "cifar10", device: str | torch.device = "cpu", **cfg: Any) -> Defense:
    """ADDT (EDM family): the ADDT-fine-tuned EDM DDPM++ with ADDT's stochastic Heun purification."""
    unknown = [k for k in cfg if k not in _OPTIONS]
    if unknown:
        raise BenchError(f"addt_edm: unknown option {unknown[0]!r}; options: {', '.join(_OPTIONS)}")
    if dataset != "cifar10":
        raise BenchError(f"addt_edm is a CIFAR-10 defense, not for {dataset!r}")
    mc, nb = cfg.get("model_channels", 128), cfg.get("num_blocks", 4)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (mc, nb)) or mc < 4 or mc % 4 or nb < 1:
        raise BenchError("addt_edm: model_channels must be a positive multiple of 4 and num_blocks >= 1 (published: 128, 4)")
    ucfg = EDM_CIFAR10_DDPMPP if (mc, nb) == (128, 4) else reduced_config(model_channels=mc, num_blocks=nb)
    model, source = load_edm(cfg.get("weights") or cfg.get("checkpoint"), ucfg)
    purifier = EDMPurifier(model, num_steps=cfg.get("num_steps", 50), sigma_max=float(cfg.get("sigma_max", 0.5)),
                           s_churn=float(cfg.get("s_churn", 6.0)), s_min=float(cfg.get("s_min", 0.01)),
                           s_max=float(cfg.get("s_max", 0.46)), s_noise=float(cfg.get("s_noise", 1.007)),
                           use_checkpoint=bool(cfg.get("grad_checkpoint", True)))
    cls_name = str(cfg.get("classifier", "robustbench:Standard"))
    if cls_name == "robustbench:Standard":
        classifier, cls_sha = robustbench_standard(cfg.get("classifier_weights"))
    else:
        from benchmark.registry import CLASSIFIERS, load_builtins

        if cfg.get("classifier_weights"):
            raise BenchError("addt_edm: classifier_weights applies to classifier=robustbench:Standard")
        load_builtins()
        classifier = CLASSIFIERS.create(cls_name, device=device)
        cls_sha = getattr(classifier, "weights_sha256", None)
    info = {"network": "EDM SongUNet DDPM++ (EDMPrecond)", "network_config": ucfg.to_dict(), "weights": source,
            "solver": "edm stochastic heun", "steps": purifier.steps, "network_calls": 2 * purifier.steps - 1,
            "sigma_max": purifier.sigma_max, "s_churn": purifier.s_churn, "s_min": purifier.s_min, "s_max": purifier.s_max,
            "s_noise": purifier.s_noise, "network_params": sum(p.numel() for p in model.parameters()),
            "classifier": cls_name, "classifier_sha256": cls_sha}
    return Defense(classifier, purifier=purifier, name="addt_edm", info=info).to(device).freeze()
