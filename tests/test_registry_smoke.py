"""Every registered attack preset and every registered defense, smoke-tested (the torchattacks
habit). The parametrisation comes from the registries, so a new entry without a case here fails.

Attacks run at tiny size on the ridge linear classifier of tests/plugins/traps.py, where robustness
has a closed form: an image whose margin to every other class exceeds eps times the dual norm of the
weight difference cannot be misclassified inside the ball. At half the smallest such radius every
attack must leave every image correct (robust = clean, exactly); at the preset's own eps the
adversarial images must stay inside the ball and [0, 1]. Defenses are built at reduced size (or from
a file written in the authors' format); the ones whose weights cannot exist offline must give one
``error:`` line and exit 2 through the CLI.
"""
from __future__ import annotations

import pytest
import torch

from attacks import make_attack
from benchmark.build import make_defense
from benchmark.cli import main
from benchmark.data import load_eval_set
from benchmark.registry import ATTACKS, DEFENSES, load_builtins
from defenses.base import Defense, Stage, randn
from tests.plugins.traps import Linear

load_builtins()
ATTACK_NAMES = sorted(e.name for e in ATTACKS)
DEFENSE_NAMES = sorted(DEFENSES.names())


# ------------------------------------------------------------------------------- attacks
class _Still(Stage):
    """Declares DiffPure's noise parts (so DW-box policies apply) and leaves the image unchanged."""

    noise_names = ("forward", "reverse")
    steps = 2

    def sample_noise(self, x, generator):
        return {"forward": randn(x.shape, generator, x), "reverse": randn(x.shape, generator, x)}

    def forward(self, x, noise):
        return x + 0.0 * (noise["forward"] + noise["reverse"])


class _LinearWithNoiseParts(Defense):
    """The ridge classifier behind an identity purifier with named noise; its K-step surrogate
    (Lee & Kim) is itself, since every step count purifies the same (not at all)."""

    def surrogate(self, steps: int) -> Defense:
        return self

    def derive_noise(self, parent_noise):
        return parent_noise


@pytest.fixture(scope="module")
def linear_case():
    ev = load_eval_set("cifar10", "first:2")
    d = _LinearWithNoiseParts(Linear(), purifier=_Still(), name="ridge").freeze()
    x, y = ev.images.float(), ev.labels
    w, b = d.classifier.w.double(), d.classifier.b.double()
    logits = (x.flatten(1).double() - 0.5) @ w.t() + b
    assert bool((logits.argmax(1) == y).all())  # ridge fits the images it was solved on
    diff = w[y][:, None, :] - w[None, :, :]  # (n, classes, pixels): w_y - w_j
    margin = logits.gather(1, y[:, None]) - logits
    other = torch.ones_like(margin, dtype=torch.bool).scatter(1, y[:, None], False)
    radius = {"linf": (margin / diff.abs().sum(-1))[other].min(), "l2": (margin / diff.norm(dim=-1))[other].min()}
    return d, x, y, {k: float(v) / 2 for k, v in radius.items()}


def _tiny(name: str, threat: str, **extra):
    base = make_attack(name, threat)
    ov = {k: 2 for k in ("steps", "eval_iter") if base.params.get(k) is not None}
    if base.params.get("surrogate_steps") is not None:
        ov["surrogate_steps"] = 1
    if base.params.get("square_queries") is not None:
        ov["square_queries"] = 20
    pol = base.policy
    if pol.eot > 1:
        ov["noise_policy"] = str(pol.without_eot()) + "+eot:2" if pol.fixes_any else "eot:2"
    return make_attack(name, threat, **ov, **extra)


def _run(atk, d, x, y, seed=0):
    atk.policy.check(d)
    return atk(d, x, y, generator=torch.Generator().manual_seed(seed),
               eval_noise=d.sample_noise(x, torch.Generator().manual_seed(seed + 1)))


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_registered_attack_keeps_its_ball_and_cannot_beat_the_certificate(name, linear_case):
    d, x, y, certified = linear_case
    threat = ATTACKS.get(name).meta["threats"][0]
    atk = _tiny(name, threat)
    if threat == "stadv":  # a flow bound: check the flow itself
        xa, flow = atk.family.fn(d, x, y, threat=threat, generator=torch.Generator().manual_seed(0),
                                 eval_noise=None, return_flow=True, **atk.params)
        assert float(flow.abs().max()) <= atk.params["eps"] + 1e-6
    else:
        xa = _run(atk, d, x, y)
        delta = (xa - x).flatten(1)
        norm = delta.abs().amax(1) if threat == "linf" else delta.norm(dim=1)
        assert float(norm.max()) <= atk.params["eps"] + 1e-5, (name, float(norm.max()))
    assert xa.shape == x.shape and torch.isfinite(xa).all() and float(xa.min()) >= 0 and float(xa.max()) <= 1
    with torch.no_grad():
        clean = int((d(x, d.sample_noise(x, torch.Generator().manual_seed(3))).argmax(1) == y).sum())
        robust = int((d(xa, d.sample_noise(x, torch.Generator().manual_seed(3))).argmax(1) == y).sum())
    assert robust <= clean == 2
    if threat in certified:  # inside the certified radius no attack may flip a single image
        xc = _run(_tiny(name, threat, eps=certified[threat]), d, x, y)
        with torch.no_grad():
            assert bool((d.classifier(xc).argmax(1) == y).all()), name


# ------------------------------------------------------------------------------ defenses
def _score_sde_file(tmp_path):
    from defenses.diffpure_sde import reduced_config
    from tests.test_diffpure_sde import _score_sde_checkpoint

    path = tmp_path / "checkpoint_8.pth"
    _score_sde_checkpoint(path, reduced_config(nf=8))
    return {"weights": str(path), "nf": 8, "num_res_blocks": 1, "classifier": "cifar10_standard", "dt": 0.1}


def _addt_sde_folder(tmp_path):
    from defenses.diffpure_sde import reduced_config
    from defenses.ncsnpp import NCSNpp

    (tmp_path / "addt" / "unet").mkdir(parents=True)
    torch.save(NCSNpp(reduced_config(nf=8)).state_dict(), tmp_path / "addt" / "unet" / "net.pth")
    return {"weights": str(tmp_path / "addt"), "nf": 8, "num_res_blocks": 1, "classifier": "cifar10_standard",
            "inference_steps": 10}


def _edm_file(tmp_path):
    from defenses.addt_edm import EDMPrecond, reduced_config

    path = tmp_path / "edm.pth"  # what ADDT's export.py writes: an EDMPrecond state dict
    torch.save(EDMPrecond(reduced_config(model_channels=8)).state_dict(), path)
    return {"weights": str(path), "model_channels": 8, "num_blocks": 1, "num_steps": 2, "classifier": "cifar10_standard"}


# name -> (dataset, options from tmp_path): built here at reduced size or from an authors'-format file
BUILT = {
    **{n: ("cifar10", lambda _: {}) for n in ("standard", "at_pgd", "rn18_aa_example", "atop_ae", "atop_ae_pre",
                                             "atop_gan", "atop_gan_pre_rt1", "atop_gan_pre_rt2", "atop_gan_pre_rt3",
                                             "atop_gan_rt1", "atop_gan_rt2", "atop_gan_rt3")},
    **{n: ("cifar10", lambda _: {"steps": 1}) for n in ("diffpure", "diffpure_ddim", "addt")},
    "cifar100_resnet56": ("cifar100", lambda _: {}),
    "diffpure_sde": ("cifar10", _score_sde_file),
    "addt_sde": ("cifar10", _addt_sde_folder),
    "addt_edm": ("cifar10", _edm_file),
}
# name -> CLI arguments: weights that cannot exist offline (not shipped, not published, or gigabytes)
ABSENT = {
    "atop_deepfill": ["--defense", "atop_deepfill"],
    "diffpure_imagenet": ["--defense", "diffpure_imagenet", "--dataset", "imagenette"],
    "cifar_hub": ["--defense", "cifar_hub"],
    "robustbench:<Name>": ["--defense", "robustbench:Standard"],
}
CLASSES = {"cifar10": 10, "cifar100": 100}


@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_every_registered_defense_builds_or_says_why_not(name, tmp_path, capsys, monkeypatch):
    assert name in BUILT or name in ABSENT, f"defense {name!r} is registered but has no smoke case here"
    if name in ABSENT:
        _one_error(ABSENT[name], tmp_path, capsys, monkeypatch)
        return
    dataset, options = BUILT[name]
    d = make_defense(name, dataset=dataset, options=options(tmp_path))
    x = load_eval_set(dataset, "first:2").images.float()
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    with torch.no_grad():
        a = d(x, d.sample_noise(x, g(0)))
        assert a.shape == (2, CLASSES[dataset]) and torch.isfinite(a).all()
        assert d.stochastic == bool(DEFENSES.get(name).meta["stochastic"])
        if d.stochastic:
            assert torch.equal(a, d(x, d.sample_noise(x, g(0))))  # the same explicit noise, the same logits
            assert not torch.equal(a, d(x, d.sample_noise(x, g(1))))
        else:
            assert d.sample_noise(x, g(0)).is_empty and torch.equal(a, d(x))


def test_robustbench_without_a_checkpoint_gives_one_error(tmp_path, capsys, monkeypatch):
    _one_error(ABSENT["robustbench:<Name>"], tmp_path, capsys, monkeypatch)


def _one_error(args, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PURIFYBENCH_CACHE", str(tmp_path / "cache"))  # nothing downloaded before
    capsys.readouterr()
    code = main(["run", *args, "--subset", "first:2", "--attacks", "clean", "--scale", "smoke", "--quiet",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert "weights" in errors[0] or "checkpoint" in errors[0]
    assert not (tmp_path / "run" / "summary.json").exists()
