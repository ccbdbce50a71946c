"""The layer contract (.importlinter, README "Layers") holds: imports run one way only."""
from __future__ import annotations

import sys
from pathlib import Path

from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]


def test_layer_contract_holds(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    assert lint_imports(config_filename=str(REPO / ".importlinter"), no_cache=True, no_logo=True) == 0


def test_contract_catches_an_upward_import_inside_a_function(tmp_path, monkeypatch):
    """A known answer: the tool sees a function-level import that breaks the layers (so the
    contract above is not passing by not looking)."""
    pkg = tmp_path / "layerdemo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "high.py").write_text("from . import low\n")
    (pkg / "low.py").write_text("def f():\n    from . import high\n    return high\n")
    cfg = tmp_path / "contract.ini"
    cfg.write_text("[importlinter]\nroot_package = layerdemo\n\n[importlinter:contract:one]\nname = demo\n"
                   "type = layers\nlayers =\n    layerdemo.high\n    layerdemo.low\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert lint_imports(config_filename=str(cfg), no_cache=True, no_logo=True) == 1
    (pkg / "low.py").write_text("def f():\n    return 1\n")
    sys.modules.pop("layerdemo", None)
    assert lint_imports(config_filename=str(cfg), no_cache=True, no_logo=True) == 0
