"""Cost savers (benchmark.speed, the runner's clean-correct scope): faster, and no number moves."""
import json

import pytest
import torch
from torch import nn

import benchmark.speed as speed
from benchmark.data import EvalSet
from benchmark.errors import BenchError
from benchmark.runner import RunSpec, run, spec_hash
from defenses.base import Defense
from tests.plugins.toy_defenses import Gaussian as _Noise  # x + 0.1 N(0, 1)

CPU = torch.device("cpu")


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


class _Views(nn.Module):
    """Flattens a conv activation with .view, which a channels-last activation refuses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.lin = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        h = self.conv(x)
        return self.lin(h.view(h.shape[0], -1))


def _evalset(net: nn.Module, n: int = 12, flip: int = 4) -> EvalSet:
    """Random 8x8 images labelled by ``net``; the first ``flip`` labels are wrong (clean-misclassified)."""
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:flip] = (y[:flip] + 1) % 10
    return EvalSet(x, y, [f"img{i}" for i in range(n)], "toy", "random", f"first:{n}", [str(i) for i in range(10)])


def _x() -> torch.Tensor:
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_auto_layout_is_channels_last_on_cpu_after_the_probe():
    d = Defense(_conv_net(), name="toy").freeze()
    before = d(_x()).detach()
    choice = speed.choose_memory_format(d, _x(), requested="auto", seed=0, generator=torch.Generator().manual_seed(0))
    assert choice.memory_format == "channels_last" and "probe" in choice.reason
    assert d.classifier[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not d.classifier[0].weight.is_contiguous()
    assert torch.allclose(d(_x()), before, atol=1e-5)
    c = speed.choose_memory_format(Defense(_conv_net()).freeze(), _x(), requested="contiguous", seed=0, generator=None)
    assert c.memory_format == "contiguous" and c.reason == "requested"


def test_layout_probe_falls_back_on_a_module_that_breaks_and_refuses_an_explicit_request():
    d = Defense(_Views(), name="views").freeze()
    choice = speed.choose_memory_format(d, _x(), requested="auto", seed=0, generator=None)
    assert choice.memory_format == "contiguous" and choice.reason.startswith("auto fell back: RuntimeError")
    assert d.classifier.conv.weight.is_contiguous()  # converted back
    d(_x())  # and still works
    with pytest.raises(BenchError, match="channels_last changes this defense's logits"):
        speed.choose_memory_format(Defense(_Views()).freeze(), _x(), requested="channels_last", seed=0, generator=None)
    with pytest.raises(BenchError, match="unknown memory format"):
        speed.choose_memory_format(d, _x(), requested="nhwc", seed=0, generator=None)


@pytest.mark.parametrize("stochastic", [False, True])
def test_skipping_clean_misclassified_images_changes_no_number(tmp_path, stochastic):
    """Attacking every image or only the clean-correct ones gives the same summary on a deterministic
    defense (robust accuracy counts a clean-misclassified image as not robust), with fewer passes."""
    net = _conv_net()
    ev = _evalset(net)
    calls: list[int] = []

    def defense():
        d = Defense(_conv_net(), transform=_Noise() if stochastic else None, name="toy").freeze()
        real = d.forward

        def counted(x, noise=None, generator=None):
            calls.append(x.shape[0])
            return real(x, noise, generator)

        d.forward = counted
        return d

    # FGSM: no random start, so an image's adversarial example does not depend on its batch-mates
    # diagnostics off: they count the attacked images, which is what differs here by design
    base = dict(defense="toy", dataset="toy", attacks=["fgsm"], batch_size=6, scale="full", eval_repeats=3,
                memory_format="contiguous", diagnostics=False)
    calls.clear()
    some = run(RunSpec(**base), out=tmp_path / "some", device=CPU, defense=defense(), evalset=ev)
    n_some = sum(calls)
    calls.clear()
    every = run(RunSpec(**base, attack_all=True), out=tmp_path / "all", device=CPU, defense=defense(), evalset=ev)
    n_all = sum(calls)
    if stochastic:  # fresh draws follow the attacked batch's shape, so only the scope's bookkeeping is exact
        for k in ("clean", "fgsm"):
            assert some.summary["attacks"][k]["n"] == every.summary["attacks"][k]["n"] == 12
        assert some.summary["attacks"]["clean"] == every.summary["attacks"]["clean"]
    else:
        assert some.summary == every.summary
    assert some.summary["attacks"]["clean"]["correct"] <= 8 and some.summary["attacks"]["fgsm"]["correct"] <= 8
    assert n_some < n_all
    rows = [json.loads(line) for line in (some.dir / "samples.jsonl").read_text().splitlines()]
    skipped = [r["id"] for r in rows if r["fgsm"].get("skipped")]
    wrong = [r["id"] for r in rows if sum(p == r["label"] for p in r["clean"]) * 2 <= 3]
    assert skipped == wrong and len(skipped) >= 4
    assert some.record["attack_scope"] == "clean-correct" and every.record["attack_scope"] == "all"
    assert some.record["run_hash"] != every.record["run_hash"]


def test_new_options_are_hashed_and_recorded(tmp_path, monkeypatch):
    s = RunSpec(defense="toy")
    for changed in (dict(attack_all=True), dict(memory_format="contiguous"), dict(compile=True)):
        assert spec_hash(RunSpec(defense="toy", **changed)) != spec_hash(s)
    compiled: list[nn.Module] = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or m)  # never really compile in tests
    d = Defense(_conv_net(), name="toy").freeze()
    clf = d.classifier
    ev = _evalset(clf, flip=0)
    res = run(RunSpec(defense="toy", dataset="toy", attacks=["fgsm"], batch_size=6, scale="full", compile=True),
              out=tmp_path / "r", device=CPU, defense=d, evalset=ev)
    assert compiled == [clf]
    assert res.record["compile"] is True and res.record["memory_format"] == "channels_last"
    assert res.record["memory_format_reason"].startswith("probe max |logit diff|")


def test_boards_resummarize_runs_from_before_the_robust_accuracy_definition(tmp_path):
    """A stored run without ``attack_scope`` (older code attacked, and counted, every image) is
    re-summarized from its rows, so a clean-misclassified image never counts as robust on a board."""
    from benchmark.runner import record_hash
    from leaderboards.runs import find_runs

    net = _conv_net()
    ev = _evalset(net)
    d = Defense(_conv_net(), transform=_Noise(), name="toy").freeze()
    res = run(RunSpec(defense="toy", dataset="toy", attacks=["fgsm"], batch_size=6, scale="full", attack_all=True,
                      memory_format="contiguous"), out=tmp_path / "old", device=CPU, defense=d, evalset=ev)
    rec = json.loads((res.dir / "record.json").read_text())
    rec.pop("attack_scope")
    rec["run_hash"] = record_hash(rec)  # an old run's record verified against its own contents
    (res.dir / "record.json").write_text(json.dumps(rec))
    rows = [json.loads(line) for line in (res.dir / "samples.jsonl").read_text().splitlines()]
    wrong = next(r for r in rows if sum(p == r["label"] for p in r["clean"]) * 2 <= 1)
    wrong["fgsm"]["preds"] = [wrong["label"]]  # what an old run could hold: "robust" though wrong on clean
    (res.dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stale = json.loads((res.dir / "summary.json").read_text())
    stale["attacks"]["fgsm"]["correct"] += 1
    (res.dir / "summary.json").write_text(json.dumps(stale))
    (found,), notes = find_runs(tmp_path)
    assert found.summary["attacks"]["fgsm"]["correct"] == res.summary["attacks"]["fgsm"]["correct"]
    assert any("re-summarized" in n for n in notes)
    (res.dir / "samples.jsonl").unlink()  # no rows: the stored summary stays, with a warning
    (found,), notes = find_runs(tmp_path)
    assert found.summary == stale and any("may be higher" in n for n in notes)
