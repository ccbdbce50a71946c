"""Every registered attack runs (the torchattacks habit): one parametrised smoke test per preset,
on a tiny stochastic DiffPure (forward and reverse noise parts, multi-step, so the DW-box and
surrogate presets apply too), each checked against its own budget."""
from __future__ import annotations

import pytest
import torch

from attacks import make_attack
from benchmark.registry import ATTACKS, load_builtins
from tests.test_diffusion import defense as tiny_diffpure

load_builtins()
NAMES = sorted(e.name for e in ATTACKS)


def test_the_registry_holds_the_documented_families():
    fams = {ATTACKS.get(n).meta.get("family") for n in NAMES}
    assert fams == {"pgd", "autoattack", "cw", "stadv", "square"} and len(NAMES) >= 15


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_attack_runs_within_its_budget(name):
    entry = ATTACKS.get(name)
    threat = entry.meta.get("threats", ("linf",))[0]
    base = make_attack(name, threat)
    ov = {k: 1 for k in ("steps", "eval_iter", "surrogate_steps") if base.params.get(k) is not None}
    if "eot:" in str(base.params.get("noise_policy", "")):
        ov["noise_policy"] = str(base.params["noise_policy"]).replace(
            "eot:" + str(base.params["noise_policy"]).split("eot:")[1].split("+")[0], "eot:2")
    atk = make_attack(name, threat, **ov)
    d = tiny_diffpure(steps=2)
    torch.manual_seed(0)
    x, y = torch.rand(1, 3, 32, 32), torch.tensor([3])
    atk.policy.check(d)
    xa = atk(d, x, y, generator=torch.Generator().manual_seed(0),
             eval_noise=d.sample_noise(x, torch.Generator().manual_seed(1)))
    assert xa.shape == x.shape and torch.isfinite(xa).all() and 0 <= float(xa.min()) and float(xa.max()) <= 1
    eps = atk.params.get("eps")
    if threat in ("linf", "l2") and eps is not None and entry.meta.get("family") != "cw":
        delta = (xa - x).flatten(1)
        norm = delta.abs().amax(1) if threat == "linf" else delta.norm(dim=1)
        assert float(norm.max()) <= float(eps) + 1e-5, (name, float(norm.max()), eps)
