"""EDM's preconditioning and noise-level distribution (Karras et al. 2022, Table 1) on our VP schedules,
checked against the paper's formulas written in σ."""

import math

import pytest
import torch
from scipy import stats

from ddpm import diffusion
from ddpm.schedules import make_schedule


@pytest.fixture(scope="module")
def schedule():
    return make_schedule("cosine", 1000)


def test_preconditioning_is_the_papers_in_sigma(schedule):
    # Table 1, written in the VE variable x = x_t / √ᾱ_t with σ = √((1 − ᾱ) / ᾱ).
    sd = diffusion.EDM_SIGMA_DATA
    a = schedule.alpha_bar
    sigma = ((1 - a) / a).sqrt()
    torch.testing.assert_close(diffusion.edm_sigma(schedule), sigma)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sigma**2 + sd**2).sqrt()
    skip, out, inp = diffusion.edm_preconditioning(schedule)
    torch.testing.assert_close(skip, c_skip / a.sqrt())
    torch.testing.assert_close(out, c_out)
    torch.testing.assert_close(inp, c_in / a.sqrt())
    # Data of variance σ_d² give the network an input of unit variance at every step.
    torch.testing.assert_close(inp**2 * (a * sd**2 + 1 - a), torch.ones_like(a))


def test_preconditioning_with_unit_sigma_data_is_v_prediction(schedule):
    # With σ_d = 1, D = √ᾱ x_t + √(1 − ᾱ) F: Salimans & Ho's x_0 = √ᾱ x_t − √(1 − ᾱ) v with F = −v.
    skip, out, inp = diffusion.edm_preconditioning(schedule, sigma_data=1.0)
    torch.testing.assert_close(skip, schedule.sqrt_alpha_bar)
    torch.testing.assert_close(out, schedule.sqrt_one_minus_alpha_bar)
    torch.testing.assert_close(inp, torch.ones_like(inp))


def test_target_output_round_trip_and_weighting(schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (64,), generator=g)
    x_t = diffusion.q_sample(x0, t, schedule, noise)
    F = diffusion.training_target(x0, noise, t, schedule, "edm")
    x0_hat, eps_hat = diffusion.x0_eps_from_output(F, x_t, t, schedule, "edm")
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)
    # The F-loss weighted by min(SNR, γ) c_out² is the x_0-loss weighted by min(SNR, γ).
    out = diffusion.edm_preconditioning(schedule)[1][t]
    err = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    w = diffusion.min_snr_weight(t, schedule, "edm", 5.0).double()
    x0_weight = schedule.snr[t].clamp(max=5.0)
    f_loss = (err**2).flatten(1).mean(1) * w
    x0_loss = ((out[:, None, None, None] * err) ** 2).flatten(1).mean(1) * x0_weight
    torch.testing.assert_close(f_loss, x0_loss, rtol=1e-5, atol=1e-9)


def test_lognormal_noise_levels(schedule):
    p = diffusion.noise_level_probabilities(schedule, "lognormal", -1.2, 1.2)
    assert p.shape == (1000,) and (p >= 0).all()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    # P(σ ≤ σ_t at the middle of the steps) as the log-normal of Table 1 says.
    log_sigma = diffusion.edm_sigma(schedule).log()
    k = 300
    edge = float(log_sigma[k] + log_sigma[k + 1]) / 2
    assert p[: k + 1].sum().item() == pytest.approx(stats.norm.cdf(edge, -1.2, 1.2), abs=1e-9)
    # Drawn steps follow it.
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(1))
    t = diffusion.draw_timesteps(u, p)
    sigma = diffusion.edm_sigma(schedule)[t]
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.03)
    assert sigma.log().std().item() == pytest.approx(1.2, abs=0.03)
    uniform = diffusion.noise_level_probabilities(schedule, "uniform")
    torch.testing.assert_close(uniform, torch.full((1000,), 1e-3, dtype=torch.float64))
    assert math.isclose(float(diffusion.draw_timesteps(torch.tensor([0.9999999]), uniform)), 999)
