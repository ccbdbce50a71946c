"""The Defense protocol: explicit, replayable, partly fixable noise."""
import pytest
import torch
from torch import nn

from benchmark.errors import BenchError
from defenses.base import Defense, ModuleDefense, Noise, Stage, randn


class GaussianStage(Stage):
    noise_names = ("gaussian",)

    def __init__(self, sigma: float = 0.3):
        super().__init__()
        self.sigma = sigma

    def sample_noise(self, x, generator):
        return {"gaussian": randn(x.shape, generator, x)}

    def forward(self, x, noise):
        return (x + self.sigma * noise["gaussian"]).clamp(0, 1)


class MaskStage(Stage):
    noise_names = ("mask",)

    def sample_noise(self, x, generator):
        g = torch.rand((x.shape[0], 1, *x.shape[2:]), generator=generator)
        return {"mask": (g > 0.25).to(x.dtype)}

    def forward(self, x, noise):
        return x * noise["mask"]


def toy(stages=True):
    clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    torch.manual_seed(0)
    if stages:
        return Defense(clf, transform=GaussianStage(), purifier=MaskStage(), name="toy").freeze()
    return ModuleDefense(clf).freeze()


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_same_noise_same_logits_fresh_noise_differs():
    d = toy()
    x = torch.rand(6, 3, 8, 8, generator=gen(1))
    z = d.sample_noise(x, gen(2))
    assert z.names == ("gaussian", "mask") and z.n == 6
    assert torch.equal(d(x, z), d(x, z))
    assert not torch.equal(d(x, z), d(x, d.sample_noise(x, gen(3))))
    assert torch.equal(d(x, generator=gen(2)), d(x, z))  # generator replay equals noise replay


def test_deterministic_defense_has_empty_noise_and_says_so():
    d = toy(stages=False)
    x = torch.rand(4, 3, 8, 8)
    z = d.sample_noise(x, gen(0))
    assert z.is_empty and z.n == 4 and not d.stochastic
    assert d.describe_noise() == "deterministic (no noise)"
    assert torch.equal(d(x), d(x))


def test_slice_cat_select_roundtrip():
    d = toy()
    x = torch.rand(6, 3, 8, 8)
    z = d.sample_noise(x, gen(5))
    parts = [z.select(slice(0, 2)), z.select([2, 3]), z.select(torch.tensor([False] * 4 + [True] * 2))]
    assert Noise.cat(parts).equal(z)
    # per-sample noise replays per sample: logits of a slice equal the slice of logits
    assert torch.allclose(d(x[2:4], z.select(slice(2, 4))), d(x, z)[2:4])
    assert z.repeat(3).n == 18 and torch.equal(z.repeat(3)["mask"][6:12], z["mask"])


def test_save_and_replay(tmp_path):
    d = toy()
    x = torch.rand(3, 3, 8, 8)
    z = d.sample_noise(x, gen(7))
    z.save(tmp_path / "noise.safetensors")
    z2 = Noise.load(tmp_path / "noise.safetensors")
    assert z2.equal(z) and z2.names == z.names == ("gaussian", "mask")
    assert Noise.cat([z2, z]).n == 6  # a loaded noise concatenates with a freshly sampled one
    assert torch.equal(d(x, z2), d(x, z))


def test_fix_in_part_redraws_the_rest():
    d = toy()
    x = torch.rand(4, 3, 8, 8)
    fixed = d.sample_noise(x, gen(1))
    fresh = d.sample_noise(x, gen(2))
    mixed = fresh.fix(fixed, ["mask"])
    assert torch.equal(mixed["mask"], fixed["mask"])
    assert torch.equal(mixed["gaussian"], fresh["gaussian"])
    assert fresh.fix(fixed).equal(fixed)
    with pytest.raises(BenchError, match="no part"):
        fresh.fix(fixed, ["reverse"])


def test_noise_shape_checks():
    with pytest.raises(ValueError):
        Noise(3, {"a": torch.zeros(2, 1)})
    d = toy()
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError):
        d(x, d.sample_noise(x[:2], gen(0)))
    with pytest.raises(ValueError, match="collide"):
        Defense(nn.Identity(), transform=GaussianStage(), purifier=GaussianStage())


def test_freeze_disables_parameter_gradients_but_not_input_gradients():
    d = toy()
    assert not any(p.requires_grad for p in d.parameters())
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    d(x, generator=gen(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_loaded_noise_keeps_part_order(tmp_path):
    z = Noise(2, {"mask": torch.ones(2, 1), "gaussian": torch.zeros(2, 3)})
    z.save(tmp_path / "z.safetensors")
    assert Noise.load(tmp_path / "z.safetensors").names == ("mask", "gaussian")
