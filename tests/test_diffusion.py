"""DDPM schedule, DiffPure purification with explicit noise, exact checkpointed gradients,
Lee & Kim surrogate, RBGM, DDPM/ADDT training steps and resume (tiny UNets, tiny data)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from benchmark.errors import BenchError
from defenses.base import Noise
from defenses.diffpure import DiffPureDefense, DiffusionPurifier, load_unet, load_unet_folder
from defenses.diffusion import Schedule, q_sample, step_coefs, timesteps
from defenses.unet import UNet, UNetConfig
from defenses.weights import save_safetensors

TINY = UNetConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, mid_attn=True, attn_levels=(1,), dropout=0.0, patch=2, groups=4)


def tiny_unet(seed: int = 0, perturb: bool = True) -> UNet:
    """A tiny UNet whose zero-initialised output layers are perturbed so that it is not the zero map."""
    torch.manual_seed(seed)
    m = UNet(TINY)
    if perturb:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                 nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def defense(steps: int | None = None, sampler: str = "ddpm", use_checkpoint: bool = True, t_star: float = 0.03) -> DiffPureDefense:
    pur = DiffusionPurifier(tiny_unet(), Schedule(), t_star=t_star, steps=steps, sampler=sampler, use_checkpoint=use_checkpoint)
    return DiffPureDefense(TinyClassifier(), purifier=pur, name="diffpure_test").freeze()


# --- schedule and forward marginal ------------------------------------------------------
def test_alpha_bar_closed_form_and_forward_marginal():
    s = Schedule()
    betas = np.linspace(1e-4, 2e-2, 1000)
    ab = np.cumprod(1 - betas)
    assert np.allclose(s.alpha_bar.numpy(), ab, rtol=0, atol=1e-12)
    # iterate the one-step forward kernel x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z for 100 steps
    g = gen(0)
    x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    x = x0.clone()
    for t in range(100):
        x = math.sqrt(1 - betas[t]) * x + math.sqrt(betas[t]) * torch.randn(x.shape, generator=g, dtype=torch.float64)
    assert abs(x.mean().item() - math.sqrt(ab[99]) * 0.7) < 5e-3
    assert abs(x.var().item() - (1 - ab[99])) < 5e-3
    # q_sample and the purifier's diffusion are the closed form
    eps = torch.randn(4, 3, 8, 8, generator=g)
    x0i = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    t = torch.tensor([0, 10, 99, 999])
    got = q_sample(x0i, t, eps, s.alpha_bar)
    for i, ti in enumerate(t.tolist()):
        want = math.sqrt(ab[ti]) * x0i[i] + math.sqrt(1 - ab[ti]) * eps[i]
        assert torch.allclose(got[i], want.float(), atol=1e-6)
    pur = DiffusionPurifier(tiny_unet(), s, t_star=0.1, steps=10)
    assert pur.n == 100 and pur.ts == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    xin = (x0i[:1] + 1) / 2
    assert torch.allclose(pur.diffuse(xin, eps[:1]), math.sqrt(ab[99]) * x0i[:1] + math.sqrt(1 - ab[99]) * eps[:1], atol=1e-6)


def test_timesteps_and_full_chain_is_plain_ddpm():
    assert timesteps(100, 100) == list(range(99, -1, -1))
    assert timesteps(100, 1) == [99]
    with pytest.raises(ValueError):
        timesteps(100, 101)
    s = Schedule()
    betas, ab = s.betas, s.alpha_bar
    for c in step_coefs(s, timesteps(100, 100))[:-1]:  # consecutive steps: DDPM's posterior q(x_{t-1} | x_t, x0)
        t = c.t
        c_x0, c_xt, sigma = c.ddpm_coefs
        assert math.isclose(c_x0, float(betas[t] * ab[t - 1].sqrt() / (1 - ab[t])), rel_tol=1e-9)
        assert math.isclose(c_xt, float((1 - betas[t]).sqrt() * (1 - ab[t - 1]) / (1 - ab[t])), rel_tol=1e-9)
        assert math.isclose(sigma**2, float(betas[t] * (1 - ab[t - 1]) / (1 - ab[t])), rel_tol=1e-9)
    last = step_coefs(s, [0])[0]
    assert last.ddpm_coefs == pytest.approx((1.0, 0.0, 0.0))  # the last step returns the clean estimate


# --- explicit noise ---------------------------------------------------------------------
def test_noise_parts_and_replay(tmp_path):
    d = defense(steps=4)
    x = torch.rand(3, 3, 16, 16, generator=gen(1))
    noise = d.sample_noise(x, gen(2))
    assert noise.names == ("forward", "reverse")
    assert noise["forward"].shape == (3, 3, 16, 16) and noise["reverse"].shape == (3, 4, 3, 16, 16)
    a = d.purify(x, noise)
    assert torch.equal(a, d.purify(x, noise))
    noise.save(tmp_path / "n.safetensors")
    assert torch.equal(a, d.purify(x, Noise.load(tmp_path / "n.safetensors")))
    assert torch.equal(d(x, noise), d(x, noise))
    assert not torch.equal(a, d.purify(x, d.sample_noise(x, gen(3))))
    # per-sample: purifying a subset with the selected noise gives the same rows
    assert torch.allclose(d.purify(x[1:], noise.select(slice(1, 3))), a[1:], atol=1e-6)
    # the reverse noise matters (DW_Rev), and so does the forward noise (DW_Fwd)
    other = d.sample_noise(x, gen(4))
    assert not torch.equal(a, d.purify(x, noise.fix(other, ["reverse"])))
    assert not torch.equal(a, d.purify(x, noise.fix(other, ["forward"])))
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_ddim_has_only_forward_noise_and_is_deterministic_given_it():
    d = defense(steps=3, sampler="ddim")
    x = torch.rand(2, 3, 16, 16, generator=gen(5))
    noise = d.sample_noise(x, gen(6))
    assert d.noise_names == ("forward",)
    assert torch.equal(d.purify(x, noise), d.purify(x, noise))
    with pytest.raises(BenchError):
        noise.fix(noise, ["reverse"])


# --- exact gradients --------------------------------------------------------------------
def test_checkpointed_gradient_equals_plain_autograd():
    x = torch.rand(2, 3, 16, 16, generator=gen(7))
    y = torch.tensor([1, 4])
    grads = []
    for ckpt in (True, False):
        d = defense(steps=3, use_checkpoint=ckpt)
        noise = d.sample_noise(x, gen(8))
        xi = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(d(xi, noise), y)
        (g,) = torch.autograd.grad(loss, xi)
        grads.append(g)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)


# --- Lee & Kim surrogate ----------------------------------------------------------------
def test_surrogate_shares_weights_and_derives_noise():
    d = defense(steps=None, t_star=0.012)  # 12 steps
    x = torch.rand(2, 3, 16, 16, generator=gen(9))
    noise = d.sample_noise(x, gen(10))
    same = d.surrogate(steps=12)
    assert same.purifier.unet is d.purifier.unet and same.classifier is d.classifier
    # with as many steps as the defense, the derived noise is the defense's and so is the output
    assert torch.allclose(same.purify(x, same.derive_noise(noise)), d.purify(x, noise), atol=1e-6)
    sur = d.surrogate(steps=4)
    assert sur.purifier.ts == [11, 8, 5, 2]
    z = sur.derive_noise(noise)
    assert z["reverse"].shape == (2, 4, 3, 16, 16) and torch.equal(z["forward"], noise["forward"])
    # the derived reverse noise is still standard normal
    big = d.sample_noise(torch.zeros(256, 3, 16, 16), gen(11))
    zr = sur.derive_noise(big)["reverse"][:, :-1]
    assert abs(zr.mean().item()) < 0.01 and abs(zr.std().item() - 1) < 0.01
    out = sur.purify(x, z)
    assert out.shape == x.shape and sur.purifier.steps == 4


def test_surrogate_attack_takes_gradients_through_the_surrogate():
    """Lee & Kim's attack-side surrogate (surrogate_steps): the attacker's gradient is the K-step
    surrogate's on the derived noise; with K = the defense's steps it is the defense's own."""
    from attacks import make_attack
    from attacks.core import Objective, make_loss
    from defenses.base import Defense

    d = defense(steps=None, t_star=0.012)  # 12 steps
    x = torch.rand(2, 3, 16, 16, generator=gen(30))
    y = torch.tensor([1, 4])
    noise = d.sample_noise(x, gen(31))
    ce = make_loss("ce")
    obj = Objective(d, noise_policy="fixed:all", eval_noise=noise, surrogate_steps=4)
    g, _, _ = obj.loss_grad(x, y, ce)
    sur = d.surrogate(4)
    xi = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(ce(sur(xi, sur.derive_noise(noise)), y).sum(), xi)
    assert torch.allclose(g, want, atol=1e-6)
    full = Objective(d, noise_policy="fixed:all", eval_noise=noise)
    g_full = full.loss_grad(x, y, ce)[0]
    assert not torch.allclose(g, g_full, atol=1e-6)
    # the surrogate's losses are never taken for the evaluation's outcome
    assert full.deterministic and not obj.deterministic
    same = Objective(d, noise_policy="fixed:all", eval_noise=noise, surrogate_steps=12)
    assert torch.allclose(same.loss_grad(x, y, ce)[0], g_full, atol=1e-6)
    atk = make_attack("pgd_eot_surrogate", steps=2, noise_policy="eot:2", surrogate_steps=3)
    assert atk.params["surrogate_steps"] == 3
    xa = atk(d, x, y, generator=gen(32))
    assert xa.shape == x.shape and (xa - x).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(xa, x)
    with pytest.raises(BenchError, match="exceeds"):
        make_attack("pgd_eot_surrogate", surrogate_steps=13)(d, x, y, generator=gen(33))
    with pytest.raises(BenchError, match="diffusion purifier"):
        make_attack("pgd_eot_surrogate")(Defense(TinyClassifier()).freeze(), x, y, generator=gen(33))
    with pytest.raises(BenchError, match="surrogate_steps"):
        make_attack("pgd_eot_surrogate", surrogate_steps=0)


# --- RBGM and training steps ------------------------------------------------------------
def test_rbgm_keeps_an_exact_normal_sample_set_in_delta_order():
    from benchmark.train.addt import rbgm

    delta = torch.randn(3, 2, 8, 8, generator=gen(12)) * 5 + 3
    out = rbgm(delta, gen(13))
    fresh = torch.randn(3, 2, 64, generator=gen(13))  # the same draws rbgm makes
    assert torch.equal(out.reshape(3, 2, 64).sort(-1).values, fresh.sort(-1).values)
    assert torch.equal(out.reshape(3, 2, 64).argsort(-1), delta.reshape(3, 2, 64).argsort(-1))


def _reference_guidance(model, clf, x0, y, t, abar, r, g, iters):
    """ADDT's guidance loop as LYMDLUT/ADDT train_DDPM_DDIM_ADDT/train_ADDT.py writes it (its sort /
    sort / gather form of RBGM on the running gradient sum, no clamp, model left in train mode),
    with our generator for its draws, in its order."""
    sa, s1a, rr = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1), r.view(-1, 1, 1, 1)
    delta = torch.randn(x0.shape, generator=g)
    acc = 0
    for _ in range(iters):
        delta.requires_grad = True
        noise = torch.randn(x0.shape, generator=g)
        noisy = sa * x0 + s1a * (noise * (1 - rr ** 2) ** 0.5 + delta * rr)
        pred = model(noisy, t)
        orig = (noisy - s1a * pred) / sa
        loss = nn.functional.cross_entropy(clf(orig / 2 + 0.5), y)
        loss.backward()
        acc = acc + delta.grad.detach()
        with torch.no_grad():
            pn = torch.randn(delta.shape, generator=g)
            pn = torch.sort(pn.reshape(pn.shape[0] * pn.shape[1], -1))[0]
            order = torch.sort(torch.sort(acc.reshape(acc.shape[0] * acc.shape[1], -1))[1])[1]
            delta = torch.gather(pn, 1, order).reshape(x0.shape).detach()
    return delta


def test_addt_guidance_matches_the_reference_trainer():
    """5 iterations, one eps each, delta = RBGM of the *summed* gradient, no x0 clamp, dropout on:
    equal (up to float summation order) to the reference loop above. The earlier sign-step,
    clamped, eval-mode variant gives another delta."""
    from benchmark.train.addt import ADDTTrainConfig, classifier_guided_delta, mix_ratio

    cfg = ADDTTrainConfig()
    assert (cfg.cgpo_iters, cfg.eot, cfg.x0_clamp, cfg.cgpo_train_mode, cfg.t_max) == (5, 1, False, True, 1000)
    s = Schedule()
    m = UNet(UNetConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, mid_attn=True, attn_levels=(1,), dropout=0.3,
                        patch=2, groups=4)).eval()
    with torch.no_grad():  # a fresh UNet's zero-initialised output layer would hide the eps_theta path
        for i, p in enumerate(m.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=gen(100 + i)))
    torch.manual_seed(3)  # a smooth classifier: no exact ties in the gradient, so the rank order is unique
    clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.Tanh(), nn.Linear(32, 10)).eval()
    g = gen(40)
    x0 = (torch.rand(4, 3, 16, 16, generator=g) * 2.6 - 1.3).clamp(-1, 1)  # saturated pixels: a clamp would matter
    y = torch.tensor([1, 4, 7, 9])
    t = torch.tensor([3, 40, 200, 900])
    abar = s.alpha_bar[t].float()
    r = mix_ratio(abar, 0.03, 0.3)

    def ours(**kw) -> torch.Tensor:
        torch.manual_seed(5)  # dropout draws from the global RNG
        return classifier_guided_delta(m, clf, x0, y, t, abar, r, iters=5, eot=1, generator=gen(41), amp=False, **kw)

    got = ours()
    assert not m.training  # mode restored
    m.train()
    torch.manual_seed(5)
    ref = _reference_guidance(m, clf, x0, y, t, abar, r, gen(41), iters=5)
    m.eval()
    assert torch.equal(got, ref)
    assert (ours(x0_clamp=True) == ref).float().mean() < 0.5  # the earlier clamp changes delta
    assert (ours(train_mode=False) == ref).float().mean() < 0.5  # so does switching dropout off


def test_ddpm_and_addt_steps_lower_the_loss_on_a_fixed_batch():
    from benchmark.train.addt import ADDTTrainConfig, addt_loss

    s = Schedule()
    m = UNet(TINY).train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = gen(14)
    x0 = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    t = torch.randint(0, 300, (8,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    xt = q_sample(x0, t, eps, s.alpha_bar)
    losses = []
    for _ in range(10):
        loss = nn.functional.mse_loss(m(xt, t), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    cfg = ADDTTrainConfig(cgpo_iters=1, eot=2)
    clf = TinyClassifier().eval()
    y = torch.arange(8) % 10
    first = addt_loss(m, clf, x0, y, t, s.alpha_bar, cfg, gen(15), amp=False)
    for _ in range(6):
        loss = addt_loss(m, clf, x0, y, t, s.alpha_bar, cfg, gen(15), amp=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert addt_loss(m, clf, x0, y, t, s.alpha_bar, cfg, gen(15), amp=False).item() < first.item()


# --- training entry points: resume, outputs, loading -------------------------------------
def _image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, k in (("train", 4), ("test", 1)):
        for c in range(10):
            d = root / "cifar10-jpeg" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(k):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")


SMOKE = {"unet.ch": 8, "unet.ch_mult": [1, 2], "unet.groups": 4, "unet.dropout": 0.0, "batch_size": 16, "epochs": 2,
         "warmup_steps": 2, "eval_images": 8, "eval_steps": 2, "n_train": 0}


def test_ddpm_train_resume_is_exact_and_output_loads(tmp_path):
    from benchmark.train import ddpm

    _image_folder(tmp_path / "data")
    cfg = Path("configs/train/ddpm_cifar10.yaml")
    full = ddpm.main(str(cfg), device="cpu", out_dir=str(tmp_path / "a"), data_root=str(tmp_path / "data"), overrides=SMOKE)
    # interrupted after the first step, then resumed by the same command
    part = ddpm.main(str(cfg), device="cpu", out_dir=str(tmp_path / "b"), data_root=str(tmp_path / "data"),
                     overrides={**SMOKE, "time_limit_s": 1e-9})
    rec = json.loads((part / "recipe.json").read_text())
    assert rec["stopped_by_time_limit"] and not rec["completed"] and rec["steps"] == 1
    ddpm.main(str(cfg), device="cpu", out_dir=str(tmp_path / "b"), data_root=str(tmp_path / "data"), overrides=SMOKE)
    from safetensors.torch import load_file

    a, b = load_file(str(full / "weights.safetensors")), load_file(str(tmp_path / "b" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rec = json.loads((full / "recipe.json").read_text())
    assert rec["completed"] and rec["first_epoch_loss"] > 0 and len(rec["log"]) == 2
    assert rec["weights"]["sha256"] and "psnr_purified_vs_clean_db" in rec["final_metrics"]
    unet, sched, info = load_unet(str(full))
    assert isinstance(unet, UNet) and unet.config.ch == 8 and sched.T == 1000 and info["format"] == "purifybench"
    with pytest.raises(BenchError, match="different config"):
        ddpm.main(str(cfg), device="cpu", out_dir=str(tmp_path / "b"), data_root=str(tmp_path / "data"),
                  overrides={**SMOKE, "lr": 0.1})


def _weights_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors(tiny_unet().state_dict(), path / "weights.safetensors",
                     metadata={"unet": json.dumps(TINY.to_dict()), "schedule": json.dumps(Schedule().to_dict())})
    return path


def test_registered_defenses_build_from_a_weights_folder(tmp_path):
    from benchmark.registry import CLASSIFIERS, DEFENSES, load_builtins

    load_builtins()
    if "_test_tiny_cifar10" not in CLASSIFIERS:
        CLASSIFIERS.add("_test_tiny_cifar10", lambda *, device="cpu": TinyClassifier().to(device).eval(), dataset="cifar10")
    w = str(_weights_folder(tmp_path / "run"))
    common = {"weights": w, "classifier": "_test_tiny_cifar10", "t_star": 0.02}
    d = DEFENSES.create("diffpure", steps=4, **common)
    assert isinstance(d, DiffPureDefense) and d.noise_names == ("forward", "reverse")
    assert d.info["timesteps"] == [19, 14, 9, 4] and not any(p.requires_grad for p in d.parameters())
    assert DEFENSES.create("diffpure_ddim", **common).noise_names == ("forward",)
    assert DEFENSES.create("addt", checkpoint=w, classifier="_test_tiny_cifar10").purifier.steps == 100
    x = torch.rand(2, 3, 32, 32, generator=gen(20))
    assert d(x, generator=gen(21)).shape == (2, 10)
    for bad in ({"steps": 21}, {"sampler": "euler"}, {"t_star": 0}, {"stepz": 3}):
        with pytest.raises(BenchError):
            DEFENSES.create("diffpure", **{**common, **bad})
    with pytest.raises(BenchError, match="ddim"):
        DEFENSES.create("diffpure_ddim", sampler="ddpm", **common)


def test_missing_shipped_weights_name_the_training_command():
    with pytest.raises(BenchError, match="bench train ddpm"):
        load_unet("ddpm_not_shipped_xyz")


def test_diffusers_folder_loads_like_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")  # optional extra: pip install diffusers
    torch.manual_seed(0)
    ref = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4,
                                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    ref.save_pretrained(str(tmp_path / "unet"))
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
         "num_train_timesteps": 1000, "clip_sample": True}))
    model, sched, info = load_unet_folder(tmp_path)
    assert info["format"] == "diffusers" and sched == Schedule()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 50])
    with torch.no_grad():
        assert torch.allclose(model(x, t), ref(x, t).sample, atol=1e-6)
    pur = DiffusionPurifier(model, sched, t_star=0.02, steps=2)
    xi = torch.rand(1, 3, 32, 32)
    assert pur(xi, Noise(1, pur.sample_noise(xi, gen(0)))).shape == xi.shape
    # and the registered defense purifies with it (weights=<the diffusers folder>)
    from benchmark.registry import CLASSIFIERS, DEFENSES, load_builtins

    load_builtins()
    if "_test_tiny_cifar10" not in CLASSIFIERS:
        CLASSIFIERS.add("_test_tiny_cifar10", lambda *, device="cpu": TinyClassifier().to(device).eval(), dataset="cifar10")
    d = DEFENSES.create("diffpure", weights=str(tmp_path), classifier="_test_tiny_cifar10", t_star=0.02, steps=2)
    assert d.info["weights"]["format"] == "diffusers"
    z = d.sample_noise(xi, gen(1))
    assert torch.equal(d(xi, z), d(xi, z))


def test_shipped_diffusion_weights_load_and_replay():
    """The shipped DDPM and ADDT UNets load (sha256-checked) into their registered defenses on the
    shipped classifier, differ from each other, and replay their noise exactly."""
    from benchmark.registry import DEFENSES, load_builtins
    from defenses.weights import manifest

    load_builtins()
    shipped = manifest()
    names = [(d, w) for d, w in (("diffpure", "ddpm_cifar10"), ("addt", "addt_cifar10")) if w in shipped]
    assert len(names) == 2, "ddpm_cifar10 and addt_cifar10 ship with the repository"
    x = torch.rand(2, 3, 32, 32, generator=gen(40))
    outs = {}
    for name, w in names:
        d = DEFENSES.create(name, steps=2)
        assert d.info["weights"]["sha256"] == shipped[w]["sha256"] and d.purifier.ts == [99, 49]
        z = d.sample_noise(x, gen(41))
        outs[name] = d.purify(x, z)
        assert torch.isfinite(outs[name]).all() and torch.equal(outs[name], d.purify(x, z))
        assert d(x, z).shape == (2, 10)
    if len(outs) == 2:
        assert not torch.equal(outs["diffpure"], outs["addt"])


def test_ship_a_ddpm_run_and_load_it_by_name(tmp_path, monkeypatch):
    """scripts/ship_weights.py ships a `bench train ddpm` run (UNet config + schedule in the
    manifest entry) and the diffpure defense loads it by name."""
    import importlib.util

    import defenses.weights as W
    from benchmark.train import ddpm

    _image_folder(tmp_path / "data")
    run = ddpm.main("configs/train/ddpm_cifar10.yaml", device="cpu", out_dir=str(tmp_path / "run"),
                    data_root=str(tmp_path / "data"), overrides={**SMOKE, "epochs": 1})
    spec = importlib.util.spec_from_file_location("ship_weights", "scripts/ship_weights.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    wdir = tmp_path / "weights"
    assert ship.main([str(run), "ddpm_test_tiny", "--weights-dir", str(wdir)]) == 0
    entry = json.loads((wdir / "manifest.json").read_text())["ddpm_test_tiny"]
    assert entry["kind"] == "ddpm" and entry["unet"]["ch"] == 8 and entry["schedule"]["T"] == 1000
    assert entry["dtype"] == "float32" and "psnr_purified_vs_clean_db" in entry["metrics"]
    assert entry["config"] == "configs/train/ddpm_cifar10.yaml"  # the recipe names its config
    monkeypatch.setattr(W, "WEIGHTS_DIR", wdir)
    monkeypatch.setattr(W, "MANIFEST", wdir / "manifest.json")
    unet, sched, info = load_unet("ddpm_test_tiny")
    assert info["sha256"] == entry["sha256"] and isinstance(unet, UNet) and sched == Schedule()
    from safetensors.torch import load_file

    trained = load_file(str(run / "weights.safetensors"))
    assert all(torch.equal(unet.state_dict()[k], trained[k]) for k in trained)
    (wdir / entry["file"]).write_bytes(b"corrupt")
    with pytest.raises(BenchError, match="sha256"):
        load_unet("ddpm_test_tiny")


def test_addt_training_run_records_the_aligned_recipe(tmp_path):
    """A whole (tiny) `bench train addt` run: weights load as the `addt` defense and the recipe
    describes the method that ran (5 guidance iterations, unclamped x0, t uniform over [0, T),
    the init UNet's dropout rate), read back from the config the run was given."""
    import yaml

    import benchmark.train.addt as A
    from benchmark.registry import CLASSIFIERS, DEFENSES, load_builtins

    load_builtins()
    if "_test_tiny_cifar10" not in CLASSIFIERS:
        CLASSIFIERS.add("_test_tiny_cifar10", lambda *, device="cpu": TinyClassifier().to(device).eval(), dataset="cifar10")
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for c in range(10):
            d = tmp_path / "data" / "cifar10-jpeg" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    init = _weights_folder(tmp_path / "init")
    cfg = tmp_path / "addt.yaml"
    cfg.write_text(yaml.safe_dump(dict(init=str(init), classifier="_test_tiny_cifar10", batch_size=10, epochs=1,
                                       warmup_steps=1, eval_images=4, eval_steps=2, log_every=1)))
    out = A.main(str(cfg), device="cpu", out_dir=str(tmp_path / "run"), data_root=str(tmp_path / "data"))
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["steps"] == 2 and rec["config"]["cgpo_iters"] == 5
    assert rec["timestep_sampling"] == "uniform over [0, 1000)" == rec["method"]["timesteps"]
    assert rec["method"]["perturbation"] == (
        "5 iterations, 1 eps draw(s) each: the classifier CE's gradient through the one-step x0 prediction "
        "(not clamped) summed over iterations, delta = RBGM(rank order of the summed gradient); UNet in "
        f"train mode (dropout rate {TINY.dropout:g}, the init UNet's)")
    d = DEFENSES.create("addt", weights=str(out), classifier="_test_tiny_cifar10", t_star=0.02, steps=2)
    assert d(torch.rand(2, 3, 32, 32, generator=gen(3)), generator=gen(4)).shape == (2, 10)
