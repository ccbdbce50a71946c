"""Third-party weights load safely: pyautoattack's example ResNet-18 and RobustBench checkpoints."""
import json

import pytest
import torch

from benchmark.errors import BenchError
from defenses.weights import load_state_dict, sha256_file


def test_rn18_aa_example_is_converted_once_to_safetensors_with_provenance():
    from defenses.zoo import AA_EXAMPLE_SHA256, _aa_example_source, aa_example_weights, rn18_aa_example

    path, digest = aa_example_weights()
    assert path.suffix == ".safetensors" and sha256_file(path) == digest
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["source_sha256"] == AA_EXAMPLE_SHA256 and "pyautoattack" in meta["provenance"]
    original = torch.load(_aa_example_source(), map_location="cpu", weights_only=True)
    converted = load_state_dict(path, sha256=digest)
    assert set(original) == set(converted)
    assert all(torch.equal(original[k], converted[k]) for k in original)
    d = rn18_aa_example()
    assert not d.stochastic and d.info["weights_sha256"] == digest


def test_robustbench_model_from_local_checkpoint(tmp_path):
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    from defenses.zoo import make_robustbench_defense

    arch = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Standard"]["model"]
    torch.manual_seed(0)
    ref = arch().eval()
    ckpt = tmp_path / "Standard.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, ckpt)
    digest = sha256_file(ckpt)
    d = make_robustbench_defense("Standard", checkpoint=ckpt, sha256=digest)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(d(x), ref(x), atol=1e-5)
    assert d.info["weights_sha256"] == digest
    with pytest.raises(BenchError, match="sha256"):
        make_robustbench_defense("Standard", checkpoint=ckpt, sha256="0" * 64)
    with pytest.raises(BenchError, match="no cifar10/linf model"):
        make_robustbench_defense("NoSuchModel2099", checkpoint=ckpt)
