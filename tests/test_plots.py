"""Figures: accuracy-vs-budget curves from stored runs (the board's grouping), sweeps, image grids."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import binomtest
from torch import nn

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.runner import record_hash, summarize
from benchmark.seeds import generator
from defenses.base import Defense, Stage, randn
from leaderboards.board import build_board, family_curves, still_falling
from leaderboards.plots import curves_from_runs, image_grid, parse_values, plot_accuracy, sweep
from leaderboards.runs import find_runs

ROOT = Path(__file__).resolve().parent.parent
PLUG = "tests/plugins/toy_defenses.py"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # plugin paths are relative to the repository


def fake_run(d: Path, *, defense: str, attacks: dict, n: int = 100, clean: int = 90, scale: str = "full",
             subset: str | None = None, threat: str = "linf", stochastic: bool = False, finished: float = 1.0) -> Path:
    """A run directory as the runner writes it; ``attacks``: name -> (correct, family, params)."""
    recs = [{"attack": k, "family": fam, "threat": threat, "params": params, "source": ""}
            for k, (_, fam, params) in attacks.items()]
    record = {"defense": defense, "defense_info": {"classifier": "toycls"}, "stochastic": stochastic,
              "dataset": "cifar10", "source": "test", "subset": subset or f"first:{n}", "threat": threat,
              "protocol": None, "scale": scale, "attacks": recs, "eval_repeats": 1, "n": n,
              "ids": [str(i) for i in range(n)], "seed": 0}
    record["run_hash"] = record_hash(record)  # as the runner writes it: readers refuse unverified records
    rows = []
    for i in range(n):
        r = {"id": str(i), "label": 0, "clean": [0 if i < clean else 1]}
        for k, (correct, _, _) in attacks.items():
            r[k] = {"preds": [0 if i < correct else 1], "norm": 0.0}
        rows.append(r)
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps(record))
    (d / "summary.json").write_text(json.dumps(summarize(rows, record)))
    (d / "timing.json").write_text(json.dumps({"finished_unix": finished}))
    return d


def pgd(eps: float, steps: int = 20, eot: int = 1, **extra) -> dict:
    return {"eps": eps, "steps": steps, "step_size": 2 / 255, "restarts": 1, "loss": "ce", "grad_mode": "exact",
            "noise_policy": f"eot:{eot}" if eot > 1 else "fresh", **extra}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    # defense A: an eps sweep at PGD-20 (60 -> 40 -> 10 correct of 100), 8/255 measured twice (10 and 5)
    for i, (k, c) in enumerate([(2, 60), (4, 40), (8, 10)]):
        fake_run(root / f"a_eps{k}", defense="A", clean=90 - i, finished=10 + i,
                 attacks={"pgd": (c, "pgd", pgd(k / 255))})
    fake_run(root / "a_eps8_again", defense="A", finished=5, attacks={"pgd": (5, "pgd", pgd(8 / 255))})
    # same defense at another scale, and another image set: separate groups (single points, no curve)
    fake_run(root / "a_cpu", defense="A", scale="cpu", n=64, clean=60, attacks={"pgd": (3, "pgd", pgd(8 / 255))})
    # defense A: a steps sweep in ONE run, still falling at the largest budget (board flags it)
    fake_run(root / "a_steps", defense="A", n=500, clean=450, subset="first:500",
             attacks={"pgd10": (400, "pgd", pgd(8 / 255, 10)), "pgd50": (300, "pgd", pgd(8 / 255, 50)),
                      "pgd200": (200, "pgd", pgd(8 / 255, 200))})
    # stochastic defense S: an EOT sweep in separate runs
    for eot, c in [(1, 50), (4, 30), (16, 29)]:
        fake_run(root / f"s_eot{eot}", defense="S", stochastic=True, attacks={"pgd": (c, "pgd", pgd(8 / 255, 20, eot))})
    # defense B at one eps only: no curve
    fake_run(root / "b", defense="B", attacks={"pgd": (20, "pgd", pgd(8 / 255))})
    return root


def png_ok(path: Path, min_size=(300, 200)) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[1] >= min_size[0] and img.shape[0] >= min_size[1]
    assert img.std() > 5  # not a blank canvas
    return img


# ------------------------------------------------------------ shared grouping
def test_family_curves_keeps_lowest_accuracy_per_value_sorted():
    atts = [{"family": "pgd", "acc": 50.0, "x": 20}, {"family": "pgd", "acc": 40.0, "x": 20},
            {"family": "pgd", "acc": 70.0, "x": 5}, {"family": "autoattack", "acc": 10.0, "x": 100},
            {"family": "pgd", "acc": 1.0, "x": None}]
    c = family_curves(atts, lambda a: a["x"])
    assert [x for x, _ in c["pgd"]] == [5, 20]
    assert [a["acc"] for _, a in c["pgd"]] == [70.0, 40.0]
    assert list(c) == ["pgd", "autoattack"]
    assert still_falling({"acc": 60.0}, {"acc": 40.0, "ci": (30.0, 50.0)}) == 10.0
    assert still_falling({"acc": 45.0}, {"acc": 40.0, "ci": (30.0, 50.0)}) is None
    assert still_falling({"acc": 45.0}, {"acc": 40.0, "ci": None}) is None


def test_eps_curve_from_stored_runs(stored):
    runs, _ = find_runs(stored)
    curves, notes = curves_from_runs(runs, "eps", defenses=["A"])
    assert len(curves) == 1
    c = curves[0]
    assert (c.defense, c.family, c.scale, c.subset) == ("A", "pgd", "full", "first:100")
    assert [round(p.x * 255, 6) for p in c.points] == [2, 4, 8]
    assert [p.acc for p in c.points] == [60.0, 40.0, 5.0]  # 8/255: the lower of the two runs
    assert c.points[-1].run.endswith("a_eps8_again")
    for p in c.points:  # error bars: the exact binomial interval of correct/n, computed here by scipy's binomtest
        ref = binomtest(p.correct, p.n).proportion_ci(confidence_level=0.95, method="exact")
        assert (p.lo, p.hi) == pytest.approx((100 * ref.low, 100 * ref.high), abs=1e-9)
    assert (c.points[0].lo, c.points[0].hi) == pytest.approx((49.7209, 69.6705), abs=1e-3)  # 60/100, literal
    assert c.clean[0] == pytest.approx(88.0)  # the newest contributing run (a_eps8, finished=12)
    assert c.fixed == {"steps": 20, "eot": 1}
    assert c.step == "step 2/255" and "PGD 20 steps, step 2/255" in c.label
    assert any("scale cpu" in n and "only one eps value" in n for n in notes)
    # restricting the other budgets (what `bench plot eps --steps 20` does)
    assert len(curves_from_runs(runs, "eps", defenses=["A"], fixed={"steps": 20, "eot": None})[0]) == 1
    assert curves_from_runs(runs, "eps", defenses=["A"], fixed={"steps": 10})[0] == []
    assert len(curves_from_runs(runs, "steps", defenses=["A"], fixed={"eps": 8 / 255})[0]) == 1
    assert curves_from_runs(runs, "steps", defenses=["A"], fixed={"eps": 4 / 255})[0] == []
    with pytest.raises(BenchError, match="restricted"):
        curves_from_runs(runs, "eps", fixed={"eps": 8 / 255})


def test_steps_curve_matches_the_boards_under_attacked_flag(stored):
    runs, _ = find_runs(stored)
    curves, _ = curves_from_runs(runs, "steps", defenses=["A"])
    c = next(c for c in curves if c.subset == "first:500")
    assert [p.x for p in c.points] == [10, 50, 200]
    assert [p.acc for p in c.points] == [80.0, 60.0, 40.0]
    assert c.still_falling is not None
    tables, _ = build_board("cifar10", "linf", str(stored), published=_no_published())
    flags = [f for t in tables for _, r in t.frame.iterrows() if r["defense"] == "A" and r["n"] == 500
             for f in [r["flags"]]]
    assert flags and "under-attacked" in flags[0]
    assert "still falling" in c.label


def _no_published():
    from leaderboards.published import load_published

    return load_published("cifar10").iloc[0:0]


def test_eot_curve_and_filters(stored):
    runs, _ = find_runs(stored)
    curves, _ = curves_from_runs(runs, "eot")
    assert [(c.defense, [p.x for p in c.points]) for c in curves] == [("S", [1, 4, 16])]
    assert curves[0].still_falling is None  # 30 -> 29 is inside the interval
    assert curves_from_runs(runs, "eot", defenses=["A"])[0] == []
    assert curves_from_runs(runs, "eps", families=["autoattack"])[0] == []
    with pytest.raises(BenchError, match="eps, steps, eot"):
        curves_from_runs(runs, "restarts")


@pytest.mark.parametrize("vary,n_points", [("eps", 3), ("steps", 3), ("eot", 3)])
def test_plot_png_has_content(stored, tmp_path, vary, n_points):
    res = plot_accuracy(stored, vary, tmp_path / f"{vary}.png")
    assert res.path.is_file()
    png_ok(res.path)
    assert sum(len(c.points) for c in res.curves) == n_points * len(res.curves)
    assert all(len(c.points) == n_points for c in res.curves)


def test_plot_errors(stored, tmp_path, capsys):
    with pytest.raises(BenchError, match="no stored runs of B"):
        plot_accuracy(stored, "eps", tmp_path / "x.png", defenses=["B"])
    assert main(["plot", "eps", "--defense", "nosuch", "--results", str(stored), "--out", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no stored runs of nosuch")
    assert not (tmp_path / "y.png").exists()
    for bad in ("1,2", "2/255", "x,1/255"):
        with pytest.raises(BenchError, match="--sweep"):
            parse_values(bad, "eps")
    with pytest.raises(BenchError, match="positive integers"):
        parse_values("5,2.5", "steps")
    assert parse_values("5,10,20", "steps") == [5, 10, 20]
    assert parse_values("1/255, 8/255", "eps") == pytest.approx([1 / 255, 8 / 255])


def test_cli_plot_from_stored_runs(stored, tmp_path, capsys):
    out = tmp_path / "steps.png"
    assert main(["plot", "steps", "--defense", "A", "--results", str(stored), "--out", str(out)]) == 0
    png_ok(out)
    text = capsys.readouterr().out
    assert "10: 80.0" in text and "200: 40.0" in text
    assert main(["plot", "eps", "--defense", "A", "--steps", "20", "--results", str(stored), "--out", str(out)]) == 0
    assert "2/255: 60.0 [" in capsys.readouterr().out
    assert main(["plot", "eps", "--defense", "A", "--steps", "7", "--results", str(stored), "--out", str(out)]) == 2


# ------------------------------------------------------------------- sweep
def test_sweep_runs_the_runner_and_resumes(tmp_path):
    res = sweep(f"{PLUG}:tiny", "eps", [2 / 255, 8 / 255], subset="first:4", steps=2, batch_size=4,
                results=tmp_path, scale="smoke")
    assert len(res) == 2 and all(r.dir.parent == tmp_path / "sweeps" for r in res)
    assert [r.record["attacks"][0]["params"]["eps"] for r in res] == pytest.approx([2 / 255, 8 / 255])
    assert all(r.record["attacks"][0]["params"]["steps"] == 2 and r.record["subset"] == "first:4" for r in res)
    # the PGD step keeps the preset's ratio (2/255 at 8/255): eps/4 at every eps
    assert [r.record["attacks"][0]["params"]["step_size"] for r in res] == pytest.approx([0.5 / 255, 2 / 255])
    plot = plot_accuracy(tmp_path, "eps", tmp_path / "eps.png")
    assert len(plot.curves) == 1 and [round(p.x * 255) for p in plot.curves[0].points] == [2, 8]
    assert plot.curves[0].step == "step eps/4"
    again = sweep(f"{PLUG}:tiny", "eps", [2 / 255, 8 / 255], subset="first:4", steps=2, batch_size=4,
                  results=tmp_path, scale="smoke")
    assert all(r.resumed for r in again) and [r.dir for r in again] == [r.dir for r in res]
    fixed = sweep(f"{PLUG}:tiny", "eps", [2 / 255, 8 / 255], subset="first:4", steps=2, batch_size=4,
                  results=tmp_path / "fixed", scale="smoke", scale_step=False)
    assert [r.record["attacks"][0]["params"]["step_size"] for r in fixed] == pytest.approx([2 / 255, 2 / 255])
    assert fixed[1].dir.name == res[1].dir.name  # at the preset's eps the spec (and folder) is the plain one
    with pytest.raises(BenchError, match="deterministic"):
        sweep(f"{PLUG}:tiny", "eot", [1, 2], subset="first:4", results=tmp_path)
    with pytest.raises(BenchError, match="at least two"):
        sweep(f"{PLUG}:tiny", "steps", [5, 5], subset="first:4", results=tmp_path)


# -------------------------------------------------------------------- grid
class Shrink(Stage):
    """A deterministic 'purifier': pull pixels halfway to mid-grey."""

    def forward(self, x, noise):
        return 0.5 * x + 0.25


class Gauss(Stage):
    noise_names = ("gaussian",)

    def sample_noise(self, x, generator):
        return {"gaussian": randn(x.shape, generator, x)}

    def forward(self, x, noise):
        return (x + 0.1 * noise["gaussian"]).clamp(0, 1)


def _classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(128, 10))


def test_grid_with_transform_and_purifier(tmp_path):
    d = Defense(_classifier(), transform=Gauss(), purifier=Shrink(), name="toy_tp").freeze()
    res = image_grid(d, tmp_path / "g.png", subset="first:3", steps=2, eps=8 / 255)
    assert res.columns == ["clean", "transformed", "purified", "adversarial (pgd_eot, eps 8/255)", "purified adversarial"]
    png_ok(res.path)
    x = res.images["clean"]
    noise = d.sample_noise(x, generator(0, "grid", "eval-noise"))
    assert torch.allclose(res.images["transformed"], (x + 0.1 * noise["gaussian"]).clamp(0, 1))
    assert torch.allclose(res.images["purified"], 0.5 * res.images["transformed"] + 0.25)
    adv = res.images["adversarial (pgd_eot, eps 8/255)"]
    delta = (adv - x).abs().amax()
    assert 0 < delta <= 8 / 255 + 1e-6
    assert torch.allclose(res.images["purified adversarial"], d.purify(adv, noise))
    assert set(res.preds) == {"purified", "purified adversarial"} and len(res.preds["purified"]) == 3
    assert "shared by the clean and adversarial rows" in res.title


def test_grid_deterministic_without_purifier_says_so(tmp_path):
    res = image_grid(f"{PLUG}:tiny", tmp_path / "d.png", subset="first:2", steps=2)
    assert res.columns[0] == "clean" and res.columns[1].startswith("adversarial (pgd,")
    assert res.columns[2].startswith("perturbation") and len(res.columns) == 3
    delta = (res.images[res.columns[1]] - res.images["clean"]).flatten(1).abs().amax(1)
    assert res.captions[res.columns[2]] == [f"max |d| = {float(v) * 255:.1f}/255" + (" (already wrong)" if v == 0 else "")
                                            for v in delta]
    assert (delta <= 8 / 255 + 1e-6).all()
    assert "no transform or purifier" in res.title
    assert not any("purified" in c or "transformed" in c for c in res.columns)
    png_ok(res.path, min_size=(150, 150))
    with pytest.raises(BenchError, match="at most 16"):
        image_grid(f"{PLUG}:tiny", tmp_path / "e.png", subset="first:17")


def test_cli_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["plot", "grid", "--defense", f"{PLUG}:noisy", "--subset", "first:2", "--steps", "1",
                 "--out", str(out)]) == 0
    png_ok(out, min_size=(150, 150))
    assert "transformed adversarial" in capsys.readouterr().out
    assert main(["plot", "grid", "--defense", "nosuch", "--out", str(tmp_path / "n.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown defense 'nosuch'")
