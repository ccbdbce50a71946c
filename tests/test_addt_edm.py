"""ADDT's EDM family: EDM's DDPM++ SongUNet behind EDMPrecond at its published size and layout, outputs and the
stochastic Heun purification against ADDT's own code, exact gradients, safe loading, `bench run` at reduced width.

tests/data/edm_songunet_cifar10.json was dumped once from ADDT's own code (Robustness_test/main_code/EDM/edm_nets.py
with get_edm_cifar_uncond's arguments, sampler/edm.py EDMStochasticSampler.purify), which is not imported here.
"""
import json
from pathlib import Path

import pytest
import torch

from benchmark.errors import BenchError
from defenses.addt_edm import EDMPurifier, load_edm
from defenses.base import Noise
from defenses.edm_unet import EDM_CIFAR10_DDPMPP, EDMPrecond, reduced_config, state_layout

REF = json.loads((Path(__file__).parent / "data" / "edm_songunet_cifar10.json").read_text())


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions: one thread (two threads spin-wait when the 2-core machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_published_network_size_and_layout_equal_the_authors():
    layout = state_layout(EDM_CIFAR10_DDPMPP)
    assert list(layout) == list(REF["full_layout"]) and {k: list(v) for k, v in layout.items()} == REF["full_layout"]
    with torch.device("meta"):
        n = sum(p.numel() for p in EDMPrecond().parameters())
    assert n == REF["full_params"] == 55_733_891


def test_reduced_denoiser_and_purification_equal_the_authors_code():
    net = EDMPrecond(reduced_config()).eval()
    g = torch.Generator().manual_seed(0)
    net.load_state_dict({k: torch.randn(v.shape, generator=g) * 0.2 if "resample_filter" not in k else v
                         for k, v in net.state_dict().items()})
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    pr = REF["purify"]
    z = torch.randn(2, pr["num_steps"], 3, 32, 32, generator=g)
    torch.manual_seed(5)
    ef = torch.randn_like(x)  # as recorded: ADDT's purify draws its forward noise with torch.randn_like
    p = EDMPurifier(net, num_steps=pr["num_steps"], sigma_max=pr["sigma_max"], s_churn=pr["S_churn"], s_min=pr["S_min"],
                    s_max=pr["S_max"], s_noise=pr["S_noise"])
    with torch.no_grad():
        d = net(x, torch.tensor(REF["sigma"]))
        out = p((x + 1) / 2, Noise(2, {"forward": ef, "reverse": z}))
    torch.testing.assert_close(d.flatten()[:16], torch.tensor(REF["d_first"]), rtol=1e-4, atol=1e-5)
    assert abs(float(d.double().abs().sum()) - REF["d_abs_sum"]) < 1e-5 * REF["d_abs_sum"]
    torch.testing.assert_close(out.flatten()[:16], torch.tensor(pr["first"]), rtol=1e-4, atol=1e-4)
    assert abs(float(out.double().abs().sum()) - pr["abs_sum"]) < 1e-5 * pr["abs_sum"]
    full = EDMPurifier(net)  # ADDT's settings: 50 Karras steps from 0.5 to 0.002, then 0
    assert full.steps == 50 and abs(float(full.t_steps[0]) - 0.5) < 1e-6 and abs(float(full.t_steps[49]) - 0.002) < 1e-7


def test_exact_input_gradient_checkpointed_equals_plain_autograd():
    torch.manual_seed(0)
    net = EDMPrecond(reduced_config(model_channels=8, img_resolution=16, attn_resolutions=(8,))).double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    a, b = EDMPurifier(net, num_steps=2, s_min=0.0, s_max=1.0), EDMPurifier(net, num_steps=2, s_min=0.0, s_max=1.0, use_checkpoint=False)
    x0 = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 0.8 + 0.1
    z = Noise(2, {k: v.double() for k, v in a.sample_noise(x0.float(), torch.Generator().manual_seed(2)).items()})
    w = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    grads = []
    for pur in (a, b):
        x = x0.clone().requires_grad_(True)
        (pur(x, z) * w).sum().backward()
        grads.append(x.grad)
    assert torch.isfinite(grads[0]).all() and float(grads[0].abs().sum()) > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_exported_state_dict_loads_and_pickles_are_refused(tmp_path):
    from safetensors.torch import save_file

    cfg = reduced_config()
    ref = EDMPrecond(cfg)
    path = tmp_path / "ADDT-010000.pth"  # what ADDT's export.py writes: the EMA EDMPrecond's state_dict()
    torch.save(ref.state_dict(), path)
    net, src = load_edm(path, cfg)
    assert torch.equal(net.model.map_layer0.weight, ref.model.map_layer0.weight) and len(src["sha256"]) == 64
    st = tmp_path / "edm.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st))
    assert torch.equal(load_edm(st, cfg)[0].model.dec["32x32_aux_conv"].weight, ref.model.dec["32x32_aux_conv"].weight)
    pkl = tmp_path / "network-snapshot-010000.pkl"
    pkl.write_bytes(b"\x80\x04not opened")
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(path.read_bytes()[:3000])
    pick = tmp_path / "pickle.pth"
    torch.save({"ema": ref}, pick)
    wrong = tmp_path / "wrong.pth"
    torch.save(EDMPrecond(reduced_config(model_channels=8)).state_dict(), wrong)
    for f, pattern in ((pkl, "export.py --input network-snapshot-010000.pkl"), (trunc, "corrupt"), (pick, "needs pickle"),
                       (wrong, "does not fit"), (tmp_path / "absent.pth", "export.py")):
        with pytest.raises(BenchError, match=pattern):
            load_edm(f, cfg)


def test_bench_run_end_to_end_at_reduced_width(tmp_path, capsys):
    from benchmark.cli import main

    path = tmp_path / "edm.pth"
    torch.save(EDMPrecond(reduced_config(model_channels=8)).state_dict(), path)
    args = ["run", "--defense", "addt_edm", "--subset", "first:2", "--defense-opt", f"weights={path}", "--defense-opt",
            "model_channels=8", "--defense-opt", "num_blocks=1", "--defense-opt", "num_steps=2", "--defense-opt",
            "classifier=cifar10_standard", "--scale", "smoke", "--eot", "1", "--eval-repeats", "1", "--memory-format", "contiguous", "--attacks", "clean",
            "--quiet", "--out", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    assert "edm stochastic heun" in (tmp_path / "run" / "record.json").read_text()
    capsys.readouterr()
    code = main([a if a != f"weights={path}" else f"weights={tmp_path / 'x.pkl'}" for a in args])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "refusing to unpickle" in lines[0]
