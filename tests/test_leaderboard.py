"""Leaderboards: published tables as checked data, boards from stored runs, the CI gate, reproduce."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.runner import RunSpec, run, summarize
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
              "scale": scale, "attacks": recs, "eval_repeats": 1, "n": n}
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


def board_frames(results_dir, dataset="cifar10", threat=None):
    tables, notes = build_board(dataset, threat, str(results_dir))
    return {t.scale: t for t in tables if t.threat == (threat or t.threat) and abs((t.eps or 0) - 8 / 255) < 1e-6}, notes


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
    lo, hi = clopper_pearson(250, 500)
    assert (under["ci95_lo"], under["ci95_hi"]) == pytest.approx((100 * lo, 100 * hi))
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
    rec = json.loads((d / "record.json").read_text())
    rec.update(precision=used, precision_requested=asked,
               precision_check={"min_cosine": 0.995 if used == "bf16" else 0.97})
    (d / "record.json").write_text(json.dumps(rec))
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


def test_check_passes_then_fails_on_lowered_copy(results, tmp_path, capsys):
    base = _baseline(tmp_path / "b.yaml", [ENTRY, {**ENTRY, "attack": "worst_case", "expected": 59.0}])
    assert main(["check", "--baseline", str(base), "--results", str(results)]) == 0
    assert "ok: 2 baseline" in capsys.readouterr().out
    # a copy whose stored number was lowered by 20 points, finished later: it is the one checked
    lowered = tmp_path / "lowered"
    shutil.copytree(results, lowered)
    d = lowered / "full_ok"
    s = json.loads((d / "summary.json").read_text())
    s["attacks"]["pgd200"].update(correct=195, accuracy=0.39, ci95=list(clopper_pearson(195, 500)))
    (d / "summary.json").write_text(json.dumps(s))
    out_code = main(["check", "--baseline", str(base), "--results", str(lowered)])
    text = capsys.readouterr().out
    assert out_code == 1 and "REGRESSION" in text and "FAIL: 1 of 2" in text and "-20.0" in text
    # a small drop inside the stored interval's half-width (about 4.3 points here) is not a regression
    s["attacks"]["pgd200"].update(correct=285, accuracy=0.57, ci95=list(clopper_pearson(285, 500)))
    (d / "summary.json").write_text(json.dumps(s))
    assert main(["check", "--baseline", str(base), "--results", str(lowered)]) == 0


@pytest.mark.parametrize("what, message", [
    ("missing", "not found"),
    ("yaml", "not valid YAML"),
    ("nomatch", "matches no stored run"),
    ("noattack", "matches no stored run"),
    ("key", "unknown key"),
    ("range", "outside 0-100"),
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
    assert main(["check", "--baseline", str(f), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


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
def test_claim_verdicts(left, right, relation, verdict):
    outs = {"a": Outcome("a", summary=_summary(left)), "b": Outcome("b", summary=_summary(right))}
    v = judge(Claim("a vs b", "a", "b", "pgd", "pgd", relation), outs, "full")
    assert v.verdict == verdict
    skipped = judge(Claim("x", "a", "c", "pgd", "pgd", ">"), {**outs, "c": Outcome("c", skipped="no weights")}, "full")
    assert skipped.verdict == "not evaluated" and "no weights" in skipped.detail


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
    assert f"skipped {missing}: no shipped weights 'missing'" in text
    assert "tinyproto at scale smoke: ours vs published" in text and "claims of tinyproto" in text
    assert "tiny is at least as accurate as noisy" in text and "inconclusive" in text and "not evaluated" in text
    dirs = sorted(p.name for p in (res / "reproduce" / "tinyproto").iterdir())
    assert len(dirs) == 2 and all((res / "reproduce" / "tinyproto" / d / "summary.json").is_file() for d in dirs)
    # the stored runs feed the leaderboard like any other run
    tables, _ = build_board("cifar10", "linf", str(res))
    assert sum(len(t.frame[t.frame["source"] == "ours"]) for t in tables) == 2


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
        rec = json.loads((d / "record.json").read_text())
        rec["defense_options"] = {"steps": steps}
        (d / "record.json").write_text(json.dumps(rec))
    (tab,) = board_frames(tmp_path)[0].values()
    ours = set(tab.frame[tab.frame["source"] == "ours"]["defense"])
    assert ours == {"diffpure[steps=10]", "diffpure[steps=100]"}
