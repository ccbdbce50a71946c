"""Make the CUDA-built torchvision wheel importable on a CPU-only torch.

On machines where the only torchvision matching the pinned torch is a CUDA build, its
compiled extension (``torchvision/_C.so``) cannot load, and ``import torchvision`` fails
with ``RuntimeError: operator torchvision::nms does not exist`` (torchvision registers
fake kernels for ``nms``/``qnms`` at import time). robustbench, timm and torch-fidelity
fail the same way because they import torchvision.

``ensure_torchvision()`` acts only in that case: it defines the two op schemas through
``torch.library`` with a pure-torch CPU kernel, after which torchvision, and everything
built on it, imports and works (nothing here uses detection ops; ``nms`` is correct but
slow). Import this module before torchvision; the package entry points do.
"""
from __future__ import annotations

import importlib.util
import os

import torch

_LIB: "torch.library.Library | None" = None
_STATE: dict[str, bool] = {"patched": False, "checked": False}


def _extension_loads() -> bool:
    """True when torchvision's own compiled ops load (or torchvision is absent)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True
    folder = spec.submodule_search_locations[0]
    candidates = [f for f in os.listdir(folder) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if not candidates:
        return False
    try:
        torch.ops.load_library(os.path.join(folder, candidates[0]))
        return True
    except (OSError, ImportError, RuntimeError):
        return False


def _nms_cpu(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression in plain torch (same result as torchvision's kernel)."""
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True)
    keep: list[int] = []
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool, device=dets.device)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1)
        yy1 = torch.maximum(y1[i], y1)
        xx2 = torch.minimum(x2[i], x2)
        yy2 = torch.minimum(y2[i], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def ensure_torchvision() -> bool:
    """Define ``torchvision::nms``/``qnms`` if torchvision's extension cannot load.

    Returns True when the shim was applied (in this process), False when not needed.
    """
    global _LIB
    if _STATE["checked"]:
        return _STATE["patched"]
    _STATE["checked"] = True
    if _extension_loads():
        return False
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.impl("nms", _nms_cpu, "CPU")
    _LIB.impl("qnms", lambda d, s, t: _nms_cpu(d.dequantize(), s.dequantize(), t), "CPU")
    _STATE["patched"] = True
    return True


def shim_applied() -> bool:
    return _STATE["patched"]


ensure_torchvision()
