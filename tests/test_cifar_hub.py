"""pytorch-cifar-models by torch.hub name: the shipped CIFAR-100 ResNet-56 and the family's layouts.

Reference values come from elsewhere: the published file's sha256 and parameter count (its README),
15/20 on the exact CIFAR-100 images (measured once, recorded in /work/shared/weights/README.md), the
key layouts and parameter counts dumped from the authors' own code (tests/data, a one-off script),
and torchvision's MobileNetV2/ShuffleNetV2 outputs for the families built on torchvision.
"""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from benchmark.errors import BenchError
from defenses import cifar_hub as H
from defenses.weights import WEIGHTS_DIR, manifest, sha256_file

LAYOUTS = json.loads((Path(__file__).parent / "data" / "pytorch_cifar_models_layouts.json").read_text())


def _layout_sha(state: dict) -> str:
    lines = "\n".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in state.items())
    return hashlib.sha256(lines.encode()).hexdigest()


def test_shipped_file_is_the_published_one_with_its_notice():
    e = manifest()["cifar100_resnet56"]
    path = WEIGHTS_DIR / e["file"]
    assert e["file"] == "cifar100_resnet56-f2eff4c8.pt"
    assert sha256_file(path) == "f2eff4c8461ca1e0d39af83a65f7243bf7d29ec421efee3064bcee93a3caaa73" == e["sha256"]
    assert path.stat().st_size == 3_578_887
    notice = (WEIGHTS_DIR / e["notice"]).read_text()
    assert "Copyright (c) 2021, chenyaofo" in notice and "Redistributions in binary form" in notice


def test_shipped_resnet56_params_and_exact20_accuracy():
    from benchmark.data.datasets import load_eval_set

    model = H.load_hub_classifier("cifar100_resnet56")
    assert sum(p.numel() for p in model.parameters()) == 861_620
    assert model.published_file
    ev = load_eval_set("cifar100", source="exact20")
    with torch.no_grad():
        pred = model(ev.images).argmax(1)
    assert int((pred == ev.labels).sum()) == 15  # the reference count for these 20 images


@pytest.mark.parametrize("name", list(H.HUB))
def test_layout_and_param_count_equal_the_authors(name):
    ref = LAYOUTS["models"][name]
    with torch.device("meta"):
        net = H.build_hub_net(name)
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == ref["params"]
    assert len(state) == ref["entries"] and _layout_sha(state) == ref["layout_sha256"]
    if name in LAYOUTS["full_layouts"]:
        assert {k: list(v.shape) for k, v in state.items()} == LAYOUTS["full_layouts"][name]


def test_published_param_counts_match_the_readme():
    # the project README's #Params (M), rounded to 2 decimals: an independent record of the sizes
    readme = {"cifar10_resnet20": 0.27, "cifar100_resnet56": 0.86, "cifar100_vgg11_bn": 9.80,
              "cifar10_mobilenetv2_x1_4": 4.33, "cifar100_shufflenetv2_x2_0": 5.55}
    for name, m in readme.items():
        assert round(LAYOUTS["models"][name]["params"] / 1e6, 2) == m


def test_torchvision_based_families_compute_what_torchvision_computes():
    """MobileNetV2 / ShuffleNetV2 are torchvision's with the authors' stride changes: with stride 2
    restored, the same weights give torchvision's logits; with our strides the feature map is 4x larger."""
    import benchmark.compat  # noqa: F401
    from torchvision.models import mobilenet_v2, shufflenet_v2_x0_5

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    ours = H.build_hub_net("cifar10_mobilenetv2_x0_5").eval()
    tv = mobilenet_v2(weights=None, num_classes=10, width_mult=0.5).eval()
    tv.load_state_dict(ours.state_dict())
    assert ours.features(x).shape[-1] == 4 * tv.features(x).shape[-1]
    ours.features[0][0].stride = (2, 2)
    ours.features[2].conv[1][0].stride = (2, 2)
    torch.testing.assert_close(ours(x), tv(x))
    s_ours = H.build_hub_net("cifar100_shufflenetv2_x0_5").eval()
    s_tv = shufflenet_v2_x0_5(weights=None, num_classes=100).eval()
    s_tv.load_state_dict(s_ours.state_dict())
    s_ours.conv1[0].stride = (2, 2)
    s_ours.maxpool = s_tv.maxpool
    torch.testing.assert_close(s_ours(x), s_tv(x))


def test_resnet_matches_a_direct_computation():
    """One BasicBlock stage recomputed with torch.nn.functional from the state dict."""
    import torch.nn.functional as F

    net = H.build_hub_net("cifar10_resnet20", width=4).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 3, 8, 8)
    s = net.state_dict()

    def bn(h, k):
        return F.batch_norm(h, s[f"{k}.running_mean"], s[f"{k}.running_var"], s[f"{k}.weight"], s[f"{k}.bias"])

    h = F.relu(bn(F.conv2d(x, s["conv1.weight"], padding=1), "bn1"))
    for i in range(3):
        k = f"layer1.{i}"
        o = F.relu(bn(F.conv2d(h, s[f"{k}.conv1.weight"], padding=1), f"{k}.bn1"))
        h = F.relu(bn(F.conv2d(o, s[f"{k}.conv2.weight"], padding=1), f"{k}.bn2") + h)
    with torch.no_grad():
        got = net.layer1(net.relu(net.bn1(net.conv1(x))))
    torch.testing.assert_close(got, h)


def test_local_file_loads_by_hub_name_and_marks_unpublished(tmp_path):
    net = H.build_hub_net("cifar10_resnet20")
    path = tmp_path / "my_resnet20.pt"
    torch.save(net.state_dict(), path)  # the authors' container: a plain state dict
    model = H.load_hub_classifier("cifar10_resnet20", path)
    assert not model.published_file and model.weights_sha256 == sha256_file(path)
    x = torch.rand(2, 3, 32, 32)
    mean, std = H.NORM["cifar10"]
    ref = net.eval()((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(model(x), ref)
    # a file carrying the published name must carry the published hash
    fake = tmp_path / "cifar10_resnet20-4118986f.pt"
    fake.write_bytes(path.read_bytes())
    with pytest.raises(BenchError, match="does not start with the hash"):
        H.load_hub_classifier("cifar10_resnet20", fake)
    with pytest.raises(BenchError, match="cifar10_resnet20-4118986f.pt.*releases/download/resnet"):
        H.load_hub_classifier("cifar10_resnet20")
    with pytest.raises(BenchError, match="does not fit"):
        H.load_hub_classifier("cifar10_resnet32", path)


def _bench(capsys, *args):
    """`bench ...` in process (the CLI's main: same parsing and error handling, no interpreter start-up)."""
    from benchmark.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error(result, pattern):
    code, _, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], err


def test_bad_files_give_one_error(tmp_path, capsys):
    """Truncated, pickle-only and wrong files: a BenchError each (in process), one `error:` line from the CLI."""
    from benchmark.build import make_defense

    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes((WEIGHTS_DIR / "cifar100_resnet56-f2eff4c8.pt").read_bytes()[:100_000])
    pick = tmp_path / "pickle.pt"
    torch.save({"model": H.build_hub_net("cifar100_resnet20")}, pick)  # a pickled module, not a state dict
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(3)}, wrong)
    for path, pattern in ((trunc, "corrupt checkpoint"), (pick, "needs pickle"), (wrong, "does not fit"),
                          (tmp_path / "absent.pt", "cifar100_resnet20-23dac2f1.pt")):
        with pytest.raises(BenchError, match=pattern):
            make_defense("cifar_hub", dataset="cifar100", options={"model": "cifar100_resnet20", "weights": str(path)})
    out = _bench(capsys, "run", "--defense", "cifar_hub", "--dataset", "cifar100", "--source", "exact20", "--attacks",
                 "clean", "--defense-opt", "model=cifar100_resnet20", "--defense-opt", f"weights={trunc}")
    _one_error(out, "corrupt checkpoint")


def test_cli_runs_a_local_hub_file_end_to_end(tmp_path, capsys):
    path = tmp_path / "r20.pt"
    torch.save(H.build_hub_net("cifar100_resnet20").state_dict(), path)
    code, _, err = _bench(capsys, "run", "--defense", "cifar_hub", "--dataset", "cifar100", "--source", "exact20", "--subset",
                 "first:4", "--defense-opt", "model=cifar100_resnet20", "--defense-opt", f"weights={path}",
                 "--attacks", "fgsm", "--quiet", "--out", str(tmp_path / "run"))
    assert code == 0, err[-2000:]
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert "cifar100_resnet20" in json.dumps(rec)
