"""--precision bf16: attack gradients under autocast only after a gradient check; reports stay fp32."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import attacks
from attacks.precision import AutocastDefense, choose_precision, full_precision, per_sample_cosine
from benchmark.config import config_hash, to_dict
from benchmark.data import EvalSet
from benchmark.errors import BenchError
from benchmark.runner import RunSpec, run, spec_hash
from defenses.base import Defense, Stage, randn

ROOT = Path(__file__).resolve().parent.parent


class Recorder(nn.Module):
    """Linear classifier on 8x8 images that logs (autocast on, grad on) per call; with
    ``wrong_under_autocast`` it mirrors the image when autocast is on (a bf16 path whose
    gradient is wrong)."""

    def __init__(self, wrong_under_autocast: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(3 * 8 * 8, 10)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(10, 3 * 8 * 8, generator=g) * 0.3)
            self.lin.bias.zero_()
        self.wrong = wrong_under_autocast
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = torch.is_autocast_enabled(x.device.type)
        self.calls.append((on, torch.is_grad_enabled()))
        if self.wrong and on:
            x = x.flip(-1)
        return self.lin(x.flatten(1))


class Blur(Stage):
    """A stochastic transform, so BPDA and noise delegation are exercised too."""

    noise_names = ("blur",)

    def sample_noise(self, x, generator):
        return {"blur": randn(x.shape, generator, x)}

    def forward(self, x, noise):
        return (x + 0.01 * noise["blur"]).clamp(0, 1)


def evalset(n: int = 8) -> EvalSet:
    """Random images labelled by the (fp32) Recorder itself: clean accuracy 100%, so PGD has work."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = Recorder()(x).argmax(1)
    return EvalSet(x, y, [f"img{i}" for i in range(n)], "toy", "random", f"first:{n}", [str(i) for i in range(10)])


def spec(**kw) -> RunSpec:
    # diagnostics off: their fp32 probes of the defense are not the attack whose precision is checked
    base = dict(defense="toy", dataset="toy", attacks=["pgd"], steps=3, batch_size=4, scale="full", precision="bf16",
                diagnostics=False)
    return RunSpec(**{**base, **kw})


@pytest.fixture
def predict_spy(monkeypatch):
    """Record, for every final prediction, the defense type it got and whether autocast was on."""
    seen: list[tuple[type, bool]] = []
    real = attacks.predict

    def spy(defense, x, **kw):
        seen.append((type(defense), torch.is_autocast_enabled(x.device.type)))
        return real(defense, x, **kw)

    monkeypatch.setattr(attacks, "predict", spy)
    return seen


def test_check_passes_run_records_bf16_and_reports_stay_fp32(tmp_path, predict_spy):
    clf = Recorder()
    d = Defense(clf, name="toy").freeze()
    t0 = time.perf_counter()
    res = run(spec(), out=tmp_path / "r", device=torch.device("cpu"), defense=d, evalset=evalset())
    elapsed = time.perf_counter() - t0
    rec = json.loads((res.dir / "record.json").read_text())
    assert rec["precision"] == "bf16" and rec["precision_requested"] == "bf16"
    pc = rec["precision_check"]
    assert pc["passed"] and pc["used"] == "bf16" and pc["threshold"] == 0.99
    assert 0.99 <= pc["min_cosine"] <= pc["mean_cosine"] <= 1.0 + 1e-9
    assert res.summary["attacks"]["pgd"]["n"] == 8
    # the attack's gradients ran under autocast, every forward without a gradient (the attack's
    # candidate evaluation, the NaN check, clean and final predictions) in fp32
    grad_calls = [on for on, grad in clf.calls if grad]
    assert len(grad_calls) > 2 and sum(grad_calls) == len(grad_calls) - 1  # one fp32 pass: the probe's reference
    assert not any(on for on, grad in clf.calls if not grad)
    assert predict_spy and all(t is Defense and not on for t, on in predict_spy)
    # the check's time is stored apart from the attack's: a real duration (it ran two forward and
    # backward passes), within this call's wall time, and not counted in the attack loop's
    timing = json.loads((res.dir / "timing.json").read_text())
    assert 0 < timing["precision_check_s"] and timing["precision_check_s"] + timing["wall_s_this_invocation"] <= elapsed


def test_wrong_bf16_gradient_fails_check_and_run_stays_fp32(tmp_path):
    clf = Recorder(wrong_under_autocast=True)
    d = Defense(clf, name="toy").freeze()
    res = run(spec(), out=tmp_path / "r", device=torch.device("cpu"), defense=d, evalset=evalset())
    rec = json.loads((res.dir / "record.json").read_text())
    assert rec["precision"] == "fp32" and rec["precision_requested"] == "bf16"
    pc = rec["precision_check"]
    assert not pc["passed"] and pc["used"] == "fp32" and pc["min_cosine"] < 0.99
    # only the probe's own bf16 pass ran under autocast; the attack did not
    assert sum(on for on, _ in clf.calls) == 1
    # the failed check is still a bf16 *request*: it cannot resume into a plain fp32 folder, nor back
    with pytest.raises(BenchError, match="holds a different run"):
        run(spec(precision="fp32"), out=res.dir, device=torch.device("cpu"), defense=d, evalset=evalset())


def test_bf16_never_resumes_into_fp32_folder_and_fp32_hash_is_unchanged(tmp_path):
    d = Defense(Recorder(), name="toy").freeze()
    fp = run(spec(precision="fp32"), out=tmp_path / "r", device=torch.device("cpu"), defense=d, evalset=evalset())
    rec = json.loads((fp.dir / "record.json").read_text())
    assert rec["precision"] == "fp32" and "precision_check" not in rec
    # fp32 records hash as before the option existed (old run folders still resume)
    ident = {k: v for k, v in rec.items() if k not in ("run_hash", "versions", "git_commit", "device", "precision")}
    assert rec["run_hash"] == config_hash(ident)
    with pytest.raises(BenchError, match="holds a different run"):
        run(spec(), out=fp.dir, device=torch.device("cpu"), defense=d, evalset=evalset())
    assert run(spec(precision="fp32"), out=fp.dir, device=torch.device("cpu"), defense=d, evalset=evalset()).resumed
    s = spec(precision="fp32")
    legacy = to_dict(s)
    legacy.pop("precision")
    legacy.pop("defense_options")  # nor did it have defense options (empty ones leave the hash alone)
    legacy.pop("protocol_cut")  # nor a protocol's scale cut (an empty one leaves it alone too)
    assert spec_hash(s) == config_hash(legacy) and spec_hash(spec()) != spec_hash(s)


def test_autocast_view_delegates_and_bpda_runs_in_bf16():
    clf = Recorder()
    d = Defense(clf, transform=Blur(), name="toy").freeze()
    low = AutocastDefense(d)
    assert low.stochastic and low.noise_names == ("blur",) and low.has_purifier and full_precision(low) is d
    assert not getattr(low, "opaque", False) and full_precision(d) is d
    x = evalset(4).images
    noise = low.sample_noise(x, torch.Generator().manual_seed(0))
    assert low(x, noise).dtype == torch.float32 and low.purify(x, noise).dtype == torch.float32
    assert torch.allclose(low(x, noise), d(x, noise), atol=0.05)
    _, check = choose_precision(d, x, evalset(4).labels, precision="bf16", generator=torch.Generator().manual_seed(0),
                                grad_modes=("bpda", "exact"))
    assert check.passed and set(check.per_mode) == {"bpda", "exact"}
    assert choose_precision(d, x, evalset(4).labels, precision="fp32", generator=None) == (d, None)


def test_per_sample_cosine_edge_cases():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    assert per_sample_cosine(a, b).tolist() == pytest.approx([1.0, 1.0, 0.0, -1.0])


def test_bad_precision_is_one_error_line():
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "benchmark.cli", "run", "--defense", "standard",
                          "--precision", "fp16", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error:") and "precision" in lines[0] and "bf16" in lines[0]
