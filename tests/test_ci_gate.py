"""Our CI gates robust accuracy too: small runs on the shipped zoo against a committed baseline."""
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


def test_the_gate_has_teeth_on_these_runs(gate_results, tmp_path, capsys):
    """Each entry raised just past what it allows (stored + allowed drop) must fail the gate."""
    spec = yaml.safe_load(BASELINE.read_text())
    from leaderboards.gate import check, load_baseline

    rows = check(load_baseline(BASELINE), gate_results)
    for i, row in enumerate(rows):
        if row.stored + row.allowed + 0.5 > 100:
            continue  # cannot be raised past 100%
        bumped = dict(spec, entries=[dict(e) for e in spec["entries"]])
        bumped["entries"][i]["expected"] = round(row.stored + row.allowed + 0.5, 2)
        f = tmp_path / f"bumped{i}.yaml"
        f.write_text(yaml.safe_dump(bumped))
        assert main(["check", "--baseline", str(f), "--results", str(gate_results)]) == 1
        assert "REGRESSION" in capsys.readouterr().out
