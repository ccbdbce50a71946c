"""Our own trap suite: known-answer defenses through the real `bench run` default battery.

Every trap wraps the same ridge-regression linear classifier (tests/plugins/traps.py), which the
battery breaks completely without a trap. So a broken trap must come out at <= 10% robust in the
worst case, and the constant classifier (truly robust: it ignores its input) must keep robust
accuracy equal to clean accuracy, exactly. Smoke scale, the first 20 embedded CIFAR-10 images.
Which single attacks of the battery fail on which trap (e.g. PGD on cross-entropy against
saturated logits) is part of the known answer too: the worst case is what is reported.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main

PLUG = str(Path(__file__).parent / "plugins" / "traps.py")
N = 20
TRAPS = ("linear", "quantized", "opaque_noise", "huge_logits", "noisy_draws", "constant")


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    out = tmp_path_factory.mktemp("traps")
    res = {}
    for name in TRAPS:
        run = out / name
        assert main(["run", "--defense", f"{PLUG}:{name}", "--subset", f"first:{N}", "--scale", "smoke",
                     "--out", str(run), "--quiet"]) == 0, name
        res[name] = (json.loads((run / "record.json").read_text()), json.loads((run / "summary.json").read_text()))
    return res


@pytest.mark.parametrize("name, stochastic", [("linear", False), ("quantized", False), ("opaque_noise", True),
                                              ("huge_logits", False), ("noisy_draws", True)])
def test_broken_traps_come_out_broken(summaries, name, stochastic):
    record, summary = summaries[name]
    assert record["stochastic"] is stochastic  # the battery the run chose: with EOT iff stochastic
    assert summary["attacks"]["clean"]["correct"] >= N // 2
    assert summary["worst_case"]["correct"] <= N // 10, (name, summary["worst_case"])


def test_without_a_trap_every_attack_breaks_the_classifier(summaries):
    _, summary = summaries["linear"]
    assert summary["attacks"]["clean"]["correct"] == N
    assert all(v["correct"] == 0 for k, v in summary["attacks"].items() if k != "clean")


def test_known_single_attack_failures(summaries):
    """PGD (cross-entropy, gradients) cannot move quantized inputs or saturated logits; AutoAttack's
    gradient-free Square and scale-invariant targeted DLR loss can. AutoAttack-rand breaks the noisy
    single draws only because it keeps attacking while any evaluation pass is correct (the old
    rule left 5 of 20 standing)."""
    assert summaries["quantized"][1]["attacks"]["pgd"]["correct"] == N
    assert summaries["huge_logits"][1]["attacks"]["pgd"]["correct"] == N
    assert summaries["quantized"][1]["attacks"]["autoattack_standard"]["correct"] <= N // 10
    assert summaries["huge_logits"][1]["attacks"]["autoattack_standard"]["correct"] <= N // 10
    assert summaries["noisy_draws"][1]["attacks"]["autoattack_rand"]["correct"] <= N // 10


def test_truly_robust_constant_keeps_robust_equal_to_clean(summaries):
    from benchmark.data import load_eval_set

    _, summary = summaries["constant"]
    clean = summary["attacks"]["clean"]["correct"]
    assert clean == int((load_eval_set("cifar10", f"first:{N}").labels == 0).sum()) > 0  # it always says 0
    for k, v in summary["attacks"].items():
        assert v["correct"] == clean and v["worst_of_k_correct"] == clean, k
    assert summary["worst_case"]["correct"] == clean


def test_traps_raise_their_flags_and_the_healthy_models_none(summaries):
    """The attack-failure flags (benchmark.diagnostics) name what each trap hides; the two models
    with nothing hidden (no trap, and the truly robust constant) raise none. The quantizer's
    flag also made the battery grow by Square and BPDA, which are what break it."""
    flags = {k: {f["id"] for f in s.get("flags", [])} for k, (_, s) in summaries.items()}
    assert "shattered-gradients" in flags["quantized"] and "gradient-masking" in flags["quantized"]
    assert {"square", "pgd_bpda"} <= set(summaries["quantized"][1]["attacks"])
    assert summaries["quantized"][1]["attacks"]["square"]["correct"] <= N // 10
    assert "saturated-logits" in flags["huge_logits"]
    assert "pass-disagreement" in flags["noisy_draws"]
    assert flags["linear"] == set() and flags["constant"] == set()
