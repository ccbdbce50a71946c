"""Turn a defense name from the CLI or a config into a Defense.

Names are registry entries (``rn18_aa_example``, ``atop_gan``...) or ``robustbench:<Name>``.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import torch

from defenses.base import Defense, ModuleDefense
from defenses.zoo import make_robustbench_defense

from .data import load_eval_set
from .errors import BenchError
from .options import check_options
from .plugin_check import guard_module, guard_plugin
from .registry import DEFENSES, load_builtins


def resolve_device(device: str | torch.device) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``auto`` as a torch.device; a BenchError (not a torch crash deep in a
    run) when CUDA is asked for and absent. Used by the CLI and by every training entry point."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device {device!r} requested but CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise BenchError(f"unknown device {device!r}; use cpu, cuda or auto")
    return torch.device(device)


def make_defense(
    name: str,
    *,
    dataset: str = "cifar10",
    device: torch.device | str = "cpu",
    checkpoint: str | None = None,
    options: dict[str, Any] | None = None,
    probe_images: torch.Tensor | None = None,
):
    """Build and freeze the named defense for ``dataset`` on ``device``.

    ``probe_images`` (a few of the run's own images) is what a plugin module is probed on for
    hidden randomness; None: the dataset's first embedded images."""
    options = dict(options or {})
    if ":" in name and not name.startswith("robustbench:"):
        return load_plugin(name, dataset=dataset, device=device, options=options, probe_images=probe_images)
    if name.startswith("robustbench:"):
        options = check_options(f"defense {name!r}", make_robustbench_defense, options)
        return make_robustbench_defense(name.split(":", 1)[1], dataset=dataset, device=device,
                                        checkpoint=checkpoint, **options)
    load_builtins()
    entry = DEFENSES.get(name)
    datasets = entry.meta.get("datasets")
    if datasets and dataset not in datasets:
        raise BenchError(f"defense {name!r} exists for {', '.join(datasets)}, not for dataset {dataset!r}")
    if checkpoint is not None:
        options["checkpoint"] = checkpoint
    options = check_options(f"defense {name!r}", entry.factory, options)  # typed, from the factory's signature
    try:
        return entry.factory(dataset=dataset, device=device, **options)
    except TypeError as e:
        raise BenchError(f"defense {name!r}: bad options {sorted(options)} ({e})") from None


def _load_callable(target: str):
    """``pkg.mod:fn`` or ``path/to/file.py:fn`` -> the callable."""
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise BenchError(f"plugin must look like pkg.mod:fn or path/file.py:fn, got {target!r}")
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise BenchError(f"plugin file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"purifybench_plugin_{abs(hash(str(path.resolve())))}", path)
        if spec is None or spec.loader is None:
            raise BenchError(f"cannot import plugin file {path}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # a user's file may fail in any way; report it in one line
            raise BenchError(f"plugin file {path} failed to import: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise BenchError(f"plugin module {where!r} not found ({e})") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise BenchError(f"plugin {target!r}: {where} has no callable {attr!r}")
    return fn


PROBE_IMAGES = 4  # images of the run a plugin module is probed on


def _probe_images(dataset: str, images: torch.Tensor | None) -> torch.Tensor:
    """The probe batch: the run's first images, or the dataset's first embedded ones."""
    if images is None:
        images = load_eval_set(dataset, f"first:{PROBE_IMAGES}").images
    return images[:PROBE_IMAGES]


def _probe_stochastic(model: torch.nn.Module, device: torch.device | str, x: torch.Tensor, target: str) -> bool:
    """Does an opaque module give different outputs on the same input? (hidden randomness)

    Probed on the run's own images, at the dataset's resolution: a module that cannot classify
    them cannot be attacked either, so that is an error, never a silent "deterministic" (which
    would give a stochastic module the deterministic battery, without EOT)."""
    x = x.to(device)
    state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        with torch.no_grad():
            torch.manual_seed(1)
            a = model(x)
            torch.manual_seed(2)
            b = model(x)
    except Exception as e:  # a user's module may fail in any way; report it in one line
        raise BenchError(f"plugin {target!r} failed on {x.shape[0]} images of shape {tuple(x.shape[1:])} "
                         f"(probe for hidden randomness): {type(e).__name__}: {e}") from None
    finally:
        torch.set_rng_state(state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        raise BenchError(f"plugin {target!r} must return a logits tensor of one shape for images of shape "
                         f"{tuple(x.shape[1:])}; got {type(a).__name__} (probe for hidden randomness)")
    return not torch.equal(a, b)


def load_plugin(target: str, *, dataset: str, device: torch.device | str, options: dict[str, Any],
                probe_images: torch.Tensor | None = None):
    """A user's defense: a callable returning a Defense, or any nn.Module ([0,1] images -> logits)."""
    fn = _load_callable(target)
    options = check_options(f"plugin {target!r}", fn, options)
    try:
        obj = fn(**options) if options else fn()
    except TypeError as e:
        raise BenchError(f"plugin {target!r} could not be called: {e}") from None
    except BenchError:
        raise
    except Exception as e:  # a user's factory may fail in any way: one line naming it
        raise BenchError(f"plugin {target!r} failed in its factory: {type(e).__name__}: {e}") from None
    if isinstance(obj, Defense):
        obj.name = obj.name if obj.name != "defense" else target
        obj.info.setdefault("plugin", target)
        return guard_plugin(obj.to(device).freeze(), target, dataset)
    if isinstance(obj, torch.nn.Module):
        obj = guard_module(obj.to(device).eval(), target, dataset)
        stochastic = _probe_stochastic(obj, device, _probe_images(dataset, probe_images), target)
        return ModuleDefense(obj, name=target, stochastic=stochastic, info={"plugin": target}).freeze()
    raise BenchError(f"plugin {target!r} returned {type(obj).__name__}; expected a Defense or an nn.Module")
