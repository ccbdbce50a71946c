"""The runner and results store: reproducible, resumable after SIGKILL, clear errors."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parent.parent
PLUG = "tests/plugins/toy_defenses.py"


def bench(*args, timeout=600):
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "benchmark.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(out, pattern):
    assert out.returncode == 2, (out.stdout[-1500:], out.stderr[-1500:])
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert pattern in lines[0], lines[0]


RUN = ["run", "--defense", f"{PLUG}:noisy", "--attacks", "pgd_eot,dwbox_both", "--steps", "2", "--eot", "2",
       "--subset", "first:24", "--batch-size", "4", "--scale", "full", "--eval-repeats", "3", "--quiet"]


def files(d: Path) -> dict[str, bytes]:
    return {name: (d / name).read_bytes() for name in ("record.json", "samples.jsonl", "summary.json")}


def test_same_seed_gives_byte_identical_results(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert bench(*RUN, "--out", str(a)).returncode == 0
    assert bench(*RUN, "--out", str(b)).returncode == 0
    fa, fb = files(a), files(b)
    assert fa["samples.jsonl"] == fb["samples.jsonl"] and fa["summary.json"] == fb["summary.json"]
    assert fa["record.json"] == fb["record.json"]
    rows = [json.loads(x) for x in fa["samples.jsonl"].decode().splitlines()]
    assert len(rows) == 24 and set(rows[0]) == {"id", "label", "clean", "pgd_eot", "dwbox_both"}
    # only clean-correct images (majority of the 3 clean predictions) are attacked; the others are
    # marked skipped, with the clean image as their "adversarial" one
    for r in rows:
        ok = sum(p == r["label"] for p in r["clean"]) * 2 > 3
        for atk in ("pgd_eot", "dwbox_both"):
            assert (len(r[atk]["preds"]) == 3) == ok and r[atk]["norm"] <= 8 / 255 + 1e-6
            assert ok or (r[atk]["skipped"] == "clean-misclassified" and r[atk]["norm"] == 0.0)
    assert 0 < sum(bool(r["pgd_eot"]["preds"]) for r in rows) < 24  # both kinds occur here
    summary = json.loads(fa["summary.json"])
    e = summary["attacks"]["pgd_eot"]
    ref = binomtest(e["correct"], 24).proportion_ci(confidence_level=0.95, method="exact")  # computed another way
    assert e["ci95"] == pytest.approx([ref.low, ref.high], abs=1e-9)
    assert summary["worst_case"]["correct"] <= min(v["correct"] for v in summary["attacks"].values())
    assert summary["stochasticity_gap"] and summary["stochasticity_gap"][0]["dw_box"] == "dwbox_both"
    # a different seed is a different run: the same folder refuses it and stays untouched
    out = bench(*RUN, "--out", str(a), "--seed", "1")
    one_line_error(out, "holds a different run")
    assert files(a) == fa


def test_sigkill_at_random_points_then_resume_matches(tmp_path):
    ref = tmp_path / "ref"
    t0 = time.time()
    assert bench(*RUN, "--out", str(ref)).returncode == 0
    full = time.time() - t0
    expected = files(ref)
    rng = random.Random(1234)
    d = tmp_path / "killed"
    for i in range(10):
        proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "benchmark.cli", *RUN, "--out", str(d)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for p in d.rglob("*.json"):  # never a torn file
            json.loads(p.read_text())
    out = bench(*RUN, "--out", str(d))
    assert out.returncode == 0, out.stderr[-2000:]
    assert files(d) == expected


@pytest.mark.parametrize("args, pattern", [
    (["--attacks", "nope"], "unknown attack 'nope'"),
    (["--threat", "l7"], "unknown threat"),
    (["--protocol", "no_such_protocol"], "unknown protocol"),
    (["--eps", "0"], "eps must be in (0, 1]"),
    (["--eps", "2"], "eps must be in (0, 1]"),
    (["--eps", "abc"], "--eps expects a number"),
    (["--steps", "0"], "steps must be positive"),
    (["--subset", "first:x"], "subset"),
    (["--subset", "first:100000"], "only 1000"),
    (["--scale", "huge"], "unknown scale"),
    (["--eval-repeats", "0"], "eval repeats must be positive"),
])
def test_bad_run_options(args, pattern, tmp_path):
    one_line_error(bench("run", "--defense", f"{PLUG}:tiny", "--out", str(tmp_path / "o"), *args), pattern)


def test_plugin_errors(tmp_path):
    one_line_error(bench("run", "--defense", "tests/plugins/missing.py:tiny"), "plugin file not found")
    one_line_error(bench("run", "--defense", f"{PLUG}:nothing_here"), "has no callable 'nothing_here'")
    one_line_error(bench("run", "--defense", "no_such_pkg_xyz.mod:make"), "plugin module 'no_such_pkg_xyz.mod' not found")
    one_line_error(bench("run", "--defense", f"{PLUG}:not_a_model"), "returned str")
    one_line_error(bench("run", "--defense", f"{PLUG}:opaque", "--attacks", "dwbox_both", "--out", str(tmp_path / "o")),
                   "opaque module")


def test_nan_logits_stop_naming_the_batch(tmp_path):
    one_line_error(bench("run", "--defense", f"{PLUG}:nan_model", "--attacks", "pgd", "--out", str(tmp_path / "o")),
                   "NaN or inf logits on batch 0")


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(bench("run", "--defense", f"{PLUG}:tiny", "--out", str(blocker / "sub")), "not writable")


def test_bad_protocol_yaml(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\ncitation: y\nattacks: [pgd]\nstepz: 3\n")
    one_line_error(bench("run", "--defense", f"{PLUG}:tiny", "--protocol", str(bad)), "unknown key 'stepz'")


def test_opaque_plugin_gets_fresh_and_eot(tmp_path):
    out = bench("run", "--defense", f"{PLUG}:opaque", "--attacks", "pgd_eot", "--steps", "2", "--eot", "2",
                "--subset", "first:8", "--out", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "opaque randomness" in out.stdout


SLOW = '''import os, time
import torch
from torch import nn


class Slow(nn.Module):
    """A tiny CNN that sleeps SLOW_S seconds per forward pass (0 when unset)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                 nn.Flatten(), nn.Linear(128, 10))

    def forward(self, x):
        time.sleep(float(os.environ.get("SLOW_S", "0")))
        return self.net(x)


def slow():
    return Slow()
'''


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path):
    """SIGINT mid-run: exit 130, finished batches kept, a hint to resume; the same command resumes.

    The defense sleeps on every forward pass while SLOW_S is set, so after the first batch is
    stored the run has seconds of work left: the signal always lands mid-run (no race, no skip).
    The resume runs without the sleep (same run hash: the environment is not configuration)."""
    plug = tmp_path / "slow_plugin.py"
    plug.write_text(SLOW)
    d = tmp_path / "int"
    args = ["run", "--defense", f"{plug}:slow", "--attacks", "pgd", "--steps", "2", "--subset", "first:24",
            "--batch-size", "4", "--scale", "full", "--quiet", "--out", str(d)]
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "benchmark.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SLOW_S": "0.25"})
    deadline = time.time() + 300
    while not (d / "batches" / "000000.json").is_file() and time.time() < deadline:  # one batch stored
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first batch was stored"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    kept = sorted(p.name for p in (d / "batches").glob("*.json"))
    assert kept and len(kept) < 6 and not (d / "summary.json").exists()
    out = bench(*args)
    assert out.returncode == 0 and "resumed" in out.stdout, out.stderr[-2000:]
    assert len((d / "samples.jsonl").read_text().splitlines()) == 24


def test_eps_override_keeps_the_presets_step_ratio():
    """--eps 1/255 with the pgd preset's fixed 2/255 step would only bounce between corners."""
    from benchmark.runner import RunSpec, build_attacks

    def step(**kw):
        (atk,) = build_attacks(RunSpec(defense="x", attacks=["pgd"], **kw), stochastic=False)
        return atk.params["eps"], atk.params["step_size"]

    assert step() == pytest.approx((8 / 255, 2 / 255))
    assert step(eps=1 / 255) == pytest.approx((1 / 255, 0.25 / 255))
    assert step(eps=16 / 255) == pytest.approx((16 / 255, 4 / 255))
    # an explicit step (a protocol's) is kept as written
    eps, st = step(eps=4 / 255, attack_overrides={"pgd": {"step_size": 0.5 / 255}})
    assert (eps, st) == pytest.approx((4 / 255, 0.5 / 255))
    # L2: the default step is already eps/4, scaling keeps it so
    assert step(eps=1.0, threat="l2") == pytest.approx((1.0, 0.25))
