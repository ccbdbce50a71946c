"""DiffPure CIFAR-10 (score_sde DDPM++ deep, reverse VP-SDE) and ADDT's VP-SDE family: the published network's
size and layout, outputs against the authors' code, the SDE against closed forms and diffusers' scheduler,
the authors' checkpoint containers, exact gradients, and `bench run` end to end at reduced width.

References from elsewhere: tests/data/score_sde_ncsnpp_cifar10.json was dumped once from the authors' own
code (NVlabs/DiffPure ``score_sde/models/ncsnpp.py`` with ``configs/cifar10.yml``; its ``RevVPSDE.f``; ADDT's
``ScoreSdeVpScheduler_Warp`` / ``ScoreSdeVpPipeline_Warp`` from ``vp_attack_eval_linf.py``), which are not
imported here; diffusers' ``ScoreSdeVpScheduler`` and ``EMAModel`` (pip) are called directly.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from benchmark.errors import BenchError
from defenses.base import Noise
from defenses.diffpure_sde import (
    ADDTVPPurifier, DiffPureSDECifarPurifier, continuous_marginal, load_ncsnpp, make_diffpure_sde,
)
from defenses.ncsnpp import CIFAR10_DDPMPP_DEEP, NCSNpp, reduced_config, state_layout

REF = json.loads((Path(__file__).parent / "data" / "score_sde_ncsnpp_cifar10.json").read_text())
SMALL = reduced_config()  # nf 16, 1 res block: the authors' reduced run in the JSON


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions: one thread (two threads spin-wait when the 2-core machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _seeded(scale: float):
    net = NCSNpp(SMALL).eval()
    g = torch.Generator().manual_seed(0)
    net.load_state_dict({k: torch.randn(v.shape, generator=g) * scale for k, v in net.state_dict().items()})
    return net, g


def test_published_network_size_layout_and_parameter_order_equal_the_authors():
    ref = {k: v for k, v in REF["full_layout"].items() if k != "sigmas"}  # the unused SMLD buffer is not kept
    assert "sigmas" in REF["full_layout"] and len(REF["full_layout"]) == 957
    layout = state_layout(CIFAR10_DDPMPP_DEEP)
    assert list(layout) == list(ref) and {k: list(v) for k, v in layout.items()} == ref
    with torch.device("meta"):
        net = NCSNpp()
        n = sum(p.numel() for p in net.parameters())
        order = [name for name, _ in net.named_parameters()]
    assert n == REF["full_params"] == 106_632_579
    assert order == REF["param_order"] and REF["ema_shadow_count"] == len(order) == 956  # EMA list order
    assert REF["ema_state_keys"] == ["decay", "num_updates", "shadow_params"]


def test_reduced_network_and_reverse_drift_equal_the_authors_code():
    net, g = _seeded(0.2)
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = net(x, torch.tensor(REF["labels"]))
        drift = DiffPureSDECifarPurifier(net).drift(x, 1.0 - torch.tensor(REF["rev_s"]))
    torch.testing.assert_close(out.flatten()[:16], torch.tensor(REF["out_first"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.flatten()[-16:], torch.tensor(REF["out_last"]), rtol=1e-4, atol=1e-5)
    assert abs(float(out.double().abs().sum()) - REF["out_abs_sum"]) < 1e-5 * REF["out_abs_sum"]
    torch.testing.assert_close(drift.flatten()[:8], torch.tensor(REF["rev_f_first"]), rtol=1e-4, atol=1e-4)
    assert abs(float(drift.double().abs().sum()) - REF["rev_f_abs_sum"]) < 1e-5 * REF["rev_f_abs_sum"]
    assert abs(math.sqrt(0.1 + 0.1 * 19.9) - REF["rev_g"]) < 1e-6  # g(s=0.9) = sqrt(beta(0.1))


class _Spy(torch.nn.Module):
    """Records (input, labels) of every call; returns zeros (eps = 0: the reverse SDE is linear)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return torch.zeros_like(x)


def test_solver_grid_labels_and_forward_marginal_as_diffpure():
    spy = _Spy()
    p = DiffPureSDECifarPurifier(spy)
    assert p.steps == 100  # torchsde's default dt 1e-3 over [0.9, 0.99999]
    x = torch.rand(2, 3, 32, 32)
    z = Noise(2, p.sample_noise(x, torch.Generator().manual_seed(0)))
    out = p(x, z)
    labels = [float(t[0]) for _, t in spy.calls]
    assert len(labels) == 100 and abs(labels[0] - 99.9) < 1e-3 and abs(labels[-1] - 999 * 1e-3) < 2e-3  # float32 grid, as torchsde's
    # x_t = sqrt(abar[99]) (2x - 1) + sqrt(1 - abar[99]) eps_f, abar of DiffPure's discrete betas (float64 here)
    ab = float(torch.prod(1 - torch.linspace(0.1 / 1000, 20 / 1000, 1000, dtype=torch.float64)[:100]))
    torch.testing.assert_close(spy.calls[0][0].double(), ab**0.5 * (2 * x.double() - 1) + (1 - ab) ** 0.5 * z["forward"].double(),
                               rtol=1e-5, atol=1e-5)
    mean_c, _ = continuous_marginal(torch.tensor(0.1, dtype=torch.float64))  # the continuous marginal is 1e-3 away
    assert abs(ab**0.5 - float(mean_c)) < 1e-3 and abs(float(mean_c) - math.exp(-0.25 * 0.01 * 19.9 - 0.05 * 0.1)) < 1e-12
    # eps = 0: y <- y (1 + beta h / 2) + sqrt(beta h) z, in float64
    y = spy.calls[0][0].double()
    s = 0.9
    for i in range(p.steps):
        h = min(s + 1e-3, 1 - 1e-5) - s
        beta = 0.1 + (1 - s) * 19.9
        y = y * (1 + 0.5 * beta * h) + (beta * h) ** 0.5 * z["reverse"][:, i].double()
        s += h
    torch.testing.assert_close(out.double(), (y + 1) / 2, rtol=1e-4, atol=1e-4)


def test_addt_pc_sampler_equals_addts_code_and_diffusers_predictor():
    ref = REF["addt_pc"]
    net, g = _seeded(0.05)
    x = torch.rand(2, 3, 32, 32, generator=g)
    ef = torch.randn(2, 3, 32, 32, generator=g)
    z = torch.randn(2, len(ref["times"]), 2, 3, 32, 32, generator=g)
    p = ADDTVPPurifier(net, inference_steps=ref["inference_steps"], strength=ref["strength"])
    torch.testing.assert_close(p.times, torch.tensor(ref["times"]))
    with torch.no_grad():
        out = p(x, Noise(2, {"forward": ef, "reverse": z}))
    torch.testing.assert_close(out.flatten()[:16], torch.tensor(ref["out_first"]), rtol=1e-4, atol=1e-4)
    assert abs(float(out.double().abs().sum()) - ref["out_abs_sum"]) < 1e-5 * ref["out_abs_sum"]
    # ADDT's full grid: 1000 steps, strength 0.1 -> the 101 times from t = 0.101 to 1e-3
    full = ADDTVPPurifier(net)
    assert full.steps == 101 and abs(float(full.times[0]) - 0.101) < 1e-6 and abs(float(full.times[-1]) - 1e-3) < 1e-7
    # snr = 0 switches the corrector off: the predictor alone is diffusers' ScoreSdeVpScheduler.step_pred
    import benchmark.compat  # noqa: F401
    from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler

    class Lin(torch.nn.Module):  # a cheap eps model with a time dependence
        def forward(self, y, labels):
            return 0.3 * y + 1e-3 * labels.view(-1, 1, 1, 1)

    net = Lin()
    pred = ADDTVPPurifier(net, inference_steps=50, snr=0.0)
    sched = ScoreSdeVpScheduler(num_train_timesteps=1000)
    sched.set_timesteps(50)
    gen = torch.Generator().manual_seed(3)
    zp = torch.zeros(2, pred.steps, 2, 3, 32, 32)
    with torch.no_grad():
        y = continuous_marginal(pred.times[0])[0] * (2 * x - 1) + continuous_marginal(pred.times[0])[1] * ef
        for i, t in enumerate(sched.timesteps[44:]):
            tt = t.expand(2)
            y, mean = sched.step_pred(net(y, tt * 49), y, tt, generator=gen)
        g2 = torch.Generator().manual_seed(3)
        for i in range(pred.steps):
            zp[:, i, 1] = torch.randn(2, 3, 32, 32, generator=g2)
        ours = pred(x, Noise(2, {"forward": ef, "reverse": zp}))
    torch.testing.assert_close(ours, (mean + 1) / 2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "pc"])
def test_exact_input_gradient_checkpointed_equals_plain_autograd(sampler):
    torch.manual_seed(0)
    net = NCSNpp(reduced_config(nf=4, image_size=16, attn_resolutions=(8,))).double().eval()
    for p in net.parameters():
        p.requires_grad_(False)

    def make(ckpt):
        if sampler == "euler":
            return DiffPureSDECifarPurifier(net, t=100, dt=0.05, use_checkpoint=ckpt)
        return ADDTVPPurifier(net, inference_steps=10, strength=0.1, use_checkpoint=ckpt)

    a, b = make(True), make(False)
    assert a.steps == 2
    x0 = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    z = Noise(2, {k: v.double() for k, v in a.sample_noise(x0.float(), torch.Generator().manual_seed(2)).items()})
    w = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    grads = []
    for pur in (a, b):
        x = x0.clone().requires_grad_(True)
        (pur(x, z) * w).sum().backward()
        grads.append(x.grad)
    assert torch.isfinite(grads[0]).all() and float(grads[0].abs().sum()) > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    v = torch.randn_like(x0)
    with torch.no_grad():
        fd = ((a(x0 + 1e-6 * v, z) * w).sum() - (a(x0 - 1e-6 * v, z) * w).sum()) / 2e-6
    assert abs(float((grads[0] * v).sum()) - float(fd)) < 1e-5 * max(1.0, abs(float(fd)))


def _score_sde_checkpoint(path, cfg, seed=1):
    """The score_sde container (run_lib.save_checkpoint): optimizer, DataParallel model, EMA list, step."""
    torch.manual_seed(seed)
    model = NCSNpp(cfg)
    raw = {f"module.{k}": torch.randn_like(v) for k, v in model.state_dict().items()}
    raw["module.sigmas"] = torch.exp(torch.linspace(math.log(50), math.log(0.01), 1000, dtype=torch.float64))
    shadow = [torch.randn_like(p) for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    torch.save({"optimizer": opt.state_dict(), "model": raw, "ema": {"decay": 0.9999, "num_updates": 8, "shadow_params": shadow},
                "step": 950001}, path)
    return raw, shadow


def test_authors_containers_load_and_bad_files_fail(tmp_path):
    import benchmark.compat  # noqa: F401
    from diffusers.training_utils import EMAModel

    path = tmp_path / "checkpoint_8.pth"
    raw, shadow = _score_sde_checkpoint(path, SMALL)
    net, src = load_ncsnpp(path, SMALL)
    assert src["format"] == "score_sde (ema)" and len(src["sha256"]) == 64
    for p, s in zip(net.parameters(), shadow):  # EMA weights, in parameter order, as DiffPure's ema.copy_to
        assert torch.equal(p, s)
    net_raw, _ = load_ncsnpp(path, SMALL, use_ema=False)
    assert torch.equal(net_raw.all_modules[2].weight, raw["module.all_modules.2.weight"])
    # ADDT: <output_dir>/unet/net.pth (plain state dict) and unet_ema/ema_net.pth (diffusers EMAModel state)
    (tmp_path / "addt" / "unet").mkdir(parents=True)
    ref = NCSNpp(SMALL)
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "addt" / "unet" / "net.pth")
    net2, src2 = load_ncsnpp(tmp_path / "addt", SMALL, kind="addt_sde")
    assert src2["format"] == "state dict" and torch.equal(net2.all_modules[-1].weight, ref.all_modules[-1].weight)
    ema = EMAModel(ref.parameters(), decay=0.9999)
    torch.save(ema.state_dict(), tmp_path / "ema_net.pth")
    net3, src3 = load_ncsnpp(tmp_path / "ema_net.pth", SMALL, kind="addt_sde")
    assert src3["format"] == "diffusers EMAModel" and torch.equal(net3.all_modules[0].bias, ref.all_modules[0].bias)
    # bad files
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(path.read_bytes()[:4000])
    pick = tmp_path / "pickle.pth"
    torch.save({"model": ref}, pick)
    short = tmp_path / "short.pth"
    torch.save({"ema": {"decay": 0.9, "num_updates": 1, "shadow_params": shadow[:-1]}}, short)
    wide = tmp_path / "wide.pth"
    _score_sde_checkpoint(wide, reduced_config(nf=8))
    for f, pattern in ((trunc, "corrupt"), (pick, "needs pickle"), (short, "holds 955 tensors|holds .* tensors"),
                       (wide, "does not fit"), (tmp_path / "absent.pth", "checkpoint_8.pth")):
        with pytest.raises(BenchError, match=pattern):
            load_ncsnpp(f, SMALL)
    with pytest.raises(BenchError, match="score_sde_pytorch"):
        make_diffpure_sde(classifier="cifar10_standard")
    with pytest.raises(BenchError, match="Standard.pt"):
        make_diffpure_sde(weights=str(path), nf=16, num_res_blocks=1)


def _bench(capsys, *args):
    from benchmark.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bench_run_end_to_end_at_reduced_width(tmp_path, capsys):
    path = tmp_path / "checkpoint_8.pth"
    _score_sde_checkpoint(path, reduced_config(nf=8))
    small = ["--defense-opt", "nf=8", "--defense-opt", "num_res_blocks=1", "--defense-opt", "classifier=cifar10_standard",
             "--scale", "smoke", "--eot", "1", "--eval-repeats", "1", "--memory-format", "contiguous"]
    code, _, err = _bench(capsys, "run", "--defense", "diffpure_sde", "--subset", "first:2", "--defense-opt", f"weights={path}",
                          *small, "--defense-opt", "dt=0.1", "--attacks", "fgsm", "--attack-all", "--quiet",
                          "--out", str(tmp_path / "run"))
    assert code == 0, err[-3000:]
    text = (tmp_path / "run" / "record.json").read_text()
    assert "diffpure_sde" in text and "euler-maruyama" in text and "score_sde (ema)" in text
    (tmp_path / "addt" / "unet").mkdir(parents=True)
    torch.save(NCSNpp(reduced_config(nf=8)).state_dict(), tmp_path / "addt" / "unet" / "net.pth")
    code, _, err = _bench(capsys, "run", "--defense", "addt_sde", "--subset", "first:2", "--defense-opt",
                          f"weights={tmp_path / 'addt'}", *small, "--defense-opt", "inference_steps=10", "--attacks", "clean",
                          "--quiet", "--out", str(tmp_path / "run2"))
    assert code == 0, err[-3000:]
    assert "predictor-corrector" in (tmp_path / "run2" / "record.json").read_text()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(path.read_bytes()[:4000])
    code, _, err = _bench(capsys, "run", "--defense", "diffpure_sde", "--subset", "first:2", "--defense-opt",
                          f"weights={trunc}", *small, "--attacks", "clean")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "corrupt checkpoint" in lines[0], err


def test_robustbench_standard_classifier_from_a_local_file(tmp_path):
    """DiffPure's classifier: RobustBench's Linf 'Standard' WRN-28-10 from its checkpoint format ({'state_dict': module.*})."""
    import benchmark.compat  # noqa: F401
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    from defenses.diffpure_sde import robustbench_standard

    torch.manual_seed(0)
    ref = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Standard"]["model"]().eval()
    assert sum(p.numel() for p in ref.parameters()) == 36_479_194  # WRN-28-10
    path = tmp_path / "Standard.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    net, sha = robustbench_standard(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x))
    assert len(sha) == 64
    with pytest.raises(BenchError, match="Standard.pt"):
        robustbench_standard(tmp_path / "absent.pt")
