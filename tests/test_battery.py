"""The battery's rules (benchmark.battery) against hand-computed budgets: one object for run,
sweep and reproduce."""
from __future__ import annotations

import math

from benchmark.battery import BATTERY, SCALES, THREAT_DEFAULTS
from benchmark.runner import RunSpec


def test_battery_budgets_by_hand():
    # stochastic defense at scale smoke: PGD-EOT's 200 steps -> 2, EOT-20 -> the cap 2
    atk = {a.name: a for a in BATTERY.attacks(RunSpec(defense="standard", scale="smoke"), stochastic=True)}
    assert list(atk) == ["autoattack_rand", "pgd_eot"] == THREAT_DEFAULTS["linf"]["stochastic"]
    assert atk["pgd_eot"].params["steps"] == 2 and atk["pgd_eot"].params["noise_policy"] == "eot:2"
    # --eot 3 wins over the cap; --eps 4/255 halves the preset's 2/255 step (the step/eps rule)
    spec = RunSpec(defense="standard", scale="full", eot=3, eps=4 / 255, attacks=["pgd_eot"])
    p = BATTERY.attacks(spec, stochastic=True)[0].params
    assert p["noise_policy"] == "eot:3" and math.isclose(p["eps"], 4 / 255)
    assert math.isclose(p["step_size"], 1 / 255, rel_tol=1e-9)
    assert BATTERY.step_for_eps({"eps": 8 / 255, "step_size": 2 / 255}, 8 / 255) is None
    # StAdv on a random defense: 10 draws per gradient, capped by the scale
    st = BATTERY.attacks(RunSpec(defense="standard", threat="stadv", scale="cpu"), stochastic=True)[0]
    assert st.params["noise_policy"] == f"eot:{SCALES['cpu']['eot']}" == "eot:4"


def test_image_limit_one_rule():
    # no subset: the scale's first n, recorded in the spec
    spec = RunSpec(defense="standard", scale="smoke")
    ev, note = BATTERY.evalset(spec)
    assert (len(ev), spec.subset, note) == (8, "first:8", None)
    # a given subset stays whole for run, and is cut (with a note and a label) for reproduce
    ev, note = BATTERY.evalset(RunSpec(defense="standard", scale="smoke", subset="first:12"))
    assert len(ev) == 12 and note is None
    spec = RunSpec(defense="standard", scale="smoke", subset="first:12")
    ev, note = BATTERY.evalset(spec, cut_given_subset=True)
    assert len(ev) == 8 and ev.subset.endswith("[:8]") and spec.subset == "first:12"
    assert note is not None and "first 8 of the protocol's 12 images" in note
    full, _ = BATTERY.evalset(RunSpec(defense="standard", scale="smoke", subset="first:12"))
    assert list(ev.ids) == list(full.ids[:8])
