"""Third-party classifiers as deterministic defenses: pyautoattack's example ResNet-18 and
the RobustBench model zoo.

Both are loaded without unpickling: pyautoattack's ``model_test.pt`` is a plain state dict
that ``torch.load(weights_only=True)`` accepts; it is sha256-checked and converted once to
safetensors in the cache (keeping its provenance). RobustBench checkpoints are downloaded
by robustbench's own code when online (or given with ``checkpoint=PATH`` offline), then read
with our safe loader into robustbench's architecture.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.errors import BenchError, first_line
from benchmark.registry import register_classifier, register_defense
from defenses.base import Defense
from defenses.weights import cache_dir, load_state_dict, save_safetensors, sha256_file

# pyautoattack 0.2.0, pyautoattack/examples/model_test.pt (44,754,497 bytes): a CIFAR-10
# ResNet-18 (examples/resnet.py) taking [0,1] inputs without normalisation. Its training is
# undocumented; measured clean 100% / PGD-10 8/255 0% on the 20 foolbox images, i.e. a
# standard (non-robust) classifier.
AA_EXAMPLE_SHA256 = "399f52da9f914c323fa5a6096d60f460a3449a59b64a6405200c1e629f8425a7"


def _aa_example_source() -> Path:
    try:
        import pyautoattack
    except ImportError:
        raise BenchError("rn18_aa_example needs the pyautoattack package (pip install pyautoattack)") from None
    return Path(pyautoattack.__file__).resolve().parent / "examples" / "model_test.pt"


def aa_example_weights(source: Path | None = None) -> tuple[Path, str]:
    """Path and sha256 of the safetensors copy of pyautoattack's example ResNet-18, made once."""
    src = source or _aa_example_source()
    target = cache_dir() / "weights" / "rn18_aa_example.safetensors"
    meta = target.with_suffix(".json")
    if target.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("sha256") == sha256_file(target):
            return target, info["sha256"]
    state = load_state_dict(src, sha256=AA_EXAMPLE_SHA256)  # weights_only=True inside
    digest = save_safetensors(state, target, metadata={"source": "pyautoattack/examples/model_test.pt"})
    meta.write_text(json.dumps({
        "sha256": digest,
        "source": str(src),
        "source_sha256": AA_EXAMPLE_SHA256,
        "provenance": "pyautoattack 0.2.0 examples/model_test.pt (CIFAR-10 ResNet-18, [0,1] inputs, "
                      "standard training by measurement); converted to safetensors by purifybench",
    }, indent=2))
    return target, digest


@register_classifier("rn18_aa_example", dataset="cifar10")
def rn18_aa_example_classifier(*, device: str | torch.device = "cpu") -> nn.Module:
    """pyautoattack's example CIFAR-10 ResNet-18 (standard training)."""
    from pyautoattack.examples.resnet import ResNet18

    path, digest = aa_example_weights()
    model = ResNet18()
    model.load_state_dict(load_state_dict(path, sha256=digest))
    model.weights_sha256 = digest  # type: ignore[attr-defined]
    return model.eval().to(device)


@register_defense("rn18_aa_example", datasets=("cifar10",), stochastic=False,
                  summary="pyautoattack's example CIFAR-10 ResNet-18, no purifier (standard, non-robust)")
def rn18_aa_example(*, dataset: str = "cifar10", device: str | torch.device = "cpu", **cfg: Any) -> Defense:
    """pyautoattack's example CIFAR-10 ResNet-18, no purifier (standard, non-robust)."""
    if cfg:
        raise BenchError(f"rn18_aa_example takes no options; got {sorted(cfg)}")
    if dataset != "cifar10":
        raise BenchError(f"rn18_aa_example is a CIFAR-10 model; got dataset {dataset!r}")
    model = rn18_aa_example_classifier(device=device)
    info = {"weights_sha256": model.weights_sha256, "classifier": "rn18_aa_example",
            "source": "pyautoattack 0.2.0 examples/model_test.pt"}
    return Defense(model, name="rn18_aa_example", info=info).freeze()


_RB_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}
_RB_THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}


def robustbench_model(
    name: str,
    *,
    dataset: str = "cifar10",
    threat: str = "linf",
    checkpoint: str | Path | None = None,
    sha256: str | None = None,
    model_dir: str | Path | None = None,
) -> tuple[nn.Module, str]:
    """A RobustBench zoo model and its checkpoint's sha256.

    Online, robustbench downloads the checkpoint into ``model_dir``; offline, pass
    ``checkpoint``. Either way the file is read with the safe loader, never unpickled.
    """
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.utils import rm_substr_from_state_dict

    if dataset not in _RB_DATASETS:
        raise BenchError(f"robustbench has no dataset {dataset!r}; choose from {sorted(_RB_DATASETS)}")
    if threat not in _RB_THREATS:
        raise BenchError(f"robustbench has no threat {threat!r}; choose from {sorted(_RB_THREATS)}")
    ds, tm = BenchmarkDataset(_RB_DATASETS[dataset]), ThreatModel(_RB_THREATS[threat])
    zoo = model_dicts[ds][tm]
    if name not in zoo:
        raise BenchError(f"robustbench has no {dataset}/{threat} model {name!r} ({len(zoo)} known, e.g. {', '.join(list(zoo)[:3])})")
    entry = zoo[name]
    if isinstance(entry["gdrive_id"], list):
        raise BenchError(f"robustbench model {name!r} is an ensemble; not supported")
    if checkpoint is None:
        folder = Path(model_dir or cache_dir() / "robustbench") / ds.value / tm.value
        checkpoint = folder / f"{name}.pt"
        if not checkpoint.is_file():
            from robustbench.utils import download_gdrive

            folder.mkdir(parents=True, exist_ok=True)
            try:
                download_gdrive(entry["gdrive_id"], checkpoint)
            except Exception as e:  # network errors come in many types
                raise BenchError(
                    f"cannot download robustbench model {name!r} ({type(e).__name__}); offline, put the "
                    f"checkpoint at {checkpoint} or pass --checkpoint PATH"
                ) from None
    state = load_state_dict(checkpoint, sha256=sha256)
    state = rm_substr_from_state_dict(rm_substr_from_state_dict(state, "module."), "model.")
    model = entry["model"]()
    if ds == BenchmarkDataset.imagenet:
        state = {f"model.{k}": v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BenchError(f"checkpoint {checkpoint} does not fit robustbench model {name!r}: {first_line(e)}") from None
    return model.eval(), sha256_file(checkpoint)


def make_robustbench_defense(
    name: str, *, dataset: str = "cifar10", device: str | torch.device = "cpu", threat: str = "linf",
    checkpoint: str | Path | None = None, sha256: str | None = None,
) -> Defense:
    """``robustbench:<Name>``: a RobustBench zoo model as a deterministic defense."""
    model, digest = robustbench_model(name, dataset=dataset, threat=threat, checkpoint=checkpoint, sha256=sha256)
    info = {"weights_sha256": digest, "classifier": f"robustbench:{name}", "robustbench_threat": threat}
    return Defense(model.to(device), name=f"robustbench:{name}", info=info).freeze()
