"""AToP's DeepFillv2 generator: published size and layout, outputs equal to the authors' code (recorded),
the authors' checkpoint container, the RT at 256 px with explicit noise, and `bench run` at reduced width.

The layout, parameter count and reference outputs were dumped once from glin2022/atop's
``model/networks.py`` (tests/data/atop_deepfillv2_generator.json); that code is not imported here.
"""
import json
from pathlib import Path

import pytest
import torch

from benchmark.errors import BenchError
from defenses.base import Noise
from defenses.deepfill import AToPDeepFillPurifier, DeepFillGenerator, load_deepfill

REF = json.loads((Path(__file__).parent / "data" / "atop_deepfillv2_generator.json").read_text())


def test_generator_size_and_layout_equal_the_authors():
    with torch.device("meta"):
        g = DeepFillGenerator()
    assert sum(p.numel() for p in g.parameters()) == REF["params"] == 4_052_478
    assert {k: list(v.shape) for k, v in g.state_dict().items()} == REF["layout"]
    assert list(g.state_dict()) == list(REF["layout"])


def _seeded():
    g = torch.Generator().manual_seed(0)
    net = DeepFillGenerator().eval()
    net.load_state_dict({k: torch.randn(v.shape, generator=g) * 0.1 if "fuse" not in k else v
                         for k, v in net.state_dict().items()})
    img = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    mask = (torch.rand(1, 1, 8, 8, generator=g) < 0.25).float().repeat_interleave(8, 2).repeat_interleave(8, 3)
    return net, img, mask


def test_outputs_equal_the_authors_code_and_masks_are_per_image():
    net, img, mask = _seeded()
    ones = torch.ones_like(img[:, :1])
    x = torch.cat([img * (1 - mask), ones, ones * mask], 1)
    with torch.no_grad():
        s1, s2 = net(x, mask.expand(2, -1, -1, -1))
        torch.testing.assert_close(s2.flatten()[:16], torch.tensor(REF["check"]["stage2_first"]), rtol=1e-4, atol=1e-5)
        assert abs(float(s2.double().abs().sum()) - REF["check"]["stage2_abs_sum"]) < 1e-4 * REF["check"]["stage2_abs_sum"]
        assert abs(float(s1.double().abs().sum()) - REF["check"]["stage1_abs_sum"]) < 1e-4 * REF["check"]["stage1_abs_sum"]
        # a batch with a different mask per image = each image on its own (per-image patch availability)
        m2 = torch.stack([mask[0], 1 - mask[0]])
        x2 = torch.cat([img * (1 - m2), ones, ones * m2], 1)
        _, both = net(x2, m2)
        _, second = net(x2[1:], m2[1:])
    torch.testing.assert_close(both[1:], second, rtol=1e-4, atol=1e-5)


def test_authors_container_loads_and_bad_files_fail(tmp_path):
    net = DeepFillGenerator(cnum=8)
    # the fine-tuning notebooks save {'G': wrapper.state_dict() (generator.* + res.*), 'D', 'G_optim', 'D_optim', 'n_iter'}
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = {f"generator.{k}": v for k, v in net.state_dict().items()}
    g["res.linear.weight"] = torch.zeros(10, 512)
    path = tmp_path / "states_10.pth"
    torch.save({"G": g, "D": {"conv.weight": torch.zeros(1)}, "G_optim": opt.state_dict(), "D_optim": opt.state_dict(),
                "n_iter": 7}, path)
    loaded, sha = load_deepfill(path, cnum=8)
    assert len(sha) == 64 and torch.equal(loaded.stage2.conv_bn6.conv.weight, net.stage2.conv_bn6.conv.weight)
    plain = tmp_path / "states_pt.pth"  # deepfillv2-pytorch's pretrained layout: {'G': generator state dict}
    torch.save({"G": net.state_dict()}, plain)
    load_deepfill(plain, cnum=8)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(path.read_bytes()[:3000])
    pick = tmp_path / "pickle.pth"
    torch.save({"G": net}, pick)
    for f, pattern in ((trunc, "corrupt"), (pick, "needs pickle"), (plain, "does not fit"),
                       (tmp_path / "absent.pth", "states_pt_places2.pth")):
        with pytest.raises(BenchError, match=pattern):
            load_deepfill(f, cnum=16 if f == plain else 8)
    with pytest.raises(BenchError, match="deepfillv2-pytorch"):
        load_deepfill(None)


def test_rt2_at_256_and_exact_gradient():
    torch.manual_seed(0)
    pur = AToPDeepFillPurifier(DeepFillGenerator(cnum=8).double().eval(), rt="rt2", size=64)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    parts = pur.sample_noise(x, torch.Generator().manual_seed(3))
    assert parts["mask"].shape == (2, 1, 8, 8) and parts["gaussian"].shape == (2, 3, 64, 64)
    assert parts["mask"].flatten(1).sum(1).tolist() == [16.0, 16.0]  # int(0.25 * 64) blocks missing
    # keep the clip inactive so the function is smooth around x (finite differences)
    z = Noise(2, {"mask": parts["mask"], "gaussian": parts["gaussian"] * 0.0})
    x = (0.25 + 0.5 * x).requires_grad_(True)
    w = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    (pur(x, z) * w).sum().backward()
    v = torch.randn_like(x)
    h = 1e-6
    with torch.no_grad():
        fd = ((pur(x + h * v, z) * w).sum() - (pur(x - h * v, z) * w).sum()) / (2 * h)
    assert abs(float((x.grad * v).sum()) - float(fd)) < 1e-5 * max(1.0, abs(float(fd)))


def test_bench_run_end_to_end_at_reduced_width(tmp_path, capsys):
    from benchmark.cli import main

    path = tmp_path / "states.pth"
    torch.save({"G": DeepFillGenerator(cnum=8).state_dict(), "n_iter": 0}, path)
    code = main(
        ["run", "--defense", "atop_deepfill", "--subset", "first:2",
         "--defense-opt", f"weights={path}", "--defense-opt", "cnum=8", "--defense-opt", "size=64", "--attacks", "fgsm",
         "--attack-all", "--quiet", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err[-3000:]
    text = (tmp_path / "run" / "record.json").read_text()
    assert "atop_deepfill" in text and "gaussian" in text
