"""Attack suite: analytic optimum, undefended collapse, noise policies, BPDA, bounds, presets.

All models are tiny (synthetic 1x16x16 or 1x32x32 images) and CPU-only; torch runs on one
thread here because oversubscribed threads on a shared 2-core box are ~50x slower.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import benchmark  # noqa: F401  (torchvision shim)
from attacks import NoisePolicy, Objective, PolicyModel, autoattack, make_attack, pgd, predict, stadv
from attacks.core import lp_norm, make_loss, match_rows
from attacks.presets import list_attacks
from benchmark.errors import BenchError
from benchmark.registry import ATTACKS, load_builtins
from defenses.base import Defense, ModuleDefense, Noise, Stage, randn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# toy data, models and defenses
# --------------------------------------------------------------------------------------
SHAPE = (1, 16, 16)


def pattern_data(n: int, g: torch.Generator, k: int = 4, a: float = 0.02, s: float = 0.02):
    """Low-contrast class patterns plus pixel noise: separable, but not at eps = 8/255."""
    P = torch.randint(0, 2, (k, *SHAPE), generator=gen(1234)).float() * 2 - 1
    y = torch.randint(0, k, (n,), generator=g)
    x = (0.5 + a * P[y] + s * torch.randn((n, *SHAPE), generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained on the pattern task, and a 64-image test batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 4))
    xtr, ytr = pattern_data(2000, gen(0))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = gen(1)
    for _ in range(300):
        i = torch.randint(0, 2000, (128,), generator=g)
        loss = F.cross_entropy(model(xtr[i]), ytr[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = pattern_data(64, gen(2))
    return model, x, y


class Gauss(Stage):
    """Adds sigma * N(0, 1) to the input; noise part ``name``."""

    def __init__(self, sigma: float, name: str = "gauss") -> None:
        super().__init__()
        self.sigma = sigma
        self.noise_names = (name,)

    def sample_noise(self, x, generator):
        return {self.noise_names[0]: randn(x.shape, generator, x)}

    def forward(self, x, noise):
        return x + self.sigma * noise[self.noise_names[0]]


class Quantize(Stage):
    """Input quantization: torch.round has zero gradient everywhere (shattered gradients)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x, noise):
        return torch.round(x * self.levels) / self.levels


class AbsScore(nn.Module):
    """score_c = sum_i P_ci |t_i - 0.5|: the sign of the gradient depends on the input noise,
    so a single noise draw gives a noisy gradient, EOT recovers the expected one, and knowing
    the exact noise (DW-box) tells the attacker which way each pixel should move."""

    def __init__(self, P: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("P", P.flatten(1))

    def forward(self, t):
        return (t.flatten(1) - 0.5).abs() @ self.P.t()


def abs_task(n: int, g: torch.Generator, a: float = 0.07, k: int = 4, side: int = 32):
    """Class = which pixels deviate from 0.5 (by +-a, random sign)."""
    P = (torch.rand(k, 1, side, side, generator=gen(7)) < 0.5).float()
    y = torch.randint(0, k, (n,), generator=g)
    sgn = torch.randint(0, 2, (n, 1, side, side), generator=g).float() * 2 - 1
    return 0.5 + a * P[y] * sgn, y, P


def acc(pred: torch.Tensor, y: torch.Tensor) -> float:
    return (pred == y).float().mean().item()


# --------------------------------------------------------------------------------------
# 1. analytic optimum on a linear classifier
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("threat", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_reaches_analytic_margin_on_linear_model(threat, loss):
    g = gen(3)
    d, eps = 48, 0.05
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(0.1 * torch.randn(2, d, generator=g))
        u = lin.weight[0] - lin.weight[1]
        dual = u.abs().sum() if threat == "linf" else u.norm()
        # clean margins between eps*dual + 0.5 and eps*dual + 0.5 + 0.4|u|_1: small enough for CE
        # gradients not to underflow, large enough that the optimum stays correctly classified
        lin.bias.copy_(torch.tensor([float(eps * dual + 0.5 + 0.2 * u.abs().sum() - 0.5 * u.sum()), 0.0]))
    model = ModuleDefense(nn.Sequential(nn.Flatten(), lin)).freeze()
    x = 0.3 + 0.4 * torch.rand(16, 1, 6, 8, generator=g)  # eps-ball stays inside [0, 1]
    y = torch.zeros(16, dtype=torch.long)
    m0 = (x.flatten(1) @ u + lin.bias[0] - lin.bias[1]).detach()
    x_adv = pgd(model, x, y, threat=threat, eps=eps, steps=20, loss=loss, generator=gen(4))
    m = (x_adv.flatten(1) @ u + lin.bias[0] - lin.bias[1]).detach()
    optimum = m0 - eps * dual.detach()
    assert torch.all(optimum > 0)  # never misclassified, so early stopping plays no part
    assert torch.allclose(m, optimum, rtol=0, atol=1e-4 * float(m0.abs().max()))


# --------------------------------------------------------------------------------------
# 2. an undefended model collapses
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("threat,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_undefended_model_collapses_under_pgd_and_autoattack(trained, threat, eps):
    model, x, y = trained
    d = ModuleDefense(model).freeze()
    ok = predict(d, x)[0] == y
    assert ok.float().mean() > 0.95
    xc, yc = x[ok], y[ok]
    x_pgd = pgd(d, xc, yc, threat=threat, eps=eps, steps=20, generator=gen(5))
    assert acc(predict(d, x_pgd)[0], yc) <= 0.05
    x_aa = autoattack(d, xc, yc, threat=threat, eps=eps, version="standard", generator=gen(6))
    assert acc(predict(d, x_aa)[0], yc) <= 0.05
    for xa in (x_pgd, x_aa):
        assert lp_norm(xa - xc, threat).max() <= eps + 1e-5


# --------------------------------------------------------------------------------------
# 3. noise policies on a Gaussian-noise defense
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gauss_defense():
    x, y, P = abs_task(160, gen(0))
    d = Defense(AbsScore(P), transform=Gauss(0.1), name="gauss").freeze()
    eval_noise = d.sample_noise(x, gen(5))
    return d, x, y, eval_noise


def test_fixed_noise_replays_identically(gauss_defense):
    d, x, y, ev = gauss_defense
    assert torch.equal(d(x, ev), d(x, ev))
    p1 = predict(d, x, noise_policy="fixed", repeats=3, fixed_noise=ev, generator=gen(1))
    p2 = predict(d, x, noise_policy="fixed:all", repeats=3, fixed_noise=ev, generator=gen(2))
    assert p1.shape == (3, x.shape[0]) and torch.equal(p1, p2) and torch.equal(p1[0], p1[2])
    assert torch.equal(p1[0], d(x, ev).argmax(1))
    fresh = predict(d, x, noise_policy="fresh", repeats=3, generator=gen(3))
    assert not torch.equal(fresh[0], fresh[1])  # fresh noise really is fresh
    with pytest.raises(BenchError):
        predict(d, x, noise_policy="fixed", generator=gen(1))


def test_eot_beats_fresh_and_dwbox_beats_eot(gauss_defense):
    d, x, y, ev = gauss_defense
    common = dict(eps=0.05, steps=4, random_init=False, eval_noise=ev)
    res = {}
    for policy in ("fresh", "eot:16", "fixed:all"):
        xa = pgd(d, x, y, noise_policy=policy, generator=gen(1), **common)
        assert (xa - x).abs().max() <= 0.05 + 1e-6
        res[policy] = acc(predict(d, xa, noise_policy="fixed", fixed_noise=ev)[0], y)
    clean = acc(predict(d, x, noise_policy="fixed", fixed_noise=ev)[0], y)
    assert clean > 0.85
    # measured: fresh 0.53, eot:16 0.24, fixed:all 0.00 (clean 0.94)
    assert res["eot:16"] <= res["fresh"] - 0.1
    assert res["fixed:all"] <= res["eot:16"]
    assert res["fixed:all"] <= 0.05


def test_eot_batched_equals_looped_gradient(gauss_defense):
    """eot_chunk only changes speed: K draws in one replicated batch = the mean of K passes."""
    d, x, y, _ = gauss_defense
    x, y, k = x[:8], y[:8], 4
    loss = make_loss("ce")
    obj = Objective(d, noise_policy=f"eot:{k}", generator=gen(11), eot_chunk=k)
    g_batched, err, mar = obj.loss_grad(x, y, loss)
    z = torch.randn((k * 8, *x.shape[1:]), generator=gen(11)).view(k, 8, *x.shape[1:])
    g_loop = torch.zeros_like(x)
    for i in range(k):
        xi = x.clone().requires_grad_(True)
        lg = d(xi, Noise(8, {"gauss": z[i]}))
        g_loop += torch.autograd.grad(loss(lg, y).sum(), xi)[0] / k
    assert torch.allclose(g_batched, g_loop, atol=1e-5)
    assert err.shape == mar.shape == (8,)


def test_partial_fixed_noise_and_policy_model_mapping():
    """fixed:forward takes the evaluation's 'forward' part and redraws 'reverse'; the nn.Module
    view maps rows of subset calls back to their samples."""
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    d = Defense(clf, transform=Gauss(0.1, "forward"), purifier=Gauss(0.1, "reverse"), name="two").freeze()
    x = torch.rand(6, 1, 4, 4, generator=gen(0))
    ev = d.sample_noise(x, gen(1))
    obj = Objective(d, noise_policy="fixed:forward+eot:3", eval_noise=ev, generator=gen(2))
    assert obj.draws == 3 and not obj.deterministic
    z = obj.draw_noise(x, 2)
    assert torch.equal(z["forward"], ev["forward"].repeat(2, 1, 1, 1))
    assert not torch.equal(z["reverse"][:6], ev["reverse"])
    full = Objective(d, noise_policy="fixed:all", eval_noise=ev)
    assert full.deterministic and full.draws == 1
    model = PolicyModel(full).bind(x, ev)
    sub = torch.tensor([1, 3, 4])
    xs = x[sub] + 1e-3
    assert torch.allclose(model(xs), d(xs, ev.select(sub)))
    # near-duplicate images: nearest-neighbour order breaks, the monotone assignment does not
    ref = torch.stack([x[0], x[0], x[2], x[0]])
    assert match_rows(torch.stack([x[0], x[0]]) + 1e-4, ref).tolist() in ([0, 1], [0, 3], [1, 3])
    assert match_rows(torch.stack([x[2], x[0]]), ref).tolist() == [2, 3]
    with pytest.raises(BenchError):
        Objective(d, noise_policy="fixed:forward")  # no evaluation noise given
    with pytest.raises(BenchError):
        Objective(d, noise_policy="fixed:middle", eval_noise=ev)  # no such part


def test_autoattack_with_fixed_noise_breaks_gaussian_defense(gauss_defense):
    d, x, y, ev = gauss_defense
    x, y, ev = x[:48], y[:48], ev.select(slice(0, 48))
    kw = dict(eps=0.03, version="rand", steps=20, eval_iter=5, eval_noise=ev)
    xa_fixed = autoattack(d, x, y, noise_policy="fixed:all", generator=gen(1), **kw)
    xa_fresh = autoattack(d, x, y, noise_policy="fresh", generator=gen(1), **kw)
    a_fixed = acc(predict(d, xa_fixed, noise_policy="fixed", fixed_noise=ev)[0], y)
    a_fresh = acc(predict(d, xa_fresh, noise_policy="fixed", fixed_noise=ev)[0], y)
    assert a_fixed <= 0.05 < a_fresh  # measured 0.00 vs 0.81
    for xa in (xa_fixed, xa_fresh):
        assert (xa - x).abs().max() <= 0.03 + 1e-6


def test_autoattack_subset_calls_get_their_own_noise(gauss_defense, monkeypatch):
    """APGD restarts call the model on the still-robust subset; each row must be matched to its
    own clean image (distance <= eps), and more restarts can only help."""
    import attacks.core as core

    d, x, y, ev = gauss_defense
    x, y, ev = x[:40], y[:40], ev.select(slice(0, 40))
    seen: list[tuple[int, int, float]] = []
    real = core.match_rows

    def spy(xq, ref):
        idx = real(xq, ref)
        seen.append((xq.shape[0], ref.shape[0], (xq - ref[idx]).abs().max().item()))
        return idx

    monkeypatch.setattr(core, "match_rows", spy)
    kw = dict(eps=0.01, version="rand", steps=3, noise_policy="fixed:all", eval_noise=ev, generator=gen(1))
    xa3 = autoattack(d, x, y, restarts=3, **kw)
    assert any(m < n for m, n, _ in seen)  # subsets happened
    assert max(dist for _, _, dist in seen) <= 0.01 + 1e-6  # every row matched its own image
    xa1 = autoattack(d, x, y, restarts=1, **kw)
    a3, a1 = (acc(predict(d, xa, noise_policy="fixed", fixed_noise=ev)[0], y) for xa in (xa3, xa1))
    assert a3 <= a1 < 0.5  # measured 0.175 and 0.175 (clean 0.975)


# --------------------------------------------------------------------------------------
# 4. shattered gradients: exact PGD fails, BPDA succeeds
# --------------------------------------------------------------------------------------
def test_bpda_breaks_quantization_that_survives_exact_pgd(trained):
    model, x, y = trained
    d = Defense(model, purifier=Quantize(16), name="quantize").freeze()
    clean = acc(predict(d, x)[0], y)
    assert clean > 0.9
    x_exact = pgd(d, x, y, eps=8 / 255, steps=20, random_init=False, generator=gen(1))
    x_bpda = pgd(d, x, y, eps=8 / 255, steps=20, grad_mode="bpda", generator=gen(1))
    assert torch.equal(x_exact, x)  # zero gradients: exact PGD does not move
    assert acc(predict(d, x_exact)[0], y) >= clean - 0.02
    assert acc(predict(d, x_bpda)[0], y) <= 0.05
    assert (x_bpda - x).abs().max() <= 8 / 255 + 1e-6


# --------------------------------------------------------------------------------------
# 5. every attack stays in its threat model; StAdv works
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,threat,over", [
    ("pgd", "linf", {}),
    ("pgd", "l2", {"restarts": 2, "steps": 5}),
    ("fgsm", "linf", {}),
    ("cw100", "linf", {"steps": 10}),
    ("bpda_eot", "linf", {"steps": 5, "noise_policy": "eot:2"}),
    ("pgd_eot", "l2", {"steps": 5, "noise_policy": "eot:2", "eps": 1.0}),
    ("cw_l2", "l2", {"steps": 30, "eps": 0.3}),
    ("autoattack_standard", "l2", {"steps": 5, "square_queries": 20}),
    ("autoattack_rand", "linf", {"steps": 5, "eval_iter": 3}),
])
def test_attacks_stay_in_threat_model(trained, name, threat, over):
    model, x, y = trained
    d = Defense(model, transform=Gauss(0.02), name="noisy").freeze()
    atk = make_attack(name, threat, **over)
    xa = atk(d, x[:24], y[:24], generator=gen(9))
    assert xa.shape == x[:24].shape and xa.dtype == x.dtype
    assert xa.min() >= 0 and xa.max() <= 1
    assert lp_norm(xa - x[:24], threat).max() <= atk.params["eps"] * (1 + 1e-5) + 1e-6


def test_stadv_flow_bound_and_accuracy_drop(trained):
    model, x, y = trained
    d = ModuleDefense(model).freeze()
    xa, flow = stadv(d, x, y, generator=gen(1), return_flow=True)
    assert flow.shape == (x.shape[0], 16, 16, 2)
    assert flow.abs().max() <= 0.05 + 1e-6
    assert xa.min() >= 0 and xa.max() <= 1
    clean = acc(predict(d, x)[0], y)
    assert acc(predict(d, xa)[0], y) <= clean - 0.3  # measured 1.00 -> 0.34
    # the returned image is the warp of the returned flow
    from attacks.stadv import warp
    assert torch.allclose(warp(x, flow), xa, atol=1e-5)


# --------------------------------------------------------------------------------------
# 6. published budgets, registry, validation
# --------------------------------------------------------------------------------------
def test_published_default_budgets():
    p = make_attack("pgd").params
    assert (p["eps"], p["steps"], p["step_size"], p["noise_policy"]) == (8 / 255, 20, 2 / 255, "fresh")
    p = make_attack("pgd_eot").params
    assert (p["steps"], p["step_size"], p["noise_policy"]) == (20, 2 / 255, "eot:10")
    p = make_attack("pgd200_eot20").params
    assert (p["eps"], p["steps"], p["step_size"], p["noise_policy"]) == (8 / 255, 200, 0.007, "eot:20")
    p = make_attack("bpda_eot").params
    assert (p["steps"], p["step_size"], p["noise_policy"], p["grad_mode"]) == (50, 2 / 255, "eot:15", "bpda")
    p = make_attack("cw100").params
    assert (p["steps"], p["loss"], p["eps"]) == (100, "cw", 8 / 255)
    p = make_attack("fgsm").params
    assert (p["steps"], p["step_size"], p["random_init"]) == (1, 8 / 255, False)
    p = make_attack("stadv").params
    assert (p["eps"], p["steps"], p["lr"], p["tau"]) == (0.05, 100, 0.01, 0.05)
    a = make_attack("autoattack_rand")
    assert (a.params["version"], a.params["noise_policy"], a.params["eval_iter"]) == ("rand", "eot:20", 20)
    a = make_attack("autoattack_standard", "l2")
    assert (a.threat, a.params["eps"], a.params["version"], a.params["square_queries"]) == ("l2", 0.5, "standard", 5000)
    assert make_attack("pgd", "l2").params["eps"] == 0.5
    for name, pol in (("dwbox_fwd", "fixed:forward+eot:10"), ("dwbox_rev", "fixed:reverse+eot:10"),
                      ("dwbox_both", "fixed:all+eot:10")):
        p = make_attack(name).params
        assert (p["noise_policy"], p["steps"], p["step_size"]) == (pol, 20, 2 / 255)


def test_registry_lists_presets_with_defaults_and_sources():
    load_builtins()
    names = {e["name"] for e in list_attacks()}
    assert {"pgd", "pgd_eot", "pgd200_eot20", "bpda_eot", "autoattack_standard", "autoattack_rand", "stadv",
            "fgsm", "cw_l2", "cw100", "dwbox_fwd", "dwbox_rev", "dwbox_both"} <= names
    for e in ATTACKS:
        assert e.meta["source"] and e.meta["defaults"] and e.meta["threat"] in e.meta["threats"]
    rec = make_attack("pgd_eot", eps="4/255", steps="10").record()
    assert rec["params"]["eps"] == pytest.approx(4 / 255) and rec["params"]["steps"] == 10
    assert rec["attack"] == "pgd_eot" and rec["threat"] == "linf"


@pytest.mark.parametrize("bad", [
    dict(eps=0.0), dict(eps=-0.1), dict(eps=1.5), dict(steps=0), dict(steps=-3), dict(restarts=0),
    dict(noise_policy="eot"), dict(noise_policy="eot:0"), dict(noise_policy="fixed:"), dict(noise_policy="sometimes"),
    dict(noise_policy="fresh+eot:3"), dict(grad_mode="approx"), dict(loss="hinge"), dict(nonsense=1),
])
def test_bad_parameters_raise_bench_error(bad):
    with pytest.raises(BenchError):
        make_attack("pgd", **bad)


def test_bad_threats_raise_bench_error(trained):
    model, x, y = trained
    d = ModuleDefense(model).freeze()
    with pytest.raises(BenchError):
        make_attack("pgd", "l1")
    with pytest.raises(BenchError):
        make_attack("stadv", "linf")
    with pytest.raises(BenchError):
        pgd(d, x, y, threat="stadv", generator=gen(0))
    with pytest.raises(BenchError):
        make_attack("nope")


def test_noise_policy_parsing_round_trips():
    assert str(NoisePolicy.parse("fresh")) == "fresh"
    assert NoisePolicy.parse("eot:20").eot == 20
    assert NoisePolicy.parse("fixed").fixed_all and str(NoisePolicy.parse("fixed")) == "fixed:all"
    p = NoisePolicy.parse("eot:10+fixed:forward,reverse")
    assert (p.eot, p.fixed, str(p)) == (10, ("forward", "reverse"), "fixed:forward,reverse+eot:10")
    assert NoisePolicy.parse(str(p)) == p
    assert math.isclose(make_attack("pgd", eps="8/255").params["eps"], 8 / 255)


def test_noise_policy_edits_are_objects_not_text():
    """The runner and the board edit and read policies through NoisePolicy; hand-written answers."""
    p = NoisePolicy.parse("fixed:forward+eot:10")
    assert str(p.with_eot(3)) == "fixed:forward+eot:3"
    assert str(p.with_eot(1)) == "fixed:forward" == str(p.without_eot())
    assert str(NoisePolicy().with_eot(5)) == "eot:5"
    assert NoisePolicy.of({}) == NoisePolicy() and NoisePolicy.of({"noise_policy": "eot:7"}).eot == 7
    assert NoisePolicy.of({"noise_policy": "fixed"}).fixes_any and not NoisePolicy.of({"noise_policy": "eot:4"}).fixes_any
    with pytest.raises(BenchError):
        p.with_eot(0)
    # a policy object passed as an override is stored as its canonical text (records stay strings)
    atk = make_attack("pgd", noise_policy=NoisePolicy(eot=4, fixed_all=True))
    assert atk.params["noise_policy"] == "fixed:all+eot:4"
