"""The README's Python API example runs as written, and gives the CLI's numbers."""
from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its api-example block"
    return m.group(1)


def test_readme_api_example_runs_and_matches_the_cli(tmp_path, monkeypatch, capsys):
    from benchmark.cli import main

    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_readme_example(), "README.md:api-example", "exec"), ns)  # the doc cannot drift
    res, own = ns["res"], ns["own"]
    # the README default run's known numbers (smoke: first 8 images, 2 steps): clean 8/8, PGD 1/8, AA 0/8
    t = res.table().set_index("attack")
    assert t.loc["clean", "correct"] == 8 and t.loc["pgd", "correct"] == 1 and t.loc["worst case", "correct"] == 0
    assert abs(t.loc["clean", "ci95_lo"] - 63.058) < 1e-2  # Clopper-Pearson 8/8, computed by scipy elsewhere
    assert len(res.rows) == 8 and res.rows[0]["id"] == "airplane/0000.jpg"
    # same run as `bench run` (same default folder, same spec hash): the CLI resumes it, bytes equal
    summary = (res.dir / "summary.json").read_bytes()
    assert main(["run", "--defense", "standard", "--threat", "linf", "--scale", "smoke", "--out", str(tmp_path / "cli"),
                 "--quiet"]) == 0
    assert (tmp_path / "cli" / "summary.json").read_bytes() == summary
    assert json.loads((tmp_path / "cli" / "record.json").read_text())["run_hash"] == res.record["run_hash"]
    assert own.record["defense"] == "python:linear" and own.summary["n"] == 8
    assert set(own.table()["attack"]) == {"clean", "pgd", "worst case"}
    printed = capsys.readouterr().out
    assert "worst case" in printed and "airplane/0000.jpg" in printed
    b = ns["pb"].board("cifar10", threat="linf").astype(str)
    assert b.apply(lambda c: c.str.contains("python:linear")).any().any()  # the user's model on the board
    assert b.apply(lambda c: c.str.contains("published")).any().any()  # beside the published tables
