"""Where a result came from: git commit, library versions, hardware.

One place for what every record (benchmark runs' ``record.json``, training runs' ``recipe.json``)
stores about its origin, so that all records describe the same things the same way.
Imports only the standard library and torch: the training modules use it on machines
without the benchmark's optional dependencies.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# distributions whose versions a record lists when installed (metadata only: nothing is imported)
_PACKAGES = ("torchvision", "numpy", "pillow", "safetensors", "pyyaml", "rich", "pyautoattack", "robustbench",
             "purifybench")


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout, or "unknown" (no git, or a copy without .git)."""
    try:
        out = _git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def git_state() -> dict[str, Any]:
    """``{"commit", "dirty"}``: the commit plus whether tracked files differ from it
    (a weights file trained from uncommitted code is not reproducible from the commit alone).
    Only ``{"commit": "unknown"}`` when there is no usable git checkout."""
    commit = git_commit()
    if commit == "unknown":
        return {"commit": commit}
    try:
        st = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": commit}
    return {"commit": commit, "dirty": bool(st.stdout.strip())}


def library_versions() -> dict[str, str]:
    """Python, torch (with its CUDA/cuDNN builds) and the installed versions of the libraries we use."""
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": str(torch.version.cuda), "cudnn": str(torch.backends.cudnn.version())}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str | torch.device) -> dict[str, Any]:
    """CPU name, core count, torch threads, OS, the device, and the GPU name on CUDA (timings depend on all)."""
    dev = torch.device(device)
    hw: dict[str, Any] = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "platform": platform.platform(), "device": str(dev)}
    if dev.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(dev)
    return hw
