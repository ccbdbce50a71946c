"""Our CI gates robust accuracy too: small runs on the shipped zoo against a committed baseline."""
import shutil
from pathlib import Path

import pytest
import yaml

from benchmark.cli import main

BASELINE = Path(__file__).resolve().parents[1] / "configs" / "ci" / "baseline.yaml"


@pytest.fixture(scope="module")
def gate_results(tmp_path_factory):
    spec = yaml.safe_load(BASELINE.read_text())
    out = tmp_path_factory.mktemp("ci-gate")
    for args in spec["runs"]:
        name = args[args.index("--defense") + 1]
        assert main([*["run", *map(str, args)], "--out", str(out / name), "--quiet"]) == 0
    return out


def test_shipped_zoo_passes_the_committed_baseline(gate_results, capsys):
    assert main(["check", "--baseline", str(BASELINE), "--results", str(gate_results)]) == 0
    out = capsys.readouterr().out
    assert "REGRESSION" not in out and "standard" in out


def _bumped(spec: dict, i: int, expected: float, path: Path) -> Path:
    bumped = dict(spec, entries=[dict(e) for e in spec["entries"]])
    bumped["entries"][i]["expected"] = round(expected, 2)
    path.write_text(yaml.safe_dump(bumped))
    return path


def test_the_gate_has_teeth_both_ways_on_these_runs(gate_results, tmp_path, capsys):
    """Each entry moved just past its tolerance, up (the stored number dropped) or down (the stored
    number rose: a weaker attack), must fail the gate; just inside it must pass."""
    spec = yaml.safe_load(BASELINE.read_text())
    from leaderboards.gate import check, load_baseline

    rows = check(load_baseline(BASELINE), gate_results)
    tried = {"drop": 0, "rise": 0}
    for i, row in enumerate(rows):
        for kind, expected in (("drop", row.stored + row.allowed + 0.5), ("rise", row.stored - row.allowed - 0.5)):
            if not 0 <= expected <= 100:
                continue  # cannot move the baseline past 0% or 100%
            f = _bumped(spec, i, expected, tmp_path / f"{kind}{i}.yaml")
            assert main(["check", "--baseline", str(f), "--results", str(gate_results)]) == 1, (kind, i)
            assert f"REGRESSION: {kind}" in capsys.readouterr().out
            tried[kind] += 1
        inside = _bumped(spec, i, row.stored - row.allowed if row.stored >= row.allowed else row.stored + row.allowed,
                         tmp_path / f"inside{i}.yaml")
        assert main(["check", "--baseline", str(inside), "--results", str(gate_results)]) == 0
        capsys.readouterr()
    assert tried["drop"] >= 3 and tried["rise"] >= 3


def test_a_weakened_attack_fails_the_gate(gate_results, tmp_path, capsys, monkeypatch):
    """The shipped baseline expects PGD to leave 0% of the standard model; a later run whose PGD
    was weakened (1 step at 0.5/255) leaves many images standing. That rise fails the gate
    (the old gate called it "improved" and passed)."""
    monkeypatch.setenv("COLUMNS", "400")  # whole table rows, unwrapped
    res = tmp_path / "res"
    shutil.copytree(gate_results, res)
    assert main(["run", "--defense", "standard", "--dataset", "cifar10", "--subset", "first:8", "--attacks",
                 "clean,pgd", "--scale", "cpu", "--eps", "0.5/255", "--steps", "1", "--out", str(res / "weak"),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["check", "--baseline", str(BASELINE), "--results", str(res)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if " pgd " in f" {ln} " and "standard" in ln)
    assert "REGRESSION: rise" in line and "weak" in line
