"""Attack-failure flags (benchmark.diagnostics) on known-answer toys (tests/diag_toys.py).

Each toy's right verdict is known by construction: a quantizing defense has zero input
gradients and is not robust; logits x 1e4 saturate the softmax; Gaussian noise of sigma 0.3
makes passes disagree; an undefended linear model and a mean-brightness classifier (exactly
robust at 8/255, broken at 64/255) are healthy; a constant classifier is robust at any budget."""
import json

import torch

from benchmark.diagnostics import FLAG_IDS
from benchmark.report import flag_lines
from benchmark.runner import RunSpec, run, spec_hash
from leaderboards.board import entry_from_run
from leaderboards.runs import find_runs
from tests import diag_toys as T

CPU = torch.device("cpu")


def _run(tmp_path, name, defense, evalset, **kw):
    spec = RunSpec(defense=name, dataset="toy", scale="smoke", batch_size=8, **kw)
    return run(spec, out=tmp_path / name, device=CPU, defense=defense, evalset=evalset)


def _ids(res):
    return [f["id"] for f in res.summary["flags"]]


def test_quantizer_raises_shattered_and_the_added_attacks_break_it(tmp_path):
    d = T.quantized()
    res = _run(tmp_path, "quantized", d, T.labelled(d))  # default battery
    s, rec = res.summary, res.record
    assert rec["diagnostics"]["shattered"] and rec["diagnostics"]["zero_or_nonfinite_margin_grad"] == 8
    assert rec["diagnostics"]["added_attacks"] == ["square", "pgd_bpda"]
    assert [a["attack"] for a in rec["attacks"]] == ["autoattack_standard", "pgd", "square", "pgd_bpda"]
    assert s["attacks"]["clean"]["correct"] == 8
    # PGD with exact gradients barely moves (zero gradient); Square breaks it (robust <= 10%)
    assert s["attacks"]["pgd"]["correct"] >= 6
    assert s["attacks"]["square"]["accuracy"] <= 0.10 and s["worst_case"]["accuracy"] <= 0.10
    assert {"shattered-gradients", "gradient-masking", "bpda-beats-exact"} <= set(_ids(res))
    # every flag has its doc anchor; the printed line and the board show it
    doc = open("docs/FLAGS.md").read()
    for f in s["flags"]:
        assert f["doc"] == f"docs/FLAGS.md#{f['id']}" and f'<a id="{f["id"]}"></a>' in doc
    assert any(line.startswith("FLAG shattered-gradients:") and "docs/FLAGS.md#shattered-gradients" in line
               for line in flag_lines(s))
    runs, notes = find_runs(tmp_path)
    assert len(runs) == 1, notes
    assert any(x.startswith("shattered-gradients: ") for x in entry_from_run(runs[0]).flags)
    # resume recomputes the same probe, battery and summary byte for byte
    before = (res.dir / "summary.json").read_bytes()
    again = _run(tmp_path, "quantized", d, T.labelled(d))
    assert again.resumed and (res.dir / "summary.json").read_bytes() == before


def test_huge_logits_raise_saturated_and_the_scale_invariant_loss_breaks_them(tmp_path):
    d = T.huge_logits()
    res = _run(tmp_path, "huge", d, T.labelled(d))
    s = res.summary
    assert res.record["diagnostics"]["zero_or_nonfinite_ce_grad_only"] == 8
    assert "saturated-logits" in _ids(res) and "shattered-gradients" not in _ids(res)
    assert s["attacks"]["pgd"]["correct"] >= 6  # CE gradient exactly 0: PGD-CE does not move
    assert s["attacks"]["autoattack_standard"]["accuracy"] <= 0.10  # DLR / Square do


def test_disagreeing_passes_raise_pass_disagreement_deterministically(tmp_path):
    d = T.noisy(0.3)
    ev = T.labelled(T.tiny_net())
    a = _run(tmp_path / "a", "noisy", d, ev)
    assert "pass-disagreement" in _ids(a)
    assert a.summary["diagnostics"]["split_probe"]["passes"] == 8
    b = _run(tmp_path / "b", "noisy", d, ev)
    assert (a.dir / "summary.json").read_bytes() == (b.dir / "summary.json").read_bytes()
    timing = json.loads((a.dir / "timing.json").read_text())
    assert timing["diagnostics_s"] >= 0 and timing["diagnostics_probe_s"] > 0


def test_healthy_models_raise_no_flag(tmp_path):
    d = T.healthy()  # undefended: broken, and nothing failed
    res = _run(tmp_path, "healthy", d, T.labelled(d))
    assert res.summary["worst_case"]["correct"] == 0 and res.summary["flags"] == []
    assert flag_lines(res.summary)[0].startswith("attack-failure checks: no flag")
    # robust for real at 8/255 (robust = clean), broken at 64/255: survivors probed, no flag
    b = T.brightness()
    res = _run(tmp_path, "bright", b, T.labelled(b, x=T.brightness_images()), attacks=["pgd"])
    s = res.summary
    assert s["attacks"]["pgd"]["correct"] == s["attacks"]["clean"]["correct"] == 8
    assert s["flags"] == [] and len(s["diagnostics"]["sample_ids"]) == 8
    assert s["diagnostics"]["large_budget"]["standing"] == 0 and s["diagnostics"]["silent"]["loss_not_rising"] == 0


def test_constant_classifier_is_robust_and_not_called_a_broken_attack(tmp_path):
    d = T.constant()
    ev = T.labelled(d, n=16)
    res = _run(tmp_path, "const", d, ev, attacks=["pgd"])
    s = res.summary
    assert s["attacks"]["pgd"]["correct"] == s["attacks"]["clean"]["correct"] == 16  # robust = clean exactly
    assert s["flags"] == []
    lb = s["diagnostics"]["large_budget"]
    assert lb["input_independent"] == 8 and lb["of"] == 0  # not counted: its prediction ignores the input
    assert res.record["diagnostics"]["input_dependent"] == 0 and not res.record["diagnostics"]["shattered"]


def test_no_diagnostics_is_recorded_hashed_and_old_summaries_still_load(tmp_path):
    d = T.quantized()
    assert spec_hash(RunSpec(defense="x", diagnostics=False)) != spec_hash(RunSpec(defense="x"))
    res = _run(tmp_path, "off", d, T.labelled(d), attacks=["fgsm"], diagnostics=False)
    assert res.record["diagnostics"] == {"enabled": False}
    assert "flags" not in res.summary and flag_lines(res.summary) == []
    assert [a["attack"] for a in res.record["attacks"]] == ["fgsm"]
    runs, _ = find_runs(tmp_path)
    assert not any(f.split(":")[0] in FLAG_IDS for f in entry_from_run(runs[0]).flags)
    # a hostile or malformed flags entry is ignored by the board, not a crash
    summ = json.loads((res.dir / "summary.json").read_text())
    summ["flags"] = [{"id": 3}, "x", {"id": "under-attacked", "reason": "r"}]
    (res.dir / "summary.json").write_text(json.dumps(summ))
    runs, _ = find_runs(tmp_path)
    assert [f for f in entry_from_run(runs[0]).flags if "under-attacked" in f] == [
        "under-attacked: r (docs/FLAGS.md#under-attacked)"]
