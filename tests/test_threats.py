"""One threat vocabulary (benchmark.threats): every layer reads the same names, budgets and eps text."""
from __future__ import annotations

import pytest

from benchmark.errors import BenchError
from benchmark.threats import DEFAULT_EPS, THREATS, eps_text, parse_eps, parse_fraction


def test_parse_and_format_known_answers():
    assert parse_fraction("8/255") == 8 / 255 and parse_fraction("0.5") == 0.5
    assert parse_fraction("0.007") == 0.007
    assert eps_text(8 / 255, "linf") == "8/255" and eps_text(parse_fraction("2/255"), "linf") == "2/255"
    assert eps_text(4.5 / 255, "linf") == "0.0176471"  # not a whole number of 255ths
    assert eps_text(0.5, "l2") == "0.5" and eps_text(8 / 255, "l2") == "0.0313725" and eps_text(None, "linf") == "?"
    assert parse_eps("8/255", "x") == 8 / 255 and parse_eps(0.5, "x") == 0.5
    for bad in ("8/0", "a/255", True, None, "2", 0):
        with pytest.raises(BenchError):
            parse_eps(bad, "row 3")


def test_every_layer_reads_the_same_vocabulary():
    import attacks.core as core
    import leaderboards.board as board
    import leaderboards.published as published
    from attacks import make_attack
    from benchmark.report import budget_text
    from benchmark.runner import THREAT_DEFAULTS

    assert core.THREATS is THREATS and published.THREATS is THREATS and board.eps_text is eps_text
    assert tuple(THREAT_DEFAULTS) == THREATS
    assert {t: THREAT_DEFAULTS[t]["eps"] for t in THREATS} == DEFAULT_EPS == {"linf": 8 / 255, "l2": 0.5, "stadv": 0.05}
    assert make_attack("pgd", "linf").params["eps"] == 8 / 255 and make_attack("pgd", "l2").params["eps"] == 0.5
    assert budget_text({"threat": "linf", "params": {"eps": 8 / 255}}).startswith("eps=8/255")
    assert core.parse_number("8/255", "eps") == 8 / 255
