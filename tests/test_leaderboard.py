"""Leaderboards: published tables as checked data, boards from stored runs, the CI gate, reproduce."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from scipy.stats import binomtest

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.runner import RunSpec, record_hash, run, summarize
from benchmark.stats import clopper_pearson
from leaderboards.board import build_board, render
from leaderboards.published import PUBLISHED_DIR, load_published
from leaderboards.reproduce import Claim, Outcome, judge, parse_claims, reproduce

ROOT = Path(__file__).resolve().parent.parent
PLUG = "tests/plugins/toy_defenses.py"


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich tables unwrapped, so the assertions see whole cells
    monkeypatch.chdir(ROOT)  # plugin paths in specs are relative to the repository


# ------------------------------------------------------------------ fake run dirs
def fake_run(d: Path, *, defense: str, n: int = 100, clean: int = 90, attacks: dict, scale: str = "full",
             dataset: str = "cifar10", threat: str = "linf", stochastic: bool = False, finished: float = 1.0) -> Path:
    """A run directory as the runner writes it, from synthetic per-sample rows.

    ``attacks``: name -> (correct, family, params). Sample i is correct under an attack when
    i < correct, so the summary (and its intervals) come from the real ``summarize``.
    """
    recs = [{"attack": k, "family": fam, "threat": threat, "params": {"eps": 8 / 255, **params}, "source": ""}
            for k, (_, fam, params) in attacks.items()]
    record = {"defense": defense, "defense_info": {"classifier": "toycls"}, "stochastic": stochastic,
              "dataset": dataset, "source": "test", "subset": f"first:{n}", "threat": threat, "protocol": None,
              "scale": scale, "attacks": recs, "eval_repeats": 1, "n": n, "ids": [str(i) for i in range(n)], "seed": 0}
    record["run_hash"] = record_hash(record)
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


def with_samples(d: Path, rows: list[dict]) -> Path:
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def edit_record(d: Path, **changes) -> None:
    """Change a stored record as a run with those settings would have written it (hash included)."""
    rec = json.loads((d / "record.json").read_text())
    rec.update(changes)
    rec["run_hash"] = record_hash(rec)
    (d / "record.json").write_text(json.dumps(rec))


PGD = lambda steps, eot=1: {"steps": steps, "noise_policy": f"eot:{eot}" if eot > 1 else "fresh"}  # noqa: E731


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Two real smoke runs of the toy plugins plus synthetic runs at full and cpu scale."""
    root = tmp_path_factory.mktemp("runs")
    dev = torch.device("cpu")
    run(RunSpec(defense=f"{PLUG}:tiny", attacks=["fgsm", "pgd"], subset="first:8", scale="smoke", batch_size=8),
        out=root / "tiny", device=dev)
    run(RunSpec(defense=f"{PLUG}:noisy", attacks=["pgd_eot", "dwbox_both"], subset="first:8", scale="smoke",
                batch_size=8), out=root / "noisy", device=dev)
    # full scale: PGD still falling from 200 to 4000 gradient steps (80 -> 50 on 500 images)
    fake_run(root / "full_under", defense="weakly_attacked", n=500, clean=450,
             attacks={"pgd20": (400, "pgd", PGD(20, 10)), "pgd200": (250, "pgd", PGD(200, 20))})
    # full scale, converged: 60.0 -> 59.0 is inside the interval
    fake_run(root / "full_ok", defense="well_attacked", n=500, clean=450,
             attacks={"pgd20": (300, "pgd", PGD(20, 10)), "pgd200": (295, "pgd", PGD(200, 20))})
    fake_run(root / "cpu_run", defense="cpu_defense", scale="cpu", n=64, clean=60,
             attacks={"autoattack_standard": (30, "autoattack", {"steps": 20, "version": "standard"})})
    (root / "unfinished").mkdir()
    (root / "unfinished" / "record.json").write_text("{}")  # no summary yet: ignored
    return root


def board_frames(results_dir, dataset="cifar10", threat=None, threat_model="exact"):
    tables, notes = build_board(dataset, threat, str(results_dir))
    return {t.scale: t for t in tables if t.threat == (threat or t.threat) and abs((t.eps or 0) - 8 / 255) < 1e-6
            and t.threat_model == threat_model}, notes


# ------------------------------------------------------------------ published data
def test_shipped_published_tables_load_and_cite():
    df = load_published()
    assert set(df["file"]) == {"atop.yaml", "addt.yaml", "robustbench.yaml"}
    assert df["citation"].str.contains(", row ").all() and df["robust"].between(0, 100).all()
    t7 = df[(df["table"] == "Table 7") & (df["group"] == "RT2, AToP yes") & (df["attack"] == "PGD-20")].iloc[0]
    assert (t7["clean"], t7["robust"], t7["steps"], t7["eot"], t7["n"]) == (90.04, 84.57, 20, 20, 512)
    assert t7["ours"] == "atop_gan_rt2" and t7["protocol_attack"] == "pgd"
    dw = df[df["attack"] == "DW_Both"].iloc[0]
    assert dw["robust"] == 16.80 and dw["family"] == "dwbox" and dw["n"] == 1024
    assert len(df[(df["table"] == "Table 7")]) == 30 and len(df[(df["table"] == "Table 9")]) == 30
    c100 = load_published("cifar100")
    assert len(c100) and set(c100["dataset"]) == {"cifar100"}
    assert "Pang et al. (2022)" in set(c100["defense"])


BASE = {"paper": "P", "table": "T1", "row": "r1", "dataset": "cifar10", "threat": "linf", "eps": "8/255",
        "attack": "PGD-20", "family": "pgd", "steps": 20, "eot": 1, "n": 512, "classifier": "c", "defense": "d",
        "clean": 90.0, "robust": 50.0}


@pytest.mark.parametrize("change, message", [
    ({"robust": None}, "may not be null"),
    ({"robust": "drop"}, "missing field 'robust'"),
    ({"steps": "drop"}, "missing field 'steps'"),
    ({"citation_typo": 1}, "unknown field"),
    ({"robust": 101.0}, "outside 0-100"),
    ({"clean": -1}, "outside 0-100"),
    ({"robust": "50"}, "must be a number"),
    ({"threat": "linf2"}, "unknown threat"),
    ({"dataset": "mnist"}, "unknown dataset"),
    ({"family": "magic"}, "unknown attack family"),
    ({"eps": "8/0"}, "eps"),
    ({"n": 0}, "positive integer"),
    ({"protocol": []}, "protocol must be a protocol name or a list"),
    ({"protocol": ["a", 3]}, "protocol must be a protocol name or a list"),
])
def test_published_schema_rejects(tmp_path, change, message):
    import yaml

    row = dict(BASE)
    for k, v in change.items():
        if v == "drop":
            row.pop(k)
        else:
            row[k] = v
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"rows": [dict(BASE), row]}))
    with pytest.raises(BenchError, match=message) as e:
        load_published(paths=[f])
    assert "bad.yaml row 2" in str(e.value)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"defaults": {"paper": "P"}, "rows": [dict(BASE)]}))
    assert load_published(paths=[good])["eps"].iloc[0] == pytest.approx(8 / 255)


# ------------------------------------------------------------------ leaderboard
def test_board_never_puts_two_threat_models_in_one_table(tmp_path):
    """A run with exact-gradient and BPDA attacks gives one row in each threat model's table, each
    with the worst case of its own attacks (recomputed from the per-image rows, checked here by
    counting); AToP Table 7 (BPDA through the purifier, Sec. 4.3) sits only in the BPDA table, and
    its Table 8 (gradients not stated) in a table of its own."""
    d = fake_run(tmp_path / "runs" / "both", defense="mixed", n=100, clean=90, attacks={
        "pgd": (30, "pgd", {"steps": 20, "grad_mode": "exact"}),
        "pgd_bpda": (60, "pgd", {"steps": 20, "grad_mode": "bpda"}),
        "fgsm_bpda": (70, "pgd", {"steps": 1, "grad_mode": "bpda"})})
    rows = [{"id": str(i), "label": 0, "clean": [0 if i < 90 else 1],
             # images 0-29 survive exact PGD; BPDA-PGD spares 10-69, BPDA-FGSM spares 0-69
             "pgd": {"preds": [0 if i < 30 else 1], "norm": 0.0},
             "pgd_bpda": {"preds": [0 if 10 <= i < 70 else 1], "norm": 0.0},
             "fgsm_bpda": {"preds": [0 if i < 70 else 1], "norm": 0.0}} for i in range(100)]
    with_samples(d, rows)
    tables, _ = build_board("cifar10", "linf", str(tmp_path / "runs"))
    for t in tables:  # one threat model per table, named in its title
        assert t.threat_model in ("exact", "bpda", None)
    full = {t.threat_model: t for t in tables if t.scale == "full" and abs((t.eps or 0) - 8 / 255) < 1e-6}
    ex = full["exact"].frame
    bp = full["bpda"].frame
    assert "BPDA" in full["bpda"].title and "exact gradients" in full["exact"].title
    m_ex, m_bp = ex[ex["defense"] == "mixed"].iloc[0], bp[bp["defense"] == "mixed"].iloc[0]
    assert m_ex["worst case"] == pytest.approx(30.0)  # images 0-29
    assert m_bp["worst case"] == pytest.approx(60.0)  # images 10-69 (both BPDA attacks), not min(60, 70)+exact
    assert m_ex["budget"] == "pgd 20 steps" and "pgd_bpda" in m_bp["budget"] and "pgd_bpda" not in m_ex["budget"]
    lo, hi = clopper_pearson(60, 100)
    assert (m_bp["ci95_lo"], m_bp["ci95_hi"]) == pytest.approx((100 * lo, 100 * hi))
    # a run stored before the summary held worst_case_by_grad_mode: recomputed from its rows
    summ = json.loads((d / "summary.json").read_text())
    assert set(summ.pop("worst_case_by_grad_mode")) == {"exact", "bpda"}
    (d / "summary.json").write_text(json.dumps(summ))
    again = {t.threat_model: t.frame for t in build_board("cifar10", "linf", str(tmp_path / "runs"))[0]
             if t.scale == "full" and abs((t.eps or 0) - 8 / 255) < 1e-6}
    assert again["bpda"][again["bpda"]["defense"] == "mixed"].iloc[0]["worst case"] == pytest.approx(60.0)
    # AToP Table 7 is in the BPDA table only
    assert (bp["citation"].str.contains("Table 7")).any()
    assert not ex["citation"].str.contains("Table 7").any()
    # AToP Table 8 (l2): gradients not stated, its own table
    l2 = [t for t in build_board("cifar10", "l2", str(tmp_path / "runs"))[0] if t.scale == "full"]
    t8 = [t for t in l2 if t.frame["citation"].str.contains("Table 8").any()]
    assert len(t8) == 1 and t8[0].threat_model is None and "not stated" in t8[0].title


# ------------------------------------------------------------------ leaderboard
def test_board_separates_scales_and_flags(results):
    tabs, notes = board_frames(results)
    assert {"full", "smoke", "cpu"} <= set(tabs)
    full, smoke, cpu = tabs["full"].frame, tabs["smoke"].frame, tabs["cpu"].frame
    # published rows only in the full-scale table; reduced scales never beside them
    assert set(full["source"]) == {"ours", "published"}
    assert set(smoke["source"]) == {"ours"} and set(cpu["source"]) == {"ours"}
    assert "not comparable" in tabs["smoke"].title
    assert cpu.iloc[0]["flags"].startswith("scale: cpu - not comparable to published")
    under = full[full["defense"] == "weakly_attacked"].iloc[0]
    assert "under-attacked: PGD accuracy still falling at the largest budget" in under["flags"]
    assert under["worst case"] == pytest.approx(50.0) and under["n"] == 500
    # reference computed another way: scipy's exact binomial interval (and its literal values)
    ref = binomtest(250, 500).proportion_ci(confidence_level=0.95, method="exact")
    assert (under["ci95_lo"], under["ci95_hi"]) == pytest.approx((100 * ref.low, 100 * ref.high), abs=1e-9)
    assert (under["ci95_lo"], under["ci95_hi"]) == pytest.approx((45.5286, 54.4714), abs=1e-3)
    assert "under-attacked" not in full[full["defense"] == "well_attacked"].iloc[0]["flags"]
    # published ADDT rows: PGD20+EoT10 vs PGD200+EoT20 on 1024 images is flagged too
    dp = full[(full["source"] == "published") & (full["defense"] == "DP_DDPM") & full["budget"].str.contains("PGD200")]
    assert "under-attacked" in dp.iloc[0]["flags"]
    noisy = smoke[smoke["defense"].str.endswith(":noisy")].iloc[0]
    assert noisy["stochasticity gap"].startswith("pgd_eot - dwbox_both:")
    assert "DW-box" in smoke.columns and "FGSM" in smoke.columns and "PGD" in smoke.columns
    tiny = smoke[smoke["defense"].str.endswith(":tiny")].iloc[0]
    assert tiny["n"] == 8 and tiny["scale"] == "smoke" and tiny["citation"].endswith("tiny")
    assert not any("unfinished" in n for n in notes)


@pytest.mark.parametrize("used, asked, expect", [
    ("bf16", "bf16", "attack gradients in bf16 (min cosine to fp32 0.995"),
    ("fp32", "bf16", "bf16 requested, gradient check failed (min cosine 0.97): attacked in fp32"),
])
def test_board_notes_attack_precision(tmp_path, used, asked, expect):
    d = fake_run(tmp_path / "r", defense="d", attacks={"pgd": (40, "pgd", PGD(20))})
    edit_record(d, precision=used, precision_requested=asked,
                precision_check={"min_cosine": 0.995 if used == "bf16" else 0.97})
    (tab,) = board_frames(tmp_path)[0].values()
    assert expect in tab.frame[tab.frame["source"] == "ours"].iloc[0]["notes"]


def test_leaderboard_cli_formats(results, tmp_path, capsys):
    out = {}
    for fmt in ("md", "csv", "json", "html"):
        f = tmp_path / f"board.{fmt}"
        assert main(["leaderboard", "--dataset", "cifar10", "--threat", "linf", "--format", fmt, "--out", str(f),
                     "--results", str(results)]) == 0
        out[fmt] = f.read_text()
    assert "### cifar10 | linf eps=8/255 | scale smoke" in out["md"] and "weakly_attacked" in out["md"]
    data = json.loads(out["json"])
    assert {t["scale"] for t in data["tables"]} >= {"full", "smoke", "cpu"}
    assert all(t["threat"] == "linf" for t in data["tables"])
    import io

    csv = pd.read_csv(io.StringIO(out["csv"]))
    assert {"defense", "clean", "worst case", "ci95_lo", "budget", "n", "scale", "flags", "citation"} <= set(csv.columns)
    html = out["html"]
    assert html.startswith("<!DOCTYPE html>") and html.count("<table") == len(data["tables"])
    assert "weakly_attacked" in html and "under-attacked" in html and "Lin et al., AToP" in html
    assert "addEventListener" in html and 'data-sort="50.0"' in html
    assert "http://" not in html and "https://" not in html and "<link" not in html and "src=" not in html
    assert "<script>" in html and "&lt;" not in html.split("<script>")[1]  # script emitted verbatim


def test_leaderboard_without_local_runs_shows_published(tmp_path, capsys):
    assert main(["leaderboard", "--dataset", "cifar100", "--results", str(tmp_path / "none")]) == 0
    text = capsys.readouterr().out
    assert "no local run for cifar100" in text and "Pang et al. (2022)" in text and "| ours |" not in text


# ------------------------------------------------------------------ the CI gate
def _baseline(path: Path, entries: list) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"entries": entries}))
    return path


ENTRY = {"defense": "well_attacked", "dataset": "cifar10", "threat": "linf", "attack": "pgd200", "scale": "full",
         "expected": 59.0, "tolerance": 1.0}


def _restore(d: Path, correct: int, n: int = 500) -> None:
    """Store ``correct`` of ``n`` as the run's pgd200 number (a later run of the same config)."""
    s = json.loads((d / "summary.json").read_text())
    ref = binomtest(correct, n).proportion_ci(method="exact")
    s["attacks"]["pgd200"].update(correct=correct, accuracy=correct / n, ci95=[ref.low, ref.high])
    (d / "summary.json").write_text(json.dumps(s))


def test_check_fails_both_ways_beyond_the_tolerance(results, tmp_path, capsys):
    base = _baseline(tmp_path / "b.yaml", [ENTRY, {**ENTRY, "attack": "worst_case", "expected": 59.0}])
    assert main(["check", "--baseline", str(base), "--results", str(results)]) == 0
    assert "ok: 2 baseline" in capsys.readouterr().out
    # a copy whose stored number was lowered by 20 points, finished later: it is the one checked
    lowered = tmp_path / "lowered"
    shutil.copytree(results, lowered)
    d = lowered / "full_ok"
    _restore(d, 195)
    out_code = main(["check", "--baseline", str(base), "--results", str(lowered)])
    text = capsys.readouterr().out
    assert out_code == 1 and "REGRESSION: drop" in text and "FAIL: 1 of 2" in text and "-20.0" in text
    # a rise is a regression too: a weaker attack (the old gate called this "improved" and passed)
    _restore(d, 310)  # 62.0 against 59.0 +/- 1.0
    out_code = main(["check", "--baseline", str(base), "--results", str(lowered)])
    text = capsys.readouterr().out
    assert out_code == 1 and "REGRESSION: rise" in text and "+3.0" in text
    # inside the tolerance either way passes; the interval's half-width (about 4.4 points) no longer
    # widens it: the gate's runs are deterministic on fixed images
    for correct in (290, 300):  # 58.0 and 60.0: exactly 1.0 off
        _restore(d, correct)
        assert main(["check", "--baseline", str(base), "--results", str(lowered)]) == 0
    _restore(d, 285)  # 57.0: 2 points down, inside the old half-width allowance
    assert main(["check", "--baseline", str(base), "--results", str(lowered)]) == 1


@pytest.mark.parametrize("what, message", [
    ("missing", "not found"),
    ("yaml", "not valid YAML"),
    ("nomatch", "matches no stored run"),
    ("noattack", "matches no stored run"),
    ("key", "unknown key"),
    ("range", "outside 0-100"),
    ("tol_nan", "tolerance must be a finite number"),
    ("tol_inf", "tolerance must be a finite number"),
    ("tol_negative", "tolerance = -1.0 must be in 0-100"),
    ("tol_missing", "missing tolerance"),
    ("tol_string", "tolerance must be a finite number"),
    ("expected_nan", "expected must be a finite number"),
])
def test_check_bad_input_exits_2(results, tmp_path, capsys, what, message):
    f = tmp_path / "b.yaml"
    if what == "yaml":
        f.write_text("entries: [unclosed")
    elif what == "nomatch":
        _baseline(f, [{**ENTRY, "defense": "nobody"}])
    elif what == "noattack":
        _baseline(f, [{**ENTRY, "attack": "autoattack_rand"}])
    elif what == "key":
        _baseline(f, [{**ENTRY, "tolerence": 1}])
    elif what == "range":
        _baseline(f, [{**ENTRY, "expected": 0.59 * 1000}])
    elif what in ("tol_nan", "tol_inf", "expected_nan"):  # YAML's own spellings, as a user writes them
        key, val = ("expected", ".nan") if what == "expected_nan" else ("tolerance", ".nan" if what == "tol_nan" else ".inf")
        other = "tolerance: 1.0" if key == "expected" else "expected: 59.0"
        f.write_text("entries:\n  - {defense: well_attacked, dataset: cifar10, threat: linf, attack: pgd200, "
                     f"scale: full, {other}, {key}: {val}}}\n")
    elif what == "tol_negative":
        _baseline(f, [{**ENTRY, "tolerance": -1.0}])
    elif what == "tol_missing":
        _baseline(f, [{k: v for k, v in ENTRY.items() if k != "tolerance"}])
    elif what == "tol_string":
        _baseline(f, [{**ENTRY, "tolerance": "1"}])
    assert main(["check", "--baseline", str(f), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_check_ignores_a_foreign_run_beside_the_real_one(results, tmp_path, capsys):
    """A run folder with a minimal hand-written record (no run_hash), or a real record edited after
    the run, finished later than the real run: the gate must check the real run, not it."""
    base = _baseline(tmp_path / "b.yaml", [ENTRY])
    res = tmp_path / "res"
    shutil.copytree(results, res)
    forged = res / "zz_forged"
    forged.mkdir()
    (forged / "record.json").write_text(json.dumps({k: ENTRY[k] for k in ("defense", "dataset", "threat", "scale")}
                                                   | {"attacks": [{"attack": "pgd200"}]}))
    good = json.loads((res / "full_ok" / "summary.json").read_text())
    good["attacks"]["pgd200"].update(correct=0, accuracy=0.0, ci95=[0.0, 0.01])
    (forged / "summary.json").write_text(json.dumps(good))
    (forged / "timing.json").write_text(json.dumps({"finished_unix": 9e9}))
    edited = shutil.copytree(res / "full_ok", res / "zz_edited")
    rec = json.loads((edited / "record.json").read_text())
    rec["defense"] = "well_attacked"
    rec["attacks"][1]["params"]["steps"] = 2000  # claims a stronger attack than was run; hash not updated
    (edited / "record.json").write_text(json.dumps(rec))
    (edited / "timing.json").write_text(json.dumps({"finished_unix": 9e9}))
    assert main(["check", "--baseline", str(base), "--results", str(res)]) == 0  # the real run, 59.0
    out = capsys.readouterr().out
    assert "full_ok" in out and "zz_" not in out.split("regression gate")[1]
    assert f"skipped {forged}: record.json has no valid 'eval_repeats' (missing)" in out.replace("\n", "")
    assert f"skipped {edited}: record.json does not match its run_hash" in out.replace("\n", "")
    # alone, the forged run is no run at all: an error, not a pass
    shutil.rmtree(res / "full_ok")
    assert main(["check", "--baseline", str(base), "--results", str(res)]) == 2
    assert "matches no stored run" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["accuracy_string", "accuracy_nan", "ci_short", "attacks_string", "attack_str_entry"])
def test_readers_skip_runs_with_non_numeric_summaries_or_string_attacks(results, tmp_path, capsys, damage):
    """leaderboard, check and plot skip a run whose summary accuracy is not a number or whose
    record's attacks is a string, with a one-line note, as for a truncated file."""
    res = tmp_path / "res"
    shutil.copytree(results, res)
    bad = shutil.copytree(res / "full_ok", res / "zz_bad")
    (bad / "timing.json").write_text(json.dumps({"finished_unix": 9e9}))  # the newest: checked first if trusted
    summ = json.loads((bad / "summary.json").read_text())
    if damage == "accuracy_string":
        summ["attacks"]["pgd200"]["accuracy"] = "0.59"
    elif damage == "accuracy_nan":
        (bad / "summary.json").write_text(json.dumps(summ).replace('"accuracy": 0.59', '"accuracy": NaN'))
    elif damage == "ci_short":
        summ["worst_case"]["ci95"] = [0.5]
    elif damage == "attacks_string":
        edit_record(bad, attacks="pgd200")  # even with a matching hash
    else:
        edit_record(bad, attacks=["pgd200"])
    if damage != "accuracy_nan":
        (bad / "summary.json").write_text(json.dumps(summ))
    base = _baseline(tmp_path / "b.yaml", [ENTRY])
    assert main(["check", "--baseline", str(base), "--results", str(res)]) == 0
    out = capsys.readouterr().out
    assert "full_ok" in out and f"skipped {bad}:" in out.replace("\n", "")
    board = tmp_path / "board.md"
    assert main(["leaderboard", "--dataset", "cifar10", "--threat", "linf", "--results", str(res),
                 "--out", str(board)]) == 0
    text = board.read_text()
    assert "zz_bad" in text and f"skipped {bad}:" in text and "well_attacked" in text
    capsys.readouterr()
    for i, steps in enumerate((20, 200)):  # a steps curve to plot beside the bad run
        fake_run(res / f"curve{i}", defense="curve", attacks={"pgd": (60 - 10 * i, "pgd", PGD(steps))})
    png = tmp_path / "steps.png"
    assert main(["plot", "steps", "--results", str(res), "--out", str(png), "--quiet"]) == 0
    assert png.is_file() and f"skipped {bad}:" in capsys.readouterr().out.replace("\n", "")


# ------------------------------------------------------------------ reproduce
def _summary(correct: int, n: int = 100) -> dict:
    e = {"accuracy": correct / n, "ci95": list(clopper_pearson(correct, n)), "n": n}
    return {"attacks": {"clean": e, "pgd": e}, "worst_case": e}


@pytest.mark.parametrize("left, right, relation, verdict", [
    (90, 10, ">", "reproduced"),
    (90, 10, ">=", "reproduced"),
    (10, 90, ">", "not reproduced"),
    (10, 90, "<", "reproduced"),
    (52, 48, ">", "inconclusive"),
])
def test_claim_verdicts_from_intervals_without_rows(left, right, relation, verdict):
    """Summaries only (no per-image rows): the 95% intervals decide, and the verdict says so."""
    outs = {"a": Outcome("a", summary=_summary(left)), "b": Outcome("b", summary=_summary(right))}
    v = judge(Claim("a vs b", "a", "b", "pgd", "pgd", relation), outs, "full")
    assert v.verdict == verdict and v.test == "95% intervals" and v.p is None
    assert "decided by the 95% intervals" in v.detail and "no per-image rows" in v.detail
    skipped = judge(Claim("x", "a", "c", "pgd", "pgd", ">"), {**outs, "c": Outcome("c", skipped="no weights")}, "full")
    assert skipped.verdict == "not evaluated" and "no weights" in skipped.detail


def _paired(name: str, correct: set, n: int = 100, ids=None) -> Outcome:
    """An outcome with per-image rows: image i survives pgd when i is in ``correct`` (all clean-correct)."""
    ids = ids or [f"img{i}" for i in range(n)]
    record = {"attacks": [{"attack": "pgd", "family": "pgd", "threat": "linf", "params": {"eps": 8 / 255}}],
              "eval_repeats": 1, "scale": "full"}
    rows = [{"id": ids[i], "label": 0, "clean": [0], "pgd": {"preds": [0 if i in correct else 1], "norm": 0.0}}
            for i in range(n)]
    return Outcome(name, summary=summarize(rows, record), record=record, rows=rows)


def test_paired_claim_is_decided_by_mcnemar_where_the_intervals_overlap():
    """55 vs 45 of the same 100 images: the 95% intervals overlap (the old verdict, inconclusive), but
    the 10 discordant images all favour the left side: exact McNemar p = 2 / 2^10 decides."""
    outs = {"a": _paired("a", set(range(55))), "b": _paired("b", set(range(45)))}
    v = judge(Claim("a beats b", "a", "b", "pgd", "pgd", ">"), outs, "full")
    assert v.verdict == "reproduced" and v.test == "exact McNemar"
    assert v.p == pytest.approx(2 / 1024) and v.paired == 100 and v.discordant == (10, 0)
    assert "intervals overlap" in v.detail and "p = 0.00195" in v.detail
    assert "decided by the exact McNemar test" in v.detail
    assert judge(Claim("b beats a", "b", "a", "pgd", "pgd", ">"), outs, "full").verdict == "not reproduced"
    assert judge(Claim("a <= b", "a", "b", "pgd", "pgd", "<="), outs, "full").verdict == "not reproduced"
    # 52 vs 50 of 100 with 3 vs 1 discordant images: p = 2 * (1 + 4) / 16 = 0.625, inconclusive
    outs = {"a": _paired("a", set(range(52))), "b": _paired("b", set(range(49)) | {60})}
    v = judge(Claim("a beats b", "a", "b", "pgd", "pgd", ">"), outs, "full")
    assert (v.verdict, v.discordant, v.p) == ("inconclusive", (3, 1), pytest.approx(0.625))
    # two attacks on one run are paired too (the same rows)
    one = _paired("a", set(range(30)))
    assert judge(Claim("clean beats pgd", "a", "a", "clean", "pgd", ">"), {"a": one}, "full").discordant == (70, 0)


def test_paired_test_matches_images_by_id_not_by_position():
    """The right run holds the same images in another order: pairing is by image id."""
    ids = [f"img{i}" for i in range(100)]
    left = _paired("a", set(range(55)))
    rev = list(reversed(ids))  # position j holds image 99 - j; survivors are images 0..44
    right = _paired("b", {j for j in range(100) if 99 - j < 45}, ids=rev)
    v = judge(Claim("a beats b", "a", "b", "pgd", "pgd", ">"), {"a": left, "b": right}, "full")
    assert v.discordant == (10, 0) and v.verdict == "reproduced"
    # no image in common: no paired test, the intervals decide and say why
    other = _paired("b", set(range(45)), ids=[f"x{i}" for i in range(100)])
    v = judge(Claim("a beats b", "a", "b", "pgd", "pgd", ">"), {"a": left, "b": other}, "full")
    assert v.test == "95% intervals" and v.verdict == "inconclusive" and "share no image id" in v.detail


def test_rows_that_disagree_with_the_summary_are_not_paired():
    o = _paired("a", set(range(55)))
    o.summary = _summary(60)  # the stored summary says 60 correct; the rows give 55
    got, why = o.correct_by_image("pgd")
    assert got is None and "do not add up" in why


def test_shipped_protocol_claims_parse():
    from benchmark.protocols import load_protocol

    claims = parse_claims(load_protocol("atop_table7"))
    assert any(c.left == "atop_gan_rt2" and c.right == "atop_gan_pre_rt2" and c.left_attack == "pgd" for c in claims)
    assert parse_claims(load_protocol("addt_dwbox"))[0].left_attack == "dwbox_both"


TINY = f"""name: tinyproto
citation: "a test protocol"
dataset: cifar10
threat: linf
subset: first:8
attacks: [fgsm, pgd]
defenses: ["{PLUG}:tiny", "{PLUG}:noisy", "{{missing}}"]
claims:
  - {{claim: "tiny is at least as accurate as noisy", left: "{PLUG}:tiny", right: "{PLUG}:noisy", attack: clean, relation: ">="}}
  - {{claim: "the missing defense beats tiny", left: "{{missing}}", right: "{PLUG}:tiny", attack: pgd, relation: ">"}}
"""


def write_protocol(path, name: str, body: str, subset: str = "first:8"):
    """A test protocol YAML: the common header (cifar10, l-inf, ``subset``) and ``body``."""
    path.write_text(f'name: {name}\ncitation: "a test protocol"\ndataset: cifar10\nthreat: linf\n'
                    f"subset: {subset}\n" + body)
    return path


@pytest.fixture
def tiny_protocol(tmp_path):
    plug = tmp_path / "missing_weights.py"
    plug.write_text("from benchmark.errors import BenchError\n\n\ndef missing():\n"
                    "    raise BenchError(\"no shipped weights 'missing'; train them first\")\n")
    f = tmp_path / "tinyproto.yaml"
    f.write_text(TINY.replace("{missing}", f"{plug}:missing"))
    return f, f"{plug}:missing"


def test_reproduce_cli_tiny_protocol(tiny_protocol, tmp_path, capsys):
    proto, missing = tiny_protocol
    res = tmp_path / "res"
    assert main(["reproduce", str(proto), "--scale", "smoke", "--results", str(res)]) == 0
    text = capsys.readouterr().out
    assert f"skipped {missing}:" in text and "no shipped weights 'missing'" in text
    assert "tinyproto at scale smoke: ours vs published" in text and "claims of tinyproto" in text
    assert "tiny is at least as accurate as noisy" in text and "inconclusive" in text and "not evaluated" in text
    assert "exact McNemar" in text and "decided by" in text and "McNemar p" in text  # the paired test decided
    dirs = sorted(p.name for p in (res / "reproduce" / "tinyproto").iterdir())
    assert len(dirs) == 2 and all((res / "reproduce" / "tinyproto" / d / "summary.json").is_file() for d in dirs)
    # the stored runs feed the leaderboard like any other run
    tables, _ = build_board("cifar10", "linf", str(res))
    assert sum(len(t.frame[t.frame["source"] == "ours"]) for t in tables) == 2


def test_reproduce_judges_each_threat_model_on_its_own_worst_case(tmp_path):
    """A protocol running the paper's threat model (BPDA) beside ours (exact): worst_case:bpda and
    worst_case:exact are each the worst case of their own attacks (one attack each here, so they
    equal those attacks' accuracies), the mixed worst case is not reported, and a claim on
    worst_case:bpda is judged on the paired images."""
    proto = tmp_path / "tm.yaml"
    write_protocol(proto, "tmproto", body=f"""attacks: [pgd, pgd_exact]
attack_overrides:
  pgd: {{grad_mode: bpda}}
  pgd_exact: {{preset: pgd, steps: 1, step_size: 0.0001}}
defenses: ["{PLUG}:noisy"]
claims:
  - {{claim: "bpda worst case is at most clean", left: "{PLUG}:noisy", right: "{PLUG}:noisy", left_attack: "worst_case:bpda", right_attack: clean, relation: "<="}}
  - {{claim: "exact worst case is at most clean", left: "{PLUG}:noisy", right: "{PLUG}:noisy", left_attack: "worst_case:exact", right_attack: clean, relation: "<="}}
""")
    rep = reproduce(str(proto), scale="smoke", results=tmp_path / "res", published=load_published(paths=[]))
    cmp = rep.comparison.set_index("metric")
    assert "worst_case" not in cmp.index
    assert cmp.loc["worst_case:bpda", "ours"] == pytest.approx(cmp.loc["pgd", "ours"])
    assert cmp.loc["worst_case:exact", "ours"] == pytest.approx(cmp.loc["pgd_exact", "ours"])
    assert cmp.loc["pgd_exact", "ours"] > cmp.loc["pgd", "ours"]  # a 1e-4 step barely moves the images
    for v in rep.verdicts:
        assert v.test == "exact McNemar" and v.paired == 8, v.detail


def test_reproduce_compares_with_published(tiny_protocol, tmp_path):
    import yaml

    proto, _ = tiny_protocol
    pub = tmp_path / "pub.yaml"
    pub.write_text(yaml.safe_dump({"rows": [{**BASE, "table": "T9", "row": "tiny PGD", "ours": f"{PLUG}:tiny",
                                             "protocol": "tinyproto", "protocol_attack": "pgd", "clean": 12.5,
                                             "robust": 40.0}]}))
    rep = reproduce(str(proto), scale="smoke", defenses=[f"{PLUG}:tiny"], results=tmp_path / "res",
                    published=load_published(paths=[pub]))
    cmp = rep.comparison.set_index("metric")
    row = cmp.loc["pgd"]
    assert row["published"] == 40.0 and row["delta"] == pytest.approx(row["ours"] - 40.0)
    assert row["citation"] == "P, T9, row tiny PGD" and row["n"] == 8
    assert cmp.loc["clean", "published"] == 12.5
    assert [v.verdict for v in rep.verdicts] == ["not evaluated", "not evaluated"]  # noisy / missing not run


def test_reproduce_bad_claim_is_rejected(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(TINY.replace("{missing}", f"{PLUG}:tiny").replace('relation: ">="', 'relation: "=="'))
    with pytest.raises(BenchError, match="relation must be one of"):
        reproduce(str(f), scale="smoke", results=tmp_path / "r")


def test_render_md_marks_published_interval_as_approximate():
    tables, _ = build_board("cifar10", "linf", "/nonexistent/runs")
    md = render(tables, [], "md")
    assert "~[" in md and "Lin et al., AToP" in md and PUBLISHED_DIR.name == "published"


def test_html_sort_script_is_valid_javascript(tmp_path):
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    from leaderboards.board import render_html

    js = tmp_path / "sort.js"
    js.write_text(render_html([], []).split("<script>")[1].split("</script>")[0])
    assert subprocess.run([node, "--check", str(js)], capture_output=True, timeout=60).returncode == 0


def _chromium() -> str | None:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    for p in ("/usr/lib/chromium-headless-shell/chromium-headless-shell", "/usr/lib/chromium/chromium"):
        if Path(p).is_file():
            return p
    return None


def test_html_board_renders_and_sorts_in_headless_chromium(tmp_path):
    """The static page in a real browser: a screenshot with content, and a click on the
    'worst case' header sorts the rows by that column (numbers ascending, blanks last)."""
    import subprocess

    from PIL import Image

    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium installed (Debian: apt-get install chromium-headless-shell)")
    tables, notes = build_board("cifar10", "linf", "/nonexistent/runs")
    html = render(tables, notes, "html")
    page = tmp_path / "board.html"
    page.write_text(html)
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    png = tmp_path / "board.png"
    r = subprocess.run([*base, f"--screenshot={png}", "--window-size=1400,900", page.as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert png.is_file(), r.stderr[-2000:]
    im = Image.open(png).convert("L")
    assert im.size == (1400, 900) and sum(1 for c in im.histogram() if c) > 16  # text, not a blank page
    probe = html.replace("</body>", """<script>
var t = document.querySelector("table.sortable"), col = -1;
t.querySelectorAll("th").forEach(function (th, i) { if (th.textContent.trim() === "worst case") { col = i; } });
t.querySelectorAll("th")[col].click();
document.title = "SORTED:" + JSON.stringify(Array.prototype.map.call(t.tBodies[0].rows, function (r) {
  return r.cells[col].getAttribute("data-sort"); }));
</script></body>""")
    (tmp_path / "probe.html").write_text(probe)
    r = subprocess.run([*base, "--dump-dom", (tmp_path / "probe.html").as_uri()], capture_output=True, text=True, timeout=180)
    title = r.stdout.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title.startswith("SORTED:"), r.stdout[:500]
    keys = json.loads(title[len("SORTED:"):].replace("&quot;", '"'))
    nums = [float(k) for k in keys if k not in (None, "")]
    assert len(nums) >= 2 and nums == sorted(nums)
    assert all(k in (None, "") for k in keys[len(nums):])  # blanks sort last


def test_board_names_runs_with_defense_options(tmp_path):
    """Two configurations of one defense (bench run --defense-opt) are two rows, each named by its options."""
    for i, steps in enumerate((10, 100)):
        d = fake_run(tmp_path / f"r{i}", defense="diffpure", stochastic=True, attacks={"pgd_eot": (40 + i, "pgd", PGD(20, 10))})
        edit_record(d, defense_options={"steps": steps})
    (tab,) = board_frames(tmp_path)[0].values()
    ours = set(tab.frame[tab.frame["source"] == "ours"]["defense"])
    assert ours == {"diffpure[steps=10]", "diffpure[steps=100]"}


def test_reproduce_extra_threat_runs_apart_and_n_and_attacks_cut(tmp_path):
    """An extra threat (StAdv) runs as its own run named DEFENSE@stadv, with its own eps and
    worst case (never mixed with the l-inf attacks); a claim compares the two on the same images.
    ``n`` reads the first n of ``first:2000`` (more than the embedded 1,000) as ``first:n``;
    ``attacks`` keeps only the named attacks, so a claim on another one is not evaluated."""
    proto = tmp_path / "x.yaml"
    write_protocol(proto, "xproto", subset="first:2000", body=f"""attacks: [fgsm, pgd]
extra_threats:
  stadv: {{attacks: [stadv]}}
defenses: ["{PLUG}:tiny"]
claims:
  - {{claim: "stadv at most clean", left: "{PLUG}:tiny@stadv", right: "{PLUG}:tiny", left_attack: stadv, right_attack: clean, relation: "<="}}
  - {{claim: "fgsm was not run", left: "{PLUG}:tiny", right: "{PLUG}:tiny", left_attack: fgsm, right_attack: clean, relation: "<="}}
""")
    rep = reproduce(str(proto), scale="smoke", results=tmp_path / "res", n=12, attacks=["pgd", "stadv"],
                    diagnostics=False, published=load_published(paths=[]))
    by = {o.defense: o for o in rep.outcomes}
    assert sorted(by) == [f"{PLUG}:tiny", f"{PLUG}:tiny@stadv"]
    lin, st = by[f"{PLUG}:tiny"].record, by[f"{PLUG}:tiny@stadv"].record
    assert lin["threat"] == "linf" and st["threat"] == "stadv"
    assert [a["attack"] for a in lin["attacks"]] == ["pgd"] and [a["attack"] for a in st["attacks"]] == ["stadv"]
    assert st["attacks"][0]["params"]["eps"] == pytest.approx(0.05)  # StAdv's own bound, not the l-inf eps
    assert lin["n"] == st["n"] == 12 and lin["subset"] == "first:2000[:12]"
    assert lin["ids"] == st["ids"] and len(lin["ids"]) == 12
    v_st, v_fgsm = rep.verdicts
    assert v_st.test == "exact McNemar" and v_st.paired == 12
    assert v_fgsm.verdict == "not evaluated" and "no fgsm result" in v_fgsm.detail
    worst = judge(Claim("w", f"{PLUG}:tiny", f"{PLUG}:tiny", "worst_case", "clean", "<="), by, "smoke", attacks_cut=True)
    assert worst.verdict == "not evaluated" and "ran a subset" in worst.detail
    assert judge(Claim("w", f"{PLUG}:tiny", f"{PLUG}:tiny", "worst_case", "clean", "<="), by, "smoke").test == "exact McNemar"
    with pytest.raises(BenchError, match="only 2000 images"):
        reproduce(str(proto), scale="smoke", results=tmp_path / "r2", n=2001)
    with pytest.raises(BenchError, match="not an attack of protocol xproto"):
        reproduce(str(proto), scale="smoke", results=tmp_path / "r2", attacks=["cw100"])


def test_protocol_defense_options_pin_addt_eval_settings_under_the_users():
    """ADDT's evaluation (t = 100 with diffusers' fixed_large variance) is pinned per defense in
    the ADDT protocols; an option the user sets wins; other defenses get none."""
    from benchmark.protocols import apply_protocol
    from benchmark.runner import RunSpec

    for name in ("addt_dwbox", "addt_pgd20_eot10", "addt_pgd200_eot20"):
        for d in ("addt", "diffpure"):
            spec = apply_protocol(RunSpec(defense=d), name)
            assert spec.defense_options == {"t_star": 0.101, "variance": "fixed_large"}, (name, d)
    spec = apply_protocol(RunSpec(defense="addt", defense_options={"t_star": 0.2}), "addt_dwbox")
    assert spec.defense_options == {"t_star": 0.2, "variance": "fixed_large"}
    assert apply_protocol(RunSpec(defense="atop_gan"), "addt_dwbox").defense_options == {}
    assert apply_protocol(RunSpec(defense="addt"), "lee_kim_pgd200_eot20").defense_options == {}


@pytest.mark.parametrize("bad, match", [
    ("extra_threats: {linf: {attacks: [pgd]}}", "the protocol's own threat"),
    ("extra_threats: {stadv: {attacks: [pgd]}}", "also in the protocol's attacks"),
    ("extra_threats: {stadv: {steps: 3}}", "must be a mapping with 'attacks'"),
    ("defense_options: {addt: 3}", "must be a mapping of factory keywords"),
    ("scale_cuts: {full: {}}", "not a reduced scale"),
    ("scale_cuts: {cpu: {diffpure: {defense_options: {steps: 10}}}}", "not one of the protocol's defenses"),
    ("scale_cuts: {cpu: {'PLUGTINY': {stepz: 3}}}", "must be a mapping with keys from"),
    ("scale_cuts: {cpu: {'PLUGTINY': {steps: 0}}}", "must be a positive integer"),
])
def test_protocol_rejects_bad_extra_threats_and_options(tmp_path, bad, match):
    f = tmp_path / "p.yaml"
    f.write_text(TINY.replace("{missing}", f"{PLUG}:tiny") + bad.replace("PLUGTINY", f"{PLUG}:tiny") + "\n")
    with pytest.raises(BenchError, match=match):
        reproduce(str(f), scale="smoke", results=tmp_path / "r")


def test_claim_on_two_budgets_a_scale_made_identical_is_not_evaluated(tmp_path):
    """At scale smoke PGD-20 and PGD-50 are both capped to 2 steps: comparing them would judge an
    attack against a copy of itself, so the claim is not evaluated; PGD-1 stays apart and is judged."""
    proto = tmp_path / "b.yaml"
    write_protocol(proto, "budgets", body=f"""attacks: [pgd1, pgd, pgd50]
attack_overrides:
  pgd1: {{preset: pgd, steps: 1}}
  pgd50: {{preset: pgd, steps: 50}}
defenses: ["{PLUG}:tiny"]
claims:
  - {{claim: "more steps lower accuracy", left: "{PLUG}:tiny", right: "{PLUG}:tiny", left_attack: pgd50, right_attack: pgd, relation: "<"}}
  - {{claim: "two steps beat one", left: "{PLUG}:tiny", right: "{PLUG}:tiny", left_attack: pgd, right_attack: pgd1, relation: "<="}}
""")
    rep = reproduce(str(proto), scale="smoke", results=tmp_path / "res", diagnostics=False,
                    published=load_published(paths=[]))
    capped, apart = rep.verdicts
    assert capped.verdict == "not evaluated" and "same parameters (steps=2" in capped.detail
    assert apart.test == "exact McNemar" and apart.paired == 8


def test_addt_protocol_options_build_the_defenses():
    """The options the ADDT protocols pin are accepted by the registered factories (a protocol
    naming an option the factory refuses would skip the defense in every reproduce run)."""
    from benchmark.build import make_defense
    from benchmark.protocols import apply_protocol
    from benchmark.runner import RunSpec

    for d in ("diffpure", "addt"):
        spec = apply_protocol(RunSpec(defense=d), "addt_dwbox")
        defense = make_defense(d, dataset="cifar10", device="cpu", options={**spec.defense_options, "steps": 1})
        assert defense.info["variance"] == "fixed_large" and defense.info["noise_levels"] == 101


def test_protocol_scale_cut_overrides_the_defenses_own_at_that_scale_only():
    """ADDT's fixed_large variance needs 10 strided steps at --scale cpu, not diffpure's own cut of
    2 (SCALE_CUTS in defenses/diffpure.py): the protocol's cut wins, is recorded in scale_limits,
    leaves the defense's other limits and a user's --defense-opt alone, and is absent at full scale."""
    from benchmark.protocols import apply_protocol
    from benchmark.runner import RunSpec
    from benchmark.scalecut import apply_scale_cut, scale_limits

    plain = apply_scale_cut(RunSpec(defense="diffpure", scale="cpu"))
    assert plain.defense_options == {"steps": 2}
    for name in ("addt_dwbox", "addt_pgd20_eot10", "addt_pgd200_eot20", "addt_q1_budgets"):
        for d in ("diffpure", "addt"):
            spec = apply_scale_cut(apply_protocol(RunSpec(defense=d, scale="cpu"), name))
            assert spec.defense_options == {"t_star": 0.101, "variance": "fixed_large", "steps": 10}, (name, d)
            lim = scale_limits(spec)
            assert lim["defense_options"] == {"steps": 10} and lim["n"] == 16 and lim["steps"] == 5
    user = apply_scale_cut(apply_protocol(RunSpec(defense="addt", scale="cpu", defense_options={"steps": 4}), "addt_dwbox"))
    assert user.defense_options["steps"] == 4 and "defense_options" not in scale_limits(user)
    full = apply_scale_cut(apply_protocol(RunSpec(defense="addt", scale="full"), "addt_dwbox"))
    assert "steps" not in full.defense_options and scale_limits(full) == {}


def test_scale_cut_of_a_protocol_given_as_a_file_is_applied(tmp_path):
    """A protocol passed as a YAML path is recorded by its name only: its cut travels in the spec
    (protocol_cut), so it is applied and recorded, and the run folder's hash changes with it."""
    from benchmark.protocols import apply_protocol
    from benchmark.runner import RunSpec, spec_hash
    from benchmark.scalecut import apply_scale_cut, scale_limits

    f = tmp_path / "p.yaml"
    f.write_text(TINY.replace("{missing}", f"{PLUG}:tiny") + f"scale_cuts: {{smoke: {{'{PLUG}:tiny': {{n: 3}}}}}}\n")
    spec = apply_scale_cut(apply_protocol(RunSpec(defense=f"{PLUG}:tiny", scale="smoke"), str(f)))
    assert spec.protocol == "tinyproto" and spec.protocol_cut == {"n": 3} and scale_limits(spec)["n"] == 3
    other = apply_scale_cut(apply_protocol(RunSpec(defense=f"{PLUG}:noisy", scale="smoke"), str(f)))
    assert other.protocol_cut == {} and scale_limits(other)["n"] == 8
    plain = RunSpec(defense=f"{PLUG}:tiny", scale="smoke", protocol="tinyproto")
    assert spec_hash(plain) != spec_hash(RunSpec(**{**plain.__dict__, "protocol_cut": {"n": 3}}))


def test_one_published_row_serves_several_protocols():
    """ADDT's Q1 numbers (DiffPure 47.27 under PGD-20+EOT-10, 41.02 under PGD-200+EOT-20) are the
    baseline of addt_pgd20_eot10 / lee_kim_pgd200_eot20 and of addt_q1_budgets, where both budgets
    sit side by side; a protocol that names neither gets none of them."""
    from benchmark.protocols import load_protocol
    from leaderboards.reproduce import Outcome, comparison

    pub = load_published("cifar10")
    run = {"attacks": {a: {"accuracy": 0.5, "ci95": [0.4, 0.6], "correct": 256, "n": 512}
                       for a in ("clean", "pgd2", "pgd_eot", "pgd200_eot20")}}
    got = {}
    for name in ("addt_q1_budgets", "addt_pgd20_eot10", "lee_kim_pgd200_eot20", "addt_dwbox"):
        df = comparison(load_protocol(name), [Outcome("diffpure", summary=run, record={})], pub)
        got[name] = dict(zip(df["metric"], df["published"]))
    assert got["addt_q1_budgets"]["pgd_eot"] == 47.27 and got["addt_q1_budgets"]["pgd200_eot20"] == 41.02
    assert got["addt_pgd20_eot10"]["pgd_eot"] == 47.27 and got["lee_kim_pgd200_eot20"]["pgd200_eot20"] == 41.02
    assert pd.isna(got["addt_q1_budgets"]["pgd2"])  # no published PGD-2 rung
    assert got["addt_dwbox"]["pgd_eot"] == 47.27  # its own row, unchanged
