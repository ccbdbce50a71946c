"""Registries and YAML configs fail with one clear message naming the problem."""
from dataclasses import dataclass, field

import pytest

from benchmark.config import config_hash, from_dict, load_config
from benchmark.errors import BenchError
from benchmark.registry import Registry


def test_registry_unknown_name_suggests_and_lists():
    reg = Registry("widget")

    @reg.register("atop_gan", summary="x")
    def make():
        return 1

    assert reg.create("atop_gan") == 1 and "atop_gan" in reg
    with pytest.raises(BenchError, match=r"unknown widget 'atop_gn' \(did you mean atop_gan\?\); known: atop_gan"):
        reg.get("atop_gn")
    with pytest.raises(ValueError, match="twice"):
        reg.add("atop_gan", lambda: 2)


@dataclass
class Inner:
    steps: int = 10
    eps: float = 8 / 255

    def validate(self):
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)


def test_from_dict_nested_and_validation():
    cfg = from_dict(Outer, {"name": "a", "inner": {"steps": 3, "eps": 1}, "tags": ["x"]})
    assert cfg.inner.steps == 3 and cfg.inner.eps == 1.0 and cfg.tags == ["x"]
    with pytest.raises(BenchError, match=r"unknown key 'stepz'; allowed keys: steps, eps"):
        from_dict(Outer, {"name": "a", "inner": {"stepz": 3}})
    with pytest.raises(BenchError, match="steps must be positive"):
        from_dict(Outer, {"name": "a", "inner": {"steps": 0}})
    with pytest.raises(BenchError, match="expected an integer"):
        from_dict(Outer, {"name": "a", "inner": {"steps": "ten"}})
    with pytest.raises(BenchError, match="missing required key 'name'"):
        from_dict(Outer, {})


def test_load_config_bad_yaml_and_missing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(BenchError, match="bad YAML .* line"):
        load_config(bad, Outer)
    with pytest.raises(BenchError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", Outer)
    good = tmp_path / "good.yaml"
    good.write_text("name: b\ninner: {steps: 5}\n")
    cfg = load_config(good, Outer)
    assert cfg.inner.steps == 5
    assert config_hash(cfg) == config_hash(from_dict(Outer, {"name": "b", "inner": {"steps": 5}}))
