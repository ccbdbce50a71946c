"""One registration point per attack family (attacks.family): a throwaway family registered here,
and nowhere else, is validated, built, mapped to its board column and labelled, and published rows
may name that column; after it is removed, none of that holds."""
from __future__ import annotations

import pytest
import torch

from attacks.core import validate_params
from attacks.family import Column, Family, register_family, unregister_family
from attacks.presets import build_attack
from benchmark.errors import BenchError
from leaderboards import board, published
from tests.test_leaderboard import fake_run


def _toy_attack(defense, x, y, *, threat: str, generator: torch.Generator | None, eval_noise=None,
                eps: float = 0.1, toy_knob: int = 3) -> torch.Tensor:
    """Moves every pixel by -eps (clipped): a known answer for the built attack below."""
    return (x - eps).clamp(0, 1)


def _knob(key, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise BenchError(f"{key} must be a positive integer, got {v!r}")


@pytest.fixture
def toy_family():
    fam = register_family(Family("toyfam", _toy_attack, ("linf",), columns=(Column("toycol", "ToyCol", 45),),
                                 rules={"toy_knob": _knob}, eps_max={"linf": 0.25}))
    yield fam
    unregister_family("toyfam")


def test_validation_reads_the_registered_rules_and_eps_bound(toy_family):
    with pytest.raises(BenchError, match="toy_knob must be a positive integer, got 0"):
        validate_params("linf", {"toy_knob": 0})  # every registered family's rules apply
    with pytest.raises(BenchError, match=r"eps must be in \(0, 0.25\], got 0.3"):
        validate_params("linf", {"eps": 0.3}, family="toyfam")
    validate_params("linf", {"eps": 0.3}, family="pgd")  # PGD's bound is still 1
    validate_params("linf", {"eps": 0.25, "toy_knob": 2}, family="toyfam")


def test_a_preset_of_the_family_builds_and_runs(toy_family):
    atk = build_attack("toy", "toyfam", threat=None, default_threat="linf", defaults={"toy_knob": 2})
    assert atk.params == {"eps": 0.1, "toy_knob": 2}
    assert atk.record()["family"] == "toyfam"
    x = torch.full((2, 3, 4, 4), 0.5)
    assert torch.allclose(atk(None, x, torch.zeros(2, dtype=torch.long), generator=None), torch.full_like(x, 0.4))
    with pytest.raises(BenchError, match="toy_knob must be a positive integer"):
        build_attack("toy", "toyfam", threat=None, default_threat="linf", defaults={}, overrides={"toy_knob": "0"})
    with pytest.raises(BenchError, match="not supported"):
        build_attack("toy", "toyfam", threat="l2", default_threat="linf", defaults={})


def test_the_board_maps_and_labels_the_family(toy_family, tmp_path):
    assert board.attack_family({"family": "toyfam", "params": {"toy_knob": 2}}) == "toycol"
    assert board.FAMILY_LABELS["toycol"] == "ToyCol"
    # rank 45 puts it between CW (40) and StAdv (50); "other" stays last
    assert list(board.FAMILY_LABELS) == ["autoattack", "pgd", "fgsm", "cw", "toycol", "stadv", "dwbox", "bpda",
                                         "other"]
    fake_run(tmp_path / "runs" / "r1", defense="toy", n=100, clean=90,
             attacks={"toy": (30, "toyfam", {"toy_knob": 2}), "pgd": (50, "pgd", {"steps": 20})})
    tables, _ = board.build_board("cifar10", "linf", results=str(tmp_path / "runs"),
                                  published=published.load_published(paths=[]))
    frame = tables[0].frame
    assert list(frame.columns[4:6]) == ["PGD", "ToyCol"]
    assert frame.loc[0, "ToyCol"] == pytest.approx(30.0) and frame.loc[0, "worst case"] == pytest.approx(30.0)
    html = board.render(tables, [], "html")
    # the new column sorts as a number, as the worst case beside it does
    assert html.count('<td class="num" data-sort="30.0">30.0</td>') == 2


def _row(family: str) -> dict:
    return {"paper": "P", "table": "T1", "row": "r", "dataset": "cifar10", "threat": "linf", "eps": "8/255",
            "attack": "Toy", "family": family, "steps": None, "eot": None, "n": None, "classifier": "WRN",
            "defense": "D", "clean": 90.0, "robust": 30.0}


def test_published_rows_may_name_the_registered_column(toy_family):
    assert published.validate_row(_row("toycol"), "t")["family"] == "toycol"


def test_removed_family_is_gone_everywhere():
    fam = register_family(Family("toyfam", _toy_attack, ("linf",), columns=(Column("toycol", "ToyCol", 45),),
                                 rules={"toy_knob": _knob}))
    unregister_family(fam.name)
    validate_params("linf", {"toy_knob": 0})
    assert "toycol" not in board.FAMILY_LABELS
    assert board.attack_family({"family": "toyfam", "params": {}}) == "other"
    with pytest.raises(BenchError, match="unknown attack family 'toycol'"):
        published.validate_row(_row("toycol"), "t")
    with pytest.raises(BenchError, match="unknown attack family 'toyfam'"):
        validate_params("linf", {}, family="toyfam")


def test_a_shared_column_must_agree():
    with pytest.raises(ValueError, match="board column 'cw'"):
        register_family(Family("toyfam2", _toy_attack, ("linf",), columns=(Column("cw", "Carlini", 40),)))
