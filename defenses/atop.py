"""AToP defenses (Lin et al.): random transform -> purifier (GAN or masked AE) -> frozen classifier.

Registered for CIFAR-10 (purifier weights shipped in defenses/weights, made by
``scripts/gpu/atop.sh`` or ``bench train atop``; classifier: our ``cifar10_standard``):

==================  ==========  ====  ===========  ==========================
name                purifier    RT    AToP (FT)    weights
==================  ==========  ====  ===========  ==========================
atop_gan            GAN         RT2   yes          atop_gan_rt2 (paper's best)
atop_gan_rt1/2/3    GAN         RTk   yes          atop_gan_rtk
atop_gan_pre_rt1/2/3 GAN        RTk   no           atop_gan_pre (one generator)
atop_ae             masked AE   RT2   yes          atop_ae
atop_ae_pre         masked AE   RT2   no           atop_ae_pre
==================  ==========  ====  ===========  ==========================

Noise parts: ``mask`` (patch-grid keep-masks, (N, K, 8, 8)) and, except RT1, ``gaussian``
((N, 3, H, W) standard normal); see :mod:`defenses.rt`. ``defense(x, noise)`` is a pure
function of x and noise.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from benchmark.commands import train_command
from benchmark.errors import BenchError, first_line
from benchmark.registry import register_defense
from defenses.base import Defense, Noise
from defenses.rt import RandomTransform

# weights name -> training config that makes it
TRAIN_CONFIGS: dict[str, str] = {
    "atop_gan_pre": "configs/train/atop_gan_pretrain.yaml",
    "atop_gan_rt1": "configs/train/atop_gan_rt1.yaml",
    "atop_gan_rt2": "configs/train/atop_gan_rt2.yaml",
    "atop_gan_rt3": "configs/train/atop_gan_rt3.yaml",
    "atop_ae_pre": "configs/train/atop_ae_pretrain.yaml",
    "atop_ae": "configs/train/atop_ae.yaml",
}

# defense name -> (purifier, rt, weights name, fine-tuned, summary)
VARIANTS: dict[str, tuple[str, str, str, bool, str]] = {
    "atop_gan": ("gan", "rt2", "atop_gan_rt2", True,
                 "AToP: RT2 (noise+mask) -> AToP-fine-tuned GAN inpainter -> classifier (paper's best)"),
    "atop_gan_rt1": ("gan", "rt1", "atop_gan_rt1", True, "AToP ablation: RT1 (mask) -> fine-tuned GAN -> classifier"),
    "atop_gan_rt2": ("gan", "rt2", "atop_gan_rt2", True,
                     "AToP ablation: RT2 (noise+mask) -> fine-tuned GAN -> classifier"),
    "atop_gan_rt3": ("gan", "rt3", "atop_gan_rt3", True,
                     "AToP ablation: RT3 (noise, 4 complementary masks) -> fine-tuned GAN -> classifier"),
    "atop_gan_pre_rt1": ("gan", "rt1", "atop_gan_pre", False,
                         "AToP ablation without fine-tuning: RT1 -> pre-trained GAN -> classifier"),
    "atop_gan_pre_rt2": ("gan", "rt2", "atop_gan_pre", False,
                         "AToP ablation without fine-tuning: RT2 -> pre-trained GAN -> classifier"),
    "atop_gan_pre_rt3": ("gan", "rt3", "atop_gan_pre", False,
                         "AToP ablation without fine-tuning: RT3 -> pre-trained GAN -> classifier"),
    "atop_ae": ("ae", "rt2", "atop_ae", True, "AToP: RT2 -> AToP-fine-tuned masked autoencoder (DMAE-style) -> classifier"),
    "atop_ae_pre": ("ae", "rt2", "atop_ae_pre", False,
                    "AToP ablation without fine-tuning: RT2 -> pre-trained masked autoencoder -> classifier"),
}


class AToPDefense(Defense):
    """t -> g -> f with an RT that may make several views (RT3): x-hat = combine(g(views(x)))."""

    def __init__(self, classifier: nn.Module, rt: RandomTransform, purifier: nn.Module, *, name: str = "atop",
                 info: Mapping[str, Any] | None = None) -> None:
        super().__init__(classifier, transform=rt, purifier=None, name=name, info=info)
        self.net = purifier

    def purify(self, x: Tensor, noise: Noise) -> Tensor:
        assert isinstance(self.transform, RandomTransform)
        return self.transform.purify(x, noise, self.net)


def build_net(purifier: str, **arch_kwargs: Any) -> nn.Module:
    """A purifier network of a kind; ``arch_kwargs`` as recorded in the manifest (default: the configs' defaults)."""
    if purifier == "gan":
        from defenses.gan import InpaintGenerator

        return InpaintGenerator(**arch_kwargs)
    if purifier == "ae":
        from defenses.ae import MaskedAEPurifier

        return MaskedAEPurifier(**arch_kwargs)
    raise BenchError(f"unknown AToP purifier {purifier!r}; known: gan, ae")


def missing_weights_error(weights: str) -> BenchError:
    cfg = TRAIN_CONFIGS[weights]
    need = ""
    if weights in ("atop_gan_rt1", "atop_gan_rt2", "atop_gan_rt3"):
        need = " (after atop_gan_pre: its config's `init`)"
    elif weights == "atop_ae":
        need = " (after atop_ae_pre: its config's `init`)"
    return BenchError(
        f"no shipped purifier weights {weights!r}; train them with "
        f"`{train_command('atop', cfg, device='cuda', out=f'runs/train/{weights}')}`{need}, or all AToP purifiers at once with scripts/gpu/atop.sh, "
        f"then `python scripts/ship_weights.py runs/train/{weights} {weights}`"
    )


def load_purifier(weights: str, purifier: str) -> tuple[nn.Module, str | None]:
    """A shipped purifier network (float32) and its sha256; BenchError naming the training command if absent."""
    from defenses.weights import load_shipped, manifest  # at call time: the manifest may be swapped (tests)

    entries = manifest()
    if weights not in entries:
        raise missing_weights_error(weights)
    entry = entries[weights]
    if entry.get("arch") not in (None, f"atop_{purifier}"):
        raise BenchError(f"shipped weights {weights!r} are a {entry.get('arch')!r}, not an atop_{purifier} purifier")
    net = build_net(purifier, **dict(entry.get("arch_kwargs") or {}))
    state = load_shipped(weights)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise BenchError(f"shipped weights {weights!r} do not fit the {purifier} purifier: "
                         f"{first_line(e)}") from None
    return net, entries[weights].get("sha256")


def make_atop(name: str, *, dataset: str = "cifar10", device: str | torch.device = "cpu",
              classifier: str = "cifar10_standard", classifier_module: nn.Module | None = None,
              purifier_module: nn.Module | None = None) -> AToPDefense:
    """Build a registered AToP variant; ``classifier_module`` / ``purifier_module`` replace the
    shipped models (tests, or a user's own)."""
    if name not in VARIANTS:
        raise BenchError(f"unknown AToP variant {name!r}; known: {', '.join(VARIANTS)}")
    kind, rt_kind, weights, finetuned, summary = VARIANTS[name]
    if dataset != "cifar10":
        raise BenchError(f"defense {name!r} exists for dataset cifar10 only; got {dataset!r}")
    sha = None
    if purifier_module is None:
        purifier_module, sha = load_purifier(weights, kind)
    if classifier_module is None:
        from benchmark.registry import CLASSIFIERS

        classifier_module = CLASSIFIERS.create(classifier, device=device)
    rt = RandomTransform(rt_kind)
    info = {
        "purifier": kind, "rt": rt_kind, "atop_finetuned": finetuned, "weights": weights,
        "weights_sha256": sha, "classifier": classifier, "sigma": rt.sigma, "missing_rate": rt.rate,
        "n_masks": rt.k, "patch_grid": rt.grid, "train_config": TRAIN_CONFIGS[weights],
        "purifier_params": sum(p.numel() for p in purifier_module.parameters()), "summary": summary,
    }
    d = AToPDefense(classifier_module, rt, purifier_module, name=name, info=info)
    return d.to(device).freeze()  # type: ignore[return-value]


def _factory(name: str) -> Any:
    def make(*, dataset: str = "cifar10", device: str | torch.device = "cpu", classifier: str = "cifar10_standard",
             **unknown: Any) -> Defense:
        if unknown:
            raise BenchError(f"defense {name!r} takes only the option 'classifier'; got {sorted(unknown)}")
        return make_atop(name, dataset=dataset, device=device, classifier=classifier)

    make.__doc__ = VARIANTS[name][4]
    make.__name__ = f"make_{name}"
    return make


for _name, (_kind, _rt, _w, _ft, _summary) in VARIANTS.items():
    register_defense(_name, datasets=("cifar10",), stochastic=True, summary=_summary,
                     purifier=_kind, rt=_rt, weights=_w, atop_finetuned=_ft)(_factory(_name))
