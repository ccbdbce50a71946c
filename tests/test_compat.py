"""The torchvision shim: torchvision and the libraries built on it import and work."""
import subprocess
import sys

import torch


def test_torchvision_imports_and_nms_works():
    import torchvision  # noqa: F401  (fails without the shim on CPU torch + CUDA torchvision)
    from benchmark.compat import _nms_cpu

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = torch.ops.torchvision.nms(boxes, scores, 0.5)
    assert keep.tolist() == [0, 2]
    assert _nms_cpu(boxes, scores, 0.99).tolist() == [0, 1, 2]


def test_dependent_libraries_import_in_a_fresh_process():
    code = "import benchmark, torchvision, robustbench, torch_fidelity, timm; print('ok')"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_shim_is_inert_when_extension_loads(monkeypatch):
    import benchmark.compat as compat

    monkeypatch.setattr(compat, "_STATE", {"patched": False, "checked": False})
    monkeypatch.setattr(compat, "_extension_loads", lambda: True)
    assert compat.ensure_torchvision() is False
    assert compat.shim_applied() is False
