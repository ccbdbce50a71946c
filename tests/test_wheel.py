"""CI check: a built wheel, installed into a fresh virtual environment, runs the README's commands
from a folder outside the checkout, so every file read at run time (protocols, published tables,
weights, embedded images, configs) ships inside the package."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", COLUMNS="200")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
         cwd=tmp_path, env=env)
    wheels = list(dist.glob("purifybench-*.whl"))
    assert len(wheels) == 1, wheels
    # the dependencies are already installed: reuse them, install only the wheel
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(tmp_path / "venv")
    py = str(tmp_path / "venv" / "bin" / "python")
    bench = str(tmp_path / "venv" / "bin" / "bench")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])], cwd=tmp_path, env=env)
    work = tmp_path / "elsewhere"
    work.mkdir()
    site = _run([py, "-c", "import benchmark, configs, defenses, leaderboards; "
                 "print(benchmark.__file__); print(configs.__file__); print(defenses.__file__)"], cwd=work, env=env)
    for line in site.split():  # the venv's copy, not the checkout (an editable install points there)
        assert Path(line).resolve().is_relative_to((tmp_path / "venv").resolve()), site
    _run([bench, "run", "--defense", "standard", "--threat", "linf", "--scale", "smoke", "--subset", "first:4",
          "--quiet", "--out", "runs/std"], cwd=work, env=env)
    summary = json.loads((work / "runs/std/summary.json").read_text())
    assert summary["n"] == 4 and summary["attacks"]["clean"]["n"] == 4
    # a shipped protocol found by name (configs/protocols inside the package)
    _run([bench, "run", "--defense", "atop_gan_rt1", "--protocol", "atop_table7", "--scale", "smoke",
          "--subset", "first:2", "--attacks", "clean,fgsm", "--quiet", "--out", "runs/proto"], cwd=work, env=env)
    rec = json.loads((work / "runs/proto/record.json").read_text())
    assert rec["protocol"] == "atop_table7" and rec["attacks"][0]["params"]["noise_policy"] == "eot:2"
    out = _run([bench, "reproduce", "atop_table8", "--scale", "smoke", "--defenses", "atop_gan_rt1",
                "--results", "runs", "--quiet"], cwd=work, env=env)
    assert "atop_table8 at scale smoke" in out and "first 8 of the protocol's 512 images" in out
    assert len(list((work / "runs/reproduce/atop_table8").glob("*/summary.json"))) == 1
    board = _run([bench, "leaderboard", "--dataset", "cifar10", "--results", "runs"], cwd=work, env=env)
    assert "standard" in board and "published" in board  # our run beside leaderboards/published/*.yaml
    # a training config by its documented configs/... path, from outside the checkout
    _run([py, "-c", "from benchmark.config import read_yaml; "
          "assert read_yaml('configs/train/cifar10_standard.yaml')['dataset'] == 'cifar10'; "
          "from leaderboards.gate import load_baseline; assert load_baseline('configs/ci/baseline.yaml')"],
         cwd=work, env=env)
