"""ADDT's DDPM evaluation settings (variance fixed_large, t = 100 with its 101 steps) against diffusers' DDPMScheduler,
the pip reference ADDT's own eval (ddpm_attack_eval_linf.py) runs."""
import pytest
import torch

from benchmark.errors import BenchError
from defenses.base import Noise
from defenses.diffpure import DiffusionPurifier
from defenses.diffusion import Schedule


class _Lin(torch.nn.Module):
    """A cheap eps model with a time dependence."""

    def forward(self, x, t):
        return 0.5 * x + 1e-3 * t.view(-1, 1, 1, 1).to(x.dtype)


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_addt_ddpm_process_equals_diffusers_scheduler(variance):
    import benchmark.compat  # noqa: F401
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, variance_type=variance)
    sched.set_timesteps(num_inference_steps=1000)
    ts = sched.timesteps[round((1 - 0.1) * len(sched.timesteps)) - 1:]  # ADDT: denoise strength 0.1
    assert ts.tolist() == list(range(100, -1, -1))
    pur = DiffusionPurifier(_Lin(), Schedule(), t_star=0.101, variance=variance)
    assert pur.ts == ts.tolist() and pur.steps == 101
    x = torch.rand(2, 3, 8, 8)
    ef = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        y = sched.add_noise(2 * x - 1, ef, ts[:1])
        for t in ts:
            y = sched.step(_Lin()(y, t.expand(2)), t, y, generator=gen).prev_sample
        ref = (y / 2 + 0.5).clamp(0, 1)
        g2 = torch.Generator().manual_seed(7)  # diffusers draws one noise per step with t > 0, in order
        z = torch.zeros(2, 101, 3, 8, 8)
        for i in range(100):
            z[:, i] = torch.randn(2, 3, 8, 8, generator=g2)
        out = pur(x, Noise(2, {"forward": ef, "reverse": z}))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)  # diffusers' betas are float32, ours float64


def test_fixed_large_sigma_is_beta_and_bad_variance_fails():
    pur = DiffusionPurifier(_Lin(), Schedule(), t_star=0.1, variance="fixed_large")
    betas = Schedule().betas
    assert abs(pur.coefs[0].ddpm_coefs[2] - float(betas[99]) ** 0.5) < 1e-12 and pur.coefs[-1].ddpm_coefs[2] == 0.0
    with pytest.raises(BenchError, match="fixed_large"):
        DiffusionPurifier(_Lin(), Schedule(), variance="large")
