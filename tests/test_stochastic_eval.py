"""Stochastic defenses are scored without inflation (issue 16, defects 1-3).

1. AutoAttack-rand keeps attacking an image while any of its ``eval_iter`` passes is correct.
2. A plugin module is probed for hidden randomness on the run's own images; a probe that cannot
   run is an error, never a silent "deterministic".
3. Final predictions of an opaque module never replay a noise draw an attack saw.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import benchmark  # noqa: F401  (torchvision shim)
from tests.plugins.traps import Gaussian
from attacks import autoattack, predict
from benchmark.build import make_defense
from benchmark.cli import main
from benchmark.data import load_eval_set
from benchmark.runner import RunSpec, run
from defenses.base import Defense, ModuleDefense

PLUG = str(Path(__file__).parent / "plugins" / "probe_plugins.py")


# --------------------------------------------------------------------------------------
# 1. AutoAttack-rand's selection rule
# --------------------------------------------------------------------------------------
class _Linear(nn.Module):
    """logit_c = <P_c, x - 0.5> / d for +-1 patterns P_c."""

    def __init__(self, P: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("P", P.flatten(1))

    def forward(self, x):
        return (x.flatten(1) - 0.5) @ self.P.t() / self.P.shape[1]


def test_autoattack_rand_attacks_while_any_pass_is_correct(monkeypatch):
    """Known answer: images x = 0.5 + 0.012 P_y behind Gaussian noise (sigma 0.1). Clean, each pass
    is right with probability ~0.8, so most images are wrong on at least one of 4 passes; at L-inf
    8/255 the noiseless margin (0.012) is flipped by any competent attack. Stopping at the first
    wrong pass (the old rule) leaves those images unattacked, and 15 fresh draws then score 20-23
    of 32 robust (seeds 0-2); attacking while any pass is correct leaves at most 4."""
    import sys

    aa_mod = sys.modules["attacks.autoattack"]  # the package exports a function of the same name
    g = torch.Generator().manual_seed(0)
    P = torch.randint(0, 2, (4, 1, 16, 16), generator=g).float() * 2 - 1
    y = torch.arange(32) % 4
    x = 0.5 + 0.012 * P[y]
    d = Defense(_Linear(P), transform=Gaussian(0.1), name="gauss-toy").freeze()
    sizes: dict[str, int] = {}
    orig = aa_mod._run_component

    def spy(aa, name, xs, ys, seed):
        sizes.setdefault(name, xs.shape[0])
        return orig(aa, name, xs, ys, seed)

    monkeypatch.setattr(aa_mod, "_run_component", spy)
    torch.set_num_threads(1)
    xa = autoattack(d, x, y, version="rand", steps=5, noise_policy="eot:2", eval_iter=4,
                    generator=torch.Generator().manual_seed(0))
    # the clean image is right on at least one of 4 passes for (nearly) every image
    assert sizes["apgd-ce"] >= 28, sizes
    preds = predict(d, xa, repeats=15, generator=torch.Generator().manual_seed(7))
    robust = int(((preds == y).sum(0) * 2 > 15).sum())
    assert robust <= 8, robust


# --------------------------------------------------------------------------------------
# 2. the hidden-randomness probe
# --------------------------------------------------------------------------------------
def test_probe_runs_on_the_datasets_own_resolution():
    """A stochastic module that only takes 224x224 images is found stochastic for ImageNette (the old
    probe fed 2x3x32x32, caught the exception and called it deterministic)."""
    imgs = load_eval_set("imagenette", "first:2").images
    d = make_defense(f"{PLUG}:picky_noisy", dataset="imagenette", probe_images=imgs)
    assert d.stochastic and d.opaque
    # without images given, the dataset's own embedded images are used
    assert make_defense(f"{PLUG}:picky_noisy", dataset="imagenette").stochastic


def test_stochastic_picky_plugin_gets_the_stochastic_battery(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--defense", f"{PLUG}:picky_noisy", "--dataset", "imagenette", "--subset", "first:2",
                 "--scale", "smoke", "--out", str(out), "--quiet"]) == 0
    import json

    rec = json.loads((out / "record.json").read_text())
    assert rec["stochastic"] is True
    assert [a["attack"] for a in rec["attacks"]] == ["autoattack_rand", "pgd_eot"]


def test_a_probe_that_cannot_run_is_one_error_line(tmp_path, capsys):
    rc = main(["run", "--defense", f"{PLUG}:broken", "--subset", "first:2", "--scale", "smoke",
               "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error:") and "probe" in err[0] and "cannot classify" in err[0], err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------
# 3. opaque modules: no replayed noise
# --------------------------------------------------------------------------------------
class _Recorder(nn.Module):
    """Opaque noise from torch's global RNG; remembers a fingerprint of every draw and its phase."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
        self.net(torch.zeros(1, 3, 32, 32))
        self.phase = "attack"
        self.draws: list[tuple[str, tuple[float, ...]]] = []

    def forward(self, x):
        z = torch.randn_like(x)
        self.draws.append((self.phase, tuple(z.flatten()[:16].tolist())))
        return self.net((x + 0.05 * z).clamp(0, 1))


def test_final_predictions_of_an_opaque_module_draw_new_noise(tmp_path, monkeypatch):
    """AutoAttack restores the global RNG it found (fork_rng): without a reseed the final prediction
    replayed exactly the noise of AutoAttack's first pass."""
    import attacks

    rec = _Recorder()
    orig = attacks.predict

    def tagged(*a, **k):
        rec.phase = "predict"
        try:
            return orig(*a, **k)
        finally:
            rec.phase = "attack"

    monkeypatch.setattr(attacks, "predict", tagged)
    defense = ModuleDefense(rec, name="recorder", stochastic=True).freeze()
    spec = RunSpec(defense="recorder", diagnostics=False, attacks=["autoattack_rand", "pgd_eot"], scale="smoke", subset="first:4",
                   eval_repeats=2, attack_all=True)
    run(spec, out=tmp_path / "r", device=torch.device("cpu"), defense=defense)
    seen = {f for p, f in rec.draws if p == "attack"}
    final = [f for p, f in rec.draws if p == "predict"]
    assert len(seen) >= 4 and len(final) == 2 * 3  # clean + 2 attacks, 2 repeats each
    assert not [f for f in final if f in seen]
    assert len(set(final)) == len(final)  # and no prediction pass repeats another
