"""Plain progress lines (benchmark.progress), pass counting and --dry-run (benchmark.cost), scale cuts
(benchmark.scalecut)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cost import Passes, count_attack
from benchmark.progress import LineReporter, format_seconds

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_line_reporter_counts_and_eta():
    clock, out = Clock(), io.StringIO()
    rep = LineReporter(8, ["a", "b"], stream=out, clock=clock)
    # batch 0 (4 images): attack a after 10 s, b after 30 s; batch stored
    clock.t = 10.0
    rep("a", 0, 4)
    clock.t = 30.0
    rep("b", 0, 4)
    rep("batch", 0, 4)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0] == "progress: a batch 0: 4/8 images, elapsed 10s, eta 30s"  # 4 of 16 units in 10 s: 12 left
    assert lines[1] == "progress: b batch 0: 4/8 images, elapsed 30s, eta 30s"  # 8 of 16 units in 30 s
    assert lines[2] == "progress: batch 0 stored: 4/8 images, elapsed 30s, eta 30s"


def test_line_reporter_resume_skips_do_not_count_in_rate():
    clock, out = Clock(), io.StringIO()
    rep = LineReporter(8, ["a"], stream=out, clock=clock)
    rep("batch", 0, 4)  # stored earlier: no attack line for it
    clock.t = 20.0
    rep("a", 1, 4)
    rep("batch", 1, 4)
    lines = out.getvalue().splitlines()
    assert lines[0] == "progress: batch 0 already stored: 4/8 images, elapsed 0s, eta ?"
    assert lines[1] == "progress: a batch 1: 8/8 images, elapsed 20s, eta 0s"


def test_format_seconds():
    assert [format_seconds(s) for s in (0.4, 59.6, 61, 3599, 3600 * 2 + 5 * 60)] == ["0s", "60s", "1m01s", "59m59s", "2h05m"]


def test_count_pgd_eot_by_hand():
    # stochastic view, 10 steps x 4 draws on 5 images, 3 final passes: 200 gradient, 15 forward
    p = count_attack("pgd", {"steps": 10, "restarts": 1, "grad_mode": "exact"}, m=5, draws=4, deterministic=False,
                     predict_passes=3, robust=0.5)
    assert p.grad == {("exact", None): 200.0} and p.fwd == 15.0
    # two restarts: each restart's last iterate is judged on its 4 draws -> + 2 x 4 x 5 forward
    p = count_attack("pgd", {"steps": 10, "restarts": 2}, m=5, draws=4, deterministic=False, predict_passes=1,
                     robust=0.5)
    assert p.grad_total == 400.0 and p.fwd == 5 + 40


def test_count_pgd_deterministic_early_stop_by_hand():
    # 10 images, 20 steps, half survive: survivors 20 steps, fooled 1 step -> 10 x (0.5 x 20 + 0.5) = 105
    # forward: clean candidate 10 + final evaluation of the 5 live + prediction 10
    p = count_attack("pgd", {"steps": 20, "restarts": 1}, m=10, draws=1, deterministic=True, predict_passes=1,
                     robust=0.5)
    assert p.grad_total == 105.0 and p.fwd == 10 + 5 + 10


def test_count_autoattack_rand_by_hand():
    # rand: APGD-CE on 8, APGD-DLR on the 2 survivors (robust 0.25); 20 steps -> 21 gradients x 4 draws
    p = count_attack("autoattack", {"version": "rand", "steps": 20, "eval_iter": 4, "restarts": None},
                     m=8, draws=4, deterministic=False, predict_passes=1, robust=0.25)
    assert p.grad_total == 21 * 4 * 8 + 21 * 4 * 2
    # forward: clean check 4 x 8; per component: APGD's own check + 4 evaluation passes; final 8
    assert p.fwd == 4 * 8 + (8 + 4 * 8) + (2 + 4 * 2) + 8


def test_count_autoattack_standard_by_hand():
    # deterministic: 1 evaluation pass; 9 target classes; square 100 queries; all 4 survive (upper bound)
    p = count_attack("autoattack", {"version": "standard", "steps": 10, "eval_iter": 20, "square_queries": 100},
                     m=4, draws=1, deterministic=True, predict_passes=1, robust=1.0, n_classes=10)
    grad = 11 * 4 + 9 * 11 * 4 + 9 * 10 * 4  # apgd-ce, apgd-t, fab-t
    fwd = 4 + (4 + 4) + (9 * 4 + 4) + (9 * 11 * 4 + 4) + (101 * 4 + 4) + 4
    assert p.grad_total == grad and p.fwd == fwd


def test_passes_add():
    a = Passes(fwd=1.0, grad={("exact", None): 2.0})
    a += Passes(fwd=2.0, grad={("exact", None): 1.0, ("bpda", None): 4.0})
    assert a.fwd == 3.0 and a.grad == {("exact", None): 3.0, ("bpda", None): 4.0} and a.grad_total == 7.0


def _bench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_redirected_run_prints_progress_lines_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--defense", "standard", "--scale", "smoke", "--subset", "first:4", "--attacks", "fgsm,pgd",
            "--batch-size", "2", "--out", str(out)]
    r = _bench(args, tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("progress: ")]
    # 2 batches x (2 attacks + the batch)
    assert len(lines) == 6, r.stderr
    assert lines[0].startswith("progress: fgsm batch 0: 2/4 images, elapsed ")
    assert lines[1].startswith("progress: pgd batch 0: 2/4 images")
    assert lines[2].startswith("progress: batch 0 stored: 2/4 images")
    assert lines[5].startswith("progress: batch 1 stored: 4/4 images") and lines[5].endswith("eta 0s")
    r2 = _bench(args, tmp_path)  # resumed: both batches are stored, nothing computed
    lines2 = [ln for ln in r2.stderr.splitlines() if ln.startswith("progress: ")]
    assert [ln.split(":")[1].strip() for ln in lines2] == ["batch 0 already stored", "batch 1 already stored"]
    r3 = _bench([*args, "--quiet"], tmp_path)
    assert "progress:" not in r3.stderr


def test_dry_run_prints_projection_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    r = _bench(["run", "--defense", "standard", "--scale", "smoke", "--subset", "first:4", "--attacks", "pgd",
                "--out", str(out), "--dry-run", "--dry-run-json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert "PROJECTED wall" in r.stdout
    d = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("DRYRUN_JSON "))[len("DRYRUN_JSON "):])
    # smoke pgd: 2 steps; deterministic early stop: m x (r x 2 + (1 - r)) gradient passes
    m, rb = d["attacked"], d["robust"]
    assert d["n"] == 4 and d["grad_passes"] == pytest.approx(m * (rb * 2 + (1 - rb)))
    assert d["total_s"] > d["setup_s"] > 0
    bad = _bench(["run", "--defense", "standard", "--scale", "smoke", "--subset", "first:4", "--dry-run",
                  "--assume-robust", "2"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --assume-robust")


def test_scale_cut_applied_recorded_and_shown(tmp_path):
    """A defense's declared cut: into the options (the user's win), the record's scale_limits, the title."""
    from benchmark.registry import DEFENSES, load_builtins
    from benchmark.report import summary_table
    from benchmark.runner import RunSpec, SCALES, load_spec_evalset, run
    from benchmark.scalecut import apply_scale_cut, cut_text, scale_limits

    load_builtins()
    std = DEFENSES.get("standard").factory

    def factory(*, dataset: str = "cifar10", device="cpu", width: int = 0, **cfg):
        d = std(dataset=dataset, device=device, **cfg)
        d.info["width"] = width
        return d

    name = "test_cut_standard"
    if name not in DEFENSES:
        DEFENSES.add(name, factory, datasets=("cifar10",), scale_cuts={"smoke": {"n": 3, "defense_options": {"width": 7}}})
    spec = RunSpec(defense=name, scale="smoke", attacks=["fgsm"])
    ev = load_spec_evalset(spec)
    assert len(ev) == 3 and spec.subset == "first:3" and spec.defense_options == {"width": 7}
    res = run(spec, out=tmp_path / "r", device=__import__("torch").device("cpu"), evalset=ev)
    lim = res.record["scale_limits"]
    assert lim == {**SCALES["smoke"], "n": 3, "defense_options": {"width": 7}}
    assert res.record["defense_info"]["width"] == 7 and res.record["defense_options"] == {"width": 7}
    assert cut_text(res.record) == "defense width=7, n=3"
    assert "scale smoke (cut: defense width=7, n=3)" in str(summary_table(res.record, res.summary).title)
    # the user's option wins, and then the record does not claim the cut's
    user = apply_scale_cut(RunSpec(defense=name, scale="smoke", defense_options={"width": 2}))
    assert user.defense_options == {"width": 2} and "defense_options" not in scale_limits(user)
    # no cut at full scale
    full = apply_scale_cut(RunSpec(defense=name, scale="full"))
    assert full.defense_options == {} and scale_limits(full) == {}


def test_training_prints_one_line_per_epoch_with_eta(tmp_path, capsys):
    """bench train ddpm (and addt, which shares its loop): one plain line per epoch, with epochs done of
    the total and an ETA, also when stdout is not a terminal (pytest captures it)."""
    import re

    from benchmark.train import ddpm
    from tests.test_diffusion import SMOKE, _image_folder

    _image_folder(tmp_path / "data")
    # 40 training images, batch 16: 2 steps per epoch, 2 epochs
    ddpm.main("configs/train/ddpm_cifar10.yaml", device="cpu", out_dir=str(tmp_path / "a"),
              data_root=str(tmp_path / "data"), overrides=SMOKE)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if re.search(r"\] epoch \d+/2: ", ln)]
    assert len(lines) == 2, lines
    assert re.search(r"epoch 1/2: .* step 2, .*, eta \d+s$", lines[0]) and lines[1].endswith("eta 0s")


def test_square_budget_cut_reaches_autoattack_and_square_and_is_shown():
    """at_pgd's cpu cut caps Square's 5000 queries at 1000 inside AutoAttack and alone; the budget
    column says so; an explicit override and the full scale keep the published 5000."""
    from benchmark.battery import BATTERY
    from benchmark.report import budget_text
    from benchmark.runner import RunSpec
    from benchmark.scalecut import scale_limits

    spec = RunSpec(defense="at_pgd", scale="cpu", attacks=["autoattack_standard", "square"])
    assert scale_limits(spec)["square_queries"] == 1000
    atks = {a.name: a for a in BATTERY.attacks(spec, stochastic=False)}
    assert atks["autoattack_standard"].params["square_queries"] == 1000
    assert atks["square"].params["square_queries"] == 1000
    text = budget_text({"params": dict(atks["square"].params), "threat": "linf"})
    assert "square=1000" in text
    own = RunSpec(defense="at_pgd", scale="cpu", attacks=["square"], attack_overrides={"square": {"square_queries": 3000}})
    assert BATTERY.attacks(own, stochastic=False)[0].params["square_queries"] == 3000
    full = RunSpec(defense="at_pgd", scale="full", attacks=["autoattack_standard"])
    assert BATTERY.attacks(full, stochastic=False)[0].params["square_queries"] == 5000
    std = RunSpec(defense="standard", scale="cpu", attacks=["autoattack_standard"])  # no cut: AutoAttack's own
    assert BATTERY.attacks(std, stochastic=False)[0].params["square_queries"] == 5000


def test_count_diagnostics_by_hand():
    """The post-run probes on min(8, survivors) images, counted by hand for PGD-10 on a deterministic
    defense: the run's PGD (10 steps), doubled (20) and at a large eps (10), each 8 images x steps
    gradients and 3 x 8 forwards (final, clean candidate, prediction), plus 2 x 8 loss and 2 x 8
    input-dependence forwards; a defense with no survivors costs nothing."""
    from benchmark.battery import BATTERY
    from benchmark.cost import count_diagnostics
    from benchmark.registry import DEFENSES, load_builtins
    from benchmark.runner import RunSpec

    load_builtins()
    spec = RunSpec(defense="standard", scale="cpu", attacks=["pgd"])
    atks = BATTERY.attacks(spec, stochastic=False)
    d = DEFENSES.create("standard", dataset="cifar10", device="cpu")
    name, p = count_diagnostics(spec, d, atks, m=40.0, robust=0.5)
    assert name == "diagnostics (8 survivors)"
    assert p.grad_total == 8 * (10 + 20 + 10) and p.fwd == 3 * 3 * 8 + 2 * 8 + 2 * 8
    _, p3 = count_diagnostics(spec, d, atks, m=6.0, robust=0.5)  # 3 survivors
    assert p3.grad_total == 3 * 40
    assert count_diagnostics(spec, d, atks, m=40.0, robust=0.0) is None
