"""Noise schedules: end values, monotonicity and the derived coefficients of ``ddpm.schedules``."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.schedules import SCHEDULES, Schedule, make_schedule, rescale_zero_terminal_snr

F64 = torch.float64


def close(a, b, rtol=1e-12, atol=1e-15):
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_linear_end_values_T1000():
    s = make_schedule("linear", 1000)
    assert s.T == 1000
    close(s.betas[0], 1e-4)
    close(s.betas[-1], 0.02)
    close(s.betas[1] - s.betas[0], (0.02 - 1e-4) / 999)


def test_linear_rescaled_at_T500():
    s = make_schedule("linear", 500)
    assert s.T == 500
    close(s.betas[0], 2e-4)
    close(s.betas[-1], 0.04)
    # The rescaling keeps the total noise, so ᾱ_T stays about the same as at T = 1000.
    ref = make_schedule("linear", 1000).alpha_bar[-1]
    assert abs(math.log(s.alpha_bar[-1] / ref)) < 0.1


def test_scaled_linear_end_values():
    s = make_schedule("scaled_linear", 1000)
    close(s.betas[0], 1e-4)
    close(s.betas[-1], 0.02)
    steps = s.betas.sqrt().diff()
    close(steps, steps.mean().expand_as(steps), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("T", [1000, 500])
def test_sigmoid_end_values(T):
    s = make_schedule("sigmoid", T)
    scale = 1000 / T
    lo, hi = 1e-4 + (0.02 - 1e-4) / (1 + math.exp(6)), 1e-4 + (0.02 - 1e-4) / (1 + math.exp(-6))
    close(s.betas[0], lo * scale)
    close(s.betas[-1], hi * scale)


def test_scaled_linear_rescaled_at_T500():
    s = make_schedule("scaled_linear", 500)
    close(s.betas[0], 2e-4)
    close(s.betas[-1], 0.04)


@pytest.mark.parametrize("T", [1000, 100])
def test_cosine_matches_closed_form(T):
    s = make_schedule("cosine", T)
    assert bool((s.betas <= 0.999).all()) and bool((s.betas > 0).all())
    close(s.betas[-1], 0.999)  # the last β is clipped
    f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    closed = torch.tensor([f[t] / f[0] for t in range(1, T + 1)], dtype=F64)
    # ᾱ_t = f(t)/f(0) (Nichol & Dhariwal eq. 17) wherever clipping has not acted (all but the last step).
    close(s.alpha_bar[:-1], closed[:-1], rtol=1e-10, atol=0)
    close(s.alpha_bar[-1], s.alpha_bar[-2] * (1 - 0.999))
    assert 1 - 0.1 / T < s.alpha_bar[0] < 1


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [1000, 250])
def test_alpha_bar_strictly_decreasing(name, T):
    s = make_schedule(name, T)
    assert bool((s.alpha_bar.diff() < 0).all())
    assert 0 < s.alpha_bar[-1] < s.alpha_bar[0] < 1
    assert bool((s.alpha_bar_prev[1:] == s.alpha_bar[:-1]).all()) and s.alpha_bar_prev[0] == 1


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "sigmoid"])
def test_betas_increasing(name):
    assert bool((make_schedule(name, 1000).betas.diff() > 0).all())


@pytest.mark.parametrize("name", SCHEDULES)
def test_derived_coefficients(name):
    s = make_schedule(name, 300)
    b = s.betas
    close(s.alphas, 1 - b)
    cum, running = [], 1.0
    for a in (1 - b).tolist():
        running *= a
        cum.append(running)
    close(s.alpha_bar, cum, rtol=1e-12)
    close(s.sqrt_alpha_bar**2, s.alpha_bar)
    close(s.sqrt_alpha_bar**2 + s.sqrt_one_minus_alpha_bar**2, torch.ones_like(b))
    close(s.sqrt_recip_alpha_bar * s.sqrt_alpha_bar, torch.ones_like(b))
    close(s.sqrt_recipm1_alpha_bar, s.sqrt_one_minus_alpha_bar / s.sqrt_alpha_bar, rtol=1e-10)
    close(s.snr, s.alpha_bar / (1 - s.alpha_bar))
    close(s.log_snr, torch.log(s.alpha_bar) - torch.log1p(-s.alpha_bar), rtol=1e-10, atol=1e-12)
    close(s.posterior_variance, b * (1 - s.alpha_bar_prev) / (1 - s.alpha_bar))
    assert s.posterior_variance[0] == 0
    close(s.posterior_log_variance_clipped[1:], s.posterior_variance[1:].log())
    close(s.posterior_log_variance_clipped[0], s.posterior_variance[1].log())
    for f in Schedule.__dataclass_fields__:
        value = getattr(s, f)
        assert value.dtype == F64 and value.shape == (300,), f


def test_snr_decreasing_and_log_snr_spans_sign():
    s = make_schedule("linear", 1000)
    assert bool((s.log_snr.diff() < 0).all())
    assert s.log_snr[0] > 9 and s.log_snr[-1] < -9


@pytest.mark.parametrize("name", SCHEDULES)
def test_zero_terminal_snr(name):
    before = make_schedule(name, 1000)
    after = make_schedule(name, 1000, zero_terminal_snr=True)
    assert after.alpha_bar[-1] == 0 and after.snr[-1] == 0
    assert after.betas[-1] == 1
    close(after.sqrt_alpha_bar[0], before.sqrt_alpha_bar[0], rtol=1e-12)
    assert bool((after.alpha_bar.diff() < 0).all())
    # √ᾱ is an affine map of the original √ᾱ (Lin et al. 2023, Alg. 1).
    x, y = before.sqrt_alpha_bar, after.sqrt_alpha_bar
    slope = (y[0] - y[-1]) / (x[0] - x[-1])
    close(y, slope * (x - x[-1]), rtol=1e-9, atol=1e-12)


def test_rescale_zero_terminal_snr_function():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    new = rescale_zero_terminal_snr(betas)
    assert new.dtype == F64 and new.shape == betas.shape
    assert new[-1] == 1
    close(torch.cumprod(1 - new, 0)[0], 1 - betas[0])


@pytest.mark.parametrize("name", ["", "Linear", "quadratic", "cos"])
def test_unknown_schedule_raises(name):
    with pytest.raises(ValueError):
        make_schedule(name, 100)


@pytest.mark.parametrize("T", [0, -1, -1000, 2.5, "100"])
def test_bad_T_raises(T):
    with pytest.raises(ValueError):
        make_schedule("linear", T)


def test_from_betas_validates():
    with pytest.raises(ValueError):
        Schedule.from_betas(torch.tensor([0.1, 0.0], dtype=F64))
    with pytest.raises(ValueError):
        Schedule.from_betas(torch.tensor([0.1, 1.5], dtype=F64))
    with pytest.raises(ValueError):
        Schedule.from_betas(torch.zeros(0, dtype=F64))
    s = Schedule.from_betas(torch.tensor([0.1, 0.2], dtype=torch.float32))
    assert s.betas.dtype == F64


def test_to_keeps_float64():
    s = make_schedule("cosine", 100)
    moved = s.to("cpu")
    moved_dev = s.to(torch.device("cpu"))
    assert isinstance(moved, Schedule) and moved.T == 100
    for f in Schedule.__dataclass_fields__:
        assert getattr(moved, f).dtype == F64
        assert getattr(moved_dev, f).device.type == "cpu"
        torch.testing.assert_close(getattr(moved, f), getattr(s, f), rtol=0, atol=0)


def test_schedule_is_frozen():
    s = make_schedule("linear", 100)
    with pytest.raises(AttributeError):
        s.betas = s.betas * 2


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "sigmoid"])
def test_too_few_steps_for_a_rescaled_schedule_raise(name):
    """Their ends scale by 1000/T, so with T ≤ 20 (19 for the sigmoid) the last β reaches 1 and ᾱ_T = 0,
    where an ε-model's x̂0 divides by zero; a clear refusal instead of NaN samples."""
    T = 19 if name == "sigmoid" else 20
    with pytest.raises(ValueError, match="reaches β"):
        make_schedule(name, T)
    assert float(make_schedule(name, T + 1).betas.max()) < 1


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respace_keeps_alpha_bar_and_links_kept_steps(name):
    """A respaced schedule (Nichol & Dhariwal 2021, sec. 4) has the original ᾱ at the kept steps, and its
    posterior q(x_s | x_t, x_0) between neighbouring kept steps s < t is eq. 6–7 with ᾱ_t / ᾱ_s for α_t."""
    schedule = make_schedule(name, 1000)
    kept = [999, 700, 512, 100, 3, 0]
    spaced = schedule.respace(kept)
    assert spaced.T == len(kept)
    assert torch.equal(spaced.alpha_bar, schedule.alpha_bar[sorted(kept)])
    for i, (s, t) in enumerate(zip(sorted(kept), sorted(kept)[1:]), start=1):
        ab_t, ab_s = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[s])
        beta = 1 - ab_t / ab_s
        assert float(spaced.betas[i]) == pytest.approx(beta, rel=1e-12)
        coef1 = ab_s**0.5 * beta / (1 - ab_t)
        coef2 = (ab_t / ab_s) ** 0.5 * (1 - ab_s) / (1 - ab_t)
        assert float(spaced.posterior_mean_coef1[i]) == pytest.approx(coef1, rel=1e-12)
        assert float(spaced.posterior_mean_coef2[i]) == pytest.approx(coef2, rel=1e-12)
        assert float(spaced.posterior_variance[i]) == pytest.approx(beta * (1 - ab_s) / (1 - ab_t), rel=1e-12)
    # the first kept step goes to x_0 itself (ᾱ = 1 before it)
    assert spaced.alpha_bar_prev[0] == 1 and spaced.posterior_variance[0] == 0


def test_respace_every_step_is_the_schedule():
    schedule = make_schedule("cosine", 200)
    spaced = schedule.respace(range(199, -1, -1))
    for name in ("betas", "alpha_bar", "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2"):
        torch.testing.assert_close(getattr(spaced, name), getattr(schedule, name), rtol=1e-10, atol=1e-15)
