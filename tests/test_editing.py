"""Editing with a trained denoiser: RePaint, SDEdit, DDIM inversion and slerp, checked on exact denoisers of
Gaussian data, where the right answer is known in closed form."""

import math

import pytest
import torch

from ddpm.diffusion import q_sample
from ddpm.editing import (
    ddim_invert,
    repaint,
    repaint_evaluations,
    repaint_schedule,
    sdedit,
    sdedit_start,
    slerp,
    slerp_path,
)
from ddpm.samplers import SAMPLERS, ddim_sample, make_denoiser, make_timesteps
from ddpm.schedules import make_schedule
from tests.test_samplers import fake_model, gaussian_model, standard_normal


def correlated_gaussian_model(schedule, m, cov):
    """The exact ε-network for x_0 ~ N(m, Σ) in 2-D: E[x_0 | x_t] = m + a Σ (a² Σ + b² I)⁻¹ (x_t − a m)."""

    def model(x, t):
        i = t.long()[0]
        a, b = schedule.sqrt_alpha_bar[i].item(), schedule.sqrt_one_minus_alpha_bar[i].item()
        gain = a * cov @ torch.linalg.inv(a**2 * cov + b**2 * torch.eye(2, dtype=cov.dtype))
        x0 = m + (x - a * m) @ gain.T
        return (x - a * x0) / b

    return model


# --- RePaint ----------------------------------------------------------------------------------------------


def test_repaint_schedule_with_jump_length_1_is_algorithm_1():
    """U = 3 resamplings at every step but the last (Algorithm 1 skips it at t = 1)."""
    assert repaint_schedule(3, 1, 3) == [0, 1, 0, 1, 0, 1, 2, 1, 2, 1, 2, 3]
    assert repaint_schedule(4, 1, 1) == [0, 1, 2, 3, 4]  # no resampling: the plain reverse process


def test_repaint_schedule_jumps_back_by_the_jump_length():
    path = repaint_schedule(6, 3, 2)
    assert path == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6]
    assert all(abs(b - a) == 1 for a, b in zip(path, path[1:])) and path[0] == 0 and path[-1] == 6
    assert repaint_evaluations(6, 3, 2) == 9  # the first segment twice, the last once
    with pytest.raises(ValueError, match="≥ 1"):
        repaint_schedule(6, 0, 2)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_repaint_ends_with_the_known_pixels_of_the_input(prediction):
    schedule = make_schedule("cosine", 50)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 6, 6, generator=g) * 2 - 1
    keep = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    keep[..., :3, :] = True  # the upper half is known
    seen = []
    out = repaint(
        make_denoiser(lambda x, t: torch.tanh(x + 0.01 * t[:, None, None, None]), schedule, prediction, 1.0),
        torch.randn(x0.shape, generator=g),
        schedule,
        make_timesteps(schedule, 10),
        x0,
        keep,
        jump_length=3,
        jump_n_sample=3,
        generator=g,
        callback=lambda i, t, x, x0_hat: seen.append(t),
    )
    assert torch.equal(out[..., :3, :], x0[..., :3, :])
    assert not torch.allclose(out[..., 3:, :], x0[..., 3:, :], atol=0.1)
    assert len(seen) == repaint_evaluations(10, 3, 3)


def test_repaint_puts_the_known_pixels_at_the_level_reached():
    """After each reverse step from t to s, the known pixels are x_0 noised to s: with x_0 = 0 there, they
    spread as √(1 − ᾱ_s) (and are exactly x_0 after the last step)."""
    schedule = make_schedule("linear", 100)
    timesteps = make_timesteps(schedule, 10)
    g = torch.Generator().manual_seed(0)
    x0, keep = torch.zeros(4000, 2), torch.tensor([True, False])
    seen = []
    repaint(
        make_denoiser(fake_model, schedule), torch.randn(4000, 2, generator=g), schedule, timesteps, x0, keep,
        jump_length=3, jump_n_sample=2, generator=g, callback=lambda i, t, x, x0_hat: seen.append((t, x)),
    )  # fmt: skip
    for t, x in seen:
        k = timesteps.index(t)
        if k + 1 == len(timesteps):
            assert torch.equal(x[:, 0], x0[:, 0])
        else:
            want = (1 - schedule.alpha_bar[timesteps[k + 1]]).sqrt().item()
            assert x[:, 0].std().item() == pytest.approx(want, rel=0.05), (t, want)


def test_repaint_pulls_the_unknown_pixel_towards_its_conditional():
    """x_0 ~ N(m, Σ) in 2-D with correlation 0.9, x_1 known at m_1 + 1.5 s_1: the unknown x_2 should follow
    p(x_2 | x_1) = N(m_2 + 1.5 ρ s_2, s_2² (1 − ρ²)). Plain replacement (one pass, no jumps back) lets the
    known pixel act on the unknown one only through the last, least noisy steps and lands far short of
    the conditional mean; resampling every step 10 times (Algorithm 1, U = 10) comes close. (RePaint is not
    exact: its spread here is about 0.13 against 0.17.)"""
    m = torch.tensor([0.2, -0.1], dtype=torch.float64)
    s1, s2, rho = 0.5, 0.4, 0.9
    cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]], dtype=torch.float64)
    schedule = make_schedule("linear", 200)
    denoise = make_denoiser(correlated_gaussian_model(schedule, m, cov), schedule)
    n = 4000
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    x0[:, 0] = m[0] + 1.5 * s1  # known; x0[:, 1] is never looked at
    keep = torch.tensor([True, False])
    want = m[1].item() + 1.5 * rho * s2

    def completions(jump_n_sample):
        g = torch.Generator().manual_seed(1)
        x_T = torch.randn(n, 2, dtype=torch.float64, generator=g)
        x = repaint(
            denoise, x_T, schedule, make_timesteps(schedule, 50), x0, keep,
            jump_length=1, jump_n_sample=jump_n_sample, generator=g,
        )  # fmt: skip
        assert torch.equal(x[:, 0], x0[:, 0])
        return x[:, 1].mean().item(), x[:, 1].std().item()

    mean, std = completions(10)
    plain, _ = completions(1)
    assert abs(mean - want) < 0.05 and 0.1 < std < 0.2, (mean, std, want)
    assert abs(plain - want) > 4 * abs(mean - want), (plain, mean, want)


# --- SDEdit -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sdedit_at_strength_0_returns_the_input(sampler):
    schedule = make_schedule("cosine", 100)
    x0 = torch.randn(4, 2)
    out = sdedit(make_denoiser(fake_model, schedule), x0, schedule, None, 0.0, sampler=SAMPLERS[sampler])
    assert torch.equal(out, x0)
    assert sdedit_start(schedule, 0.004) == -1 and sdedit_start(schedule, 1.0) == 99
    with pytest.raises(ValueError, match="strength must lie in"):
        sdedit_start(schedule, 1.5)


def test_sdedit_noises_the_image_to_strength_T_then_hands_it_to_the_sampler():
    schedule = make_schedule("linear", 100)
    x0 = torch.randn(5, 2, dtype=torch.float64)
    got = {}

    def spy(denoise, x, schedule, timesteps, *, generator, callback, **options):
        got.update(x=x, timesteps=timesteps, options=options)
        return x

    timesteps = make_timesteps(schedule, 10)  # 90, 80, …, 0
    sdedit(
        make_denoiser(fake_model, schedule), x0, schedule, timesteps, 0.55, sampler=spy,
        generator=torch.Generator().manual_seed(4), eta=0.3,
    )  # fmt: skip
    assert got["timesteps"] == [54, 50, 40, 30, 20, 10, 0] and got["options"] == {"eta": 0.3}
    z = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(got["x"], q_sample(x0, torch.full((5,), 54), schedule, z))


def test_sdedit_with_ddim_follows_the_ode_of_gaussian_data():
    """Data N(m, s²) and its exact denoiser: the ODE keeps (x_t − √ᾱ_t m) / sd_t constant (sd_t² = ᾱ_t s² +
    1 − ᾱ_t), so an edit of x_0 at strength σ ends at m + s (x_{t0} − √ᾱ m) / sd_{t0}: its mean over the
    noise is m + s √ᾱ (x_0 − m) / sd_{t0} and its spread s √(1 − ᾱ) / sd_{t0}, with ᾱ = ᾱ_{t0}."""
    m, s = 0.5, 0.3
    schedule = make_schedule("linear", 1000)
    denoise = make_denoiser(gaussian_model(schedule, m, s, "eps"), schedule)
    x0 = torch.full((20_000, 1), -0.4, dtype=torch.float64)
    out = sdedit(
        denoise, x0, schedule, make_timesteps(schedule, 200), 0.3, sampler=ddim_sample,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    ab = schedule.alpha_bar[299].item()
    sd = math.sqrt(ab * s**2 + 1 - ab)
    assert abs(out.mean().item() - (m + s * math.sqrt(ab) * (-0.4 - m) / sd)) < 0.01
    assert abs(out.std().item() - s * math.sqrt(1 - ab) / sd) < 0.01


# --- DDIM inversion and interpolation ---------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10, 50])
def test_inverting_a_ddim_sample_gives_back_its_noise_and_reconstructs_it(steps):
    """Gaussian data N(m, s²), its exact denoiser: the fixed-point inversion is the exact inverse of DDIM's
    deterministic steps, to float precision; the one-evaluation inversion only approximately. (The linear
    schedule: with the cosine one ᾱ_T ≈ 0, where the top step cannot be inverted: x̂_0 = (x_T − b ε̂) / a.)"""
    schedule = make_schedule("linear", 1000)
    denoise = make_denoiser(gaussian_model(schedule, 0.5, 0.3, "eps"), schedule)
    timesteps = make_timesteps(schedule, steps, "trailing")
    x_T = standard_normal(64)
    x = ddim_sample(denoise, x_T, schedule, timesteps)
    z = ddim_invert(denoise, x, schedule, timesteps, fixed_point_iterations=60)
    assert torch.allclose(z, x_T, atol=1e-9)
    assert torch.allclose(ddim_sample(denoise, z, schedule, timesteps), x, atol=1e-10)
    rough = ddim_invert(denoise, x, schedule, timesteps)
    assert (rough - x_T).abs().max() > 0.1  # reading ε̂ one step early costs a lot on few steps


def test_slerp_keeps_to_the_sphere_and_ends_at_both_points():
    a, b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 3.0, 0.0]]) / 3
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b)
    assert torch.allclose(slerp(a, b, 0.5), (a + b) / math.sqrt(2))
    path = slerp_path(a, b, 7)
    assert path.shape == (7, 3) and torch.allclose(path.norm(dim=1), torch.ones(7))
    assert torch.allclose(slerp(a, a, 0.3), a)
    with pytest.raises(ValueError, match="at least 2 frames"):
        slerp_path(a, b, 1)
