"""Safe checkpoint loading: sha256-checked, never unpickled.

``.safetensors`` files are read with safetensors; ``.pt``/``.pth`` files only with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects. Shipped
weights are listed in ``defenses/weights/manifest.json`` with their sha256 and the recipe
record that produced them.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmark.errors import BenchError, first_line
from benchmark.resources import cache_dir  # noqa: F401  (its home is the ground layer; re-exported)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"



def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unwrap(obj: Any) -> dict[str, Tensor]:
    for key in ("state_dict", "model_state_dict", "model", "net", "ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise BenchError("checkpoint does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict(path: str | Path, *, sha256: str | None = None) -> dict[str, Tensor]:
    """Load a state dict safely, checking ``sha256`` when given."""
    from benchmark.safe_io import is_file

    p = Path(path)
    if not is_file(p):
        raise BenchError(f"checkpoint not found: {p}")
    if sha256 is not None:
        got = sha256_file(p)
        if got != sha256:
            raise BenchError(f"checkpoint {p} has sha256 {got[:16]}..., expected {sha256[:16]}... (corrupt or wrong file)")
    return _unwrap(load_container(p))


def load_container(path: str | Path) -> Any:
    """What a checkpoint file holds, read safely: safetensors, or ``torch.load(weights_only=True)``
    (tensors and plain containers only); a pickle of Python objects or garbage bytes is one
    BenchError line. The one safe reader behind every checkpoint format we accept."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise BenchError(f"corrupt safetensors checkpoint {p}: {e}") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # not a forbidden object: the bytes themselves are bad
            raise BenchError(f"corrupt checkpoint {p}: {first_line(e)}") from None
        raise BenchError(
            f"checkpoint {p} needs pickle to load (it holds Python objects, not just tensors); "
            "refusing to unpickle an untrusted file: re-save it as a state dict or safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError) as e:  # garbage bytes
        raise BenchError(f"corrupt checkpoint {p}: {first_line(e)}") from None


def save_safetensors(state: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write a state dict atomically and return its sha256."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, p)
    return sha256_file(p)


def manifest() -> dict[str, dict[str, Any]]:
    if not MANIFEST.is_file():
        return {}
    return json.loads(MANIFEST.read_text())


def load_shipped(name: str) -> dict[str, Tensor]:
    """The state dict of a shipped model, by its manifest name (sha256 checked)."""
    entries = manifest()
    if name not in entries:
        raise BenchError(f"no shipped weights named {name!r}; shipped: {', '.join(sorted(entries)) or 'none'}")
    e = entries[name]
    state = load_state_dict(WEIGHTS_DIR / e["file"], sha256=e["sha256"])
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
