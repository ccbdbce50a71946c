"""DiffPure ImageNet: guided-diffusion's UNet (published size and layout), the reverse VP-SDE purifier,
loading in the authors' format, torchvision classifiers, and `bench run` end to end at reduced width.

References from elsewhere: the layout, parameter count and a reduced-width forward output were dumped
once from openai/guided-diffusion's own ``unet.py`` (tests/data/guided_diffusion_256_uncond.json; the
authors' code is not imported here); the SDE coefficients against their closed forms; gradients against
finite differences; the classifier against torchvision's ResNet.
"""
import json
from pathlib import Path

import pytest
import torch

from benchmark.errors import BenchError
from defenses.base import Noise
from defenses.diffpure_imagenet import (
    DiffPureSDEPurifier, VPSDE, euler_grid, load_guided_unet, load_torchvision_classifier, make_diffpure_imagenet,
)
from defenses.guided_unet import IMAGENET_256_UNCOND, GuidedUNet, reduced_config, state_layout

REF = json.loads((Path(__file__).parent / "data" / "guided_diffusion_256_uncond.json").read_text())


def test_published_unet_size_and_layout_equal_the_authors():
    layout = state_layout(IMAGENET_256_UNCOND)
    assert list(layout) == list(REF["full_layout"])  # names, in the authors' order
    assert {k: list(v) for k, v in layout.items()} == REF["full_layout"]
    with torch.device("meta"):
        n = sum(p.numel() for p in GuidedUNet().parameters())
    assert n == REF["full_params"] == 552_814_086


def test_reduced_unet_output_equals_the_authors_code():
    """Same seeded weights and input as the recorded run of guided-diffusion's UNetModel."""
    net = GuidedUNet(reduced_config()).eval()
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) * 0.2 if v.is_floating_point() else v
             for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = net(x, torch.tensor([149, 3]))
    torch.testing.assert_close(out.flatten()[:16], torch.tensor(REF["out_first"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.flatten()[-16:], torch.tensor(REF["out_last"]), rtol=1e-4, atol=1e-5)
    assert abs(float(out.double().abs().sum()) - REF["out_abs_sum"]) < 1e-4 * REF["out_abs_sum"]


def test_solver_grid_and_timesteps_as_diffpure():
    grid = euler_grid(1 - 150 / 1000, 1 - 1e-5, 1e-3)
    assert len(grid) == 150  # torchsde's default dt over [0.85, 0.99999]
    assert abs(float(grid[-1][1]) - (1 - 1e-5)) < 1e-7 and float(grid[-1][1] - grid[-1][0]) < 1e-3
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t):
            seen.append(t.tolist())
            return torch.zeros(x.shape[0], 6, *x.shape[2:])

    p = DiffPureSDEPurifier(Spy(), 8, t=150)
    x = torch.rand(1, 3, 8, 8)
    p(x, Noise(1, p.sample_noise(x, torch.Generator().manual_seed(0))))
    # float32 time as in DiffPure: 1 - 0.85 = 0.14999998 -> timestep 149, then one per step down to 1
    assert seen[0] == [149] and seen[-1] == [1] and len(seen) == 150


def test_linear_sde_matches_closed_form():
    """With eps = 0 the step is y <- y (1 + beta h / 2) + sqrt(beta h) z: checked in float64."""

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return torch.zeros(x.shape[0], 6, *x.shape[2:], dtype=x.dtype)

    p = DiffPureSDEPurifier(Zero(), 8, t=100, dt=0.02)
    x = torch.rand(2, 3, 8, 8)
    z = Noise(2, p.sample_noise(x, torch.Generator().manual_seed(1)))
    out = p(x, z)
    ab = float(torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0)[99])
    y = ab**0.5 * (2 * x.double() - 1) + (1 - ab) ** 0.5 * z["forward"].double()
    s = 0.9
    for i in range(p.steps):
        h = min(s + 0.02, 1 - 1e-5) - s
        beta = 0.1 + (1 - s) * 19.9
        y = y * (1 + 0.5 * beta * h) + (beta * h) ** 0.5 * z["reverse"][:, i].double()
        s += h
    torch.testing.assert_close(out.double(), (y + 1) / 2, rtol=1e-4, atol=1e-4)
    assert abs(float(VPSDE().alpha_bar(torch.tensor(0.5))) - torch.exp(torch.tensor(-0.5 * 19.9 * 0.25 - 0.05)).item()) < 1e-6


def test_exact_input_gradient_through_checkpointed_steps():
    torch.manual_seed(0)
    unet = GuidedUNet(reduced_config(image_size=16)).double().eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    pur = DiffPureSDEPurifier(unet, 16, t=150, dt=0.075)
    assert pur.steps == 2
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    z = Noise(2, {k: v.double() for k, v in pur.sample_noise(x.float(), torch.Generator().manual_seed(2)).items()})
    w = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    (pur(x, z) * w).sum().backward()
    v = torch.randn_like(x)
    h = 1e-5
    with torch.no_grad():
        fd = ((pur(x + h * v, z) * w).sum() - (pur(x - h * v, z) * w).sum()) / (2 * h)
    assert abs(float((x.grad * v).sum()) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


def test_authors_format_checkpoint_loads_and_bad_files_fail(tmp_path):
    cfg = reduced_config()
    path = tmp_path / "unet.pt"
    ref = GuidedUNet(cfg)
    torch.save({k: v.half() if v.dim() > 1 else v for k, v in ref.state_dict().items()}, path)  # a plain state dict
    unet, sha = load_guided_unet(path, cfg)
    assert len(sha) == 64 and torch.equal(unet.out[2].weight, ref.out[2].weight.half().float())
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(path.read_bytes()[:5000])
    pick = tmp_path / "pickle.pt"
    torch.save({"model": ref}, pick)
    wrong = tmp_path / "wrong.pt"
    torch.save({"input_blocks.0.0.weight": torch.zeros(1)}, wrong)
    for f, pattern in ((trunc, "corrupt"), (pick, "needs pickle"), (wrong, "does not fit"),
                       (tmp_path / "absent.pt", "256x256_diffusion_uncond.pt")):
        with pytest.raises(BenchError, match=pattern):
            load_guided_unet(f, cfg)
    with pytest.raises(BenchError, match="openaipublic.blob.core.windows.net"):
        make_diffpure_imagenet(dataset="imagenet", classifier="imagenette_standard")


def test_torchvision_classifier_from_a_local_file(tmp_path):
    import benchmark.compat  # noqa: F401
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18(weights=None).eval()
    path = tmp_path / "my_resnet18.pth"
    torch.save(net.state_dict(), path)
    model, _ = load_torchvision_classifier("resnet18", path, "imagenet")
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x - mean) / std))
        sub, _ = load_torchvision_classifier("resnet18", path, "imagenette")
        torch.testing.assert_close(sub(x), net((x - mean) / std)[:, [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]])
    named = tmp_path / "resnet18-f37072fd.pth"  # the published name, other bytes
    named.write_bytes(path.read_bytes())
    with pytest.raises(BenchError, match="does not start with the hash"):
        load_torchvision_classifier("resnet18", named, "imagenet")
    with pytest.raises(BenchError, match="download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"):
        load_torchvision_classifier("wide_resnet50_2", None, "imagenet")


def test_bench_run_end_to_end_at_reduced_width(tmp_path, capsys):
    from benchmark.cli import main

    path = tmp_path / "unet.pt"
    torch.save(GuidedUNet(reduced_config()).state_dict(), path)
    code = main(
        ["run", "--defense", "diffpure_imagenet", "--dataset",
         "imagenette", "--subset", "first:1", "--defense-opt", "unet=reduced", "--defense-opt", f"weights={path}",
         "--defense-opt", "dt=0.15", "--defense-opt", "classifier=imagenette_standard", "--attacks", "fgsm",
         "--attack-all", "--quiet", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err[-3000:]
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    text = json.dumps(rec)
    assert "diffpure_imagenet" in text and "euler-maruyama" in text


def test_diffpure_imagenet_subset_and_dataset(tmp_path):
    import numpy as np

    from benchmark.data import load_eval_set, parse_subset

    sub = parse_subset("diffpure:2:16")
    assert sub.spec == "diffpure:2:16"
    ref = np.concatenate([np.random.RandomState(s).choice(50000, 16, replace=False) for s in (0, 1)])
    np.testing.assert_array_equal(sub.indices(50000), ref)
    np.testing.assert_array_equal(parse_subset("diffpure:8:64").indices(10000), parse_subset("diffpure").indices(10000))
    with pytest.raises(BenchError, match="diffpure:RUNS:BATCH"):
        parse_subset("diffpure:2")
    with pytest.raises(BenchError, match="folder:PATH"):
        load_eval_set("imagenet")


def test_fp16_torso_as_convert_to_fp16():
    """use_fp16: torso convolutions in float16, time embedding / out head / norms in float32, output float32."""
    cfg = reduced_config()
    a = GuidedUNet(cfg).eval()
    b = GuidedUNet(cfg).eval()
    b.load_state_dict(a.state_dict())
    b.convert_to_fp16()
    assert b.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert b.time_embed[0].weight.dtype == b.out[2].weight.dtype == b.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        ya, yb = a(x, t), b(x, t)
    assert yb.dtype == torch.float32 and 0 < float((ya - yb).abs().max()) < 0.02 * float(ya.abs().max())
