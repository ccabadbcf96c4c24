"""The torch library (float64) agrees with the independent NumPy reference of ``ddpm.reference_numpy``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpm import diffusion as D
from ddpm import reference_numpy as R
from ddpm.schedules import Schedule, cosine_betas, linear_betas, make_schedule

TOL = {"atol": 1e-6, "rtol": 1e-6}
FAST = settings(max_examples=25, deadline=None)

SCHEDULES = {
    ("linear", 1000): make_schedule("linear", 1000),
    ("linear", 200): make_schedule("linear", 200),
    ("cosine", 1000): make_schedule("cosine", 1000),
    ("cosine", 50): make_schedule("cosine", 50),
}


@st.composite
def cases(draw):
    """A schedule, a batch of 0-based steps t and a data shape (B, …) with B = len(t)."""
    key = draw(st.sampled_from(sorted(SCHEDULES)))
    schedule = SCHEDULES[key]
    batch = draw(st.integers(1, 4))
    t = draw(st.lists(st.integers(0, schedule.T - 1), min_size=batch, max_size=batch))
    rest = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    seed = draw(st.integers(0, 2**31 - 1))
    return schedule, np.array(t), (batch, *rest), np.random.default_rng(seed)


def _torch(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


def _close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.numpy(), expected, **TOL)


@pytest.mark.parametrize("T", [1000, 500, 100, 50])
def test_linear_betas_agree(T):
    _close(linear_betas(T), R.linear_betas(T))


@pytest.mark.parametrize("T", [1000, 100, 10])
def test_cosine_betas_agree(T):
    _close(cosine_betas(T), R.cosine_betas(T))


@pytest.mark.parametrize("key", sorted(SCHEDULES))
def test_alpha_bar_agrees(key):
    schedule = SCHEDULES[key]
    alphas, alpha_bar = R.alphas_and_alpha_bar(schedule.betas.numpy())
    _close(schedule.alphas, alphas)
    np.testing.assert_allclose(schedule.alpha_bar.numpy(), alpha_bar, rtol=1e-10, atol=0)


@FAST
@given(cases())
def test_forward_step_agrees(case):
    schedule, t, shape, rng = case
    x_prev, noise = rng.standard_normal(shape), rng.standard_normal(shape)
    expected = R.forward_step(x_prev, t, schedule.betas.numpy(), noise)
    _close(D.q_step(*_torch(x_prev), torch.from_numpy(t), schedule, *_torch(noise)), expected)


@FAST
@given(cases())
def test_q_sample_agrees(case):
    schedule, t, shape, rng = case
    x0, noise = rng.standard_normal(shape), rng.standard_normal(shape)
    expected = R.q_sample(x0, t, schedule.betas.numpy(), noise)
    _close(D.q_sample(*_torch(x0), torch.from_numpy(t), schedule, *_torch(noise)), expected)


@FAST
@given(cases())
def test_posterior_agrees(case):
    schedule, t, shape, rng = case
    x0, x_t = rng.standard_normal(shape), rng.standard_normal(shape)
    mean, var = R.posterior_mean_variance(x0, x_t, t, schedule.betas.numpy())
    got_mean, got_var, _ = D.q_posterior_mean_variance(*_torch(x0, x_t), torch.from_numpy(t), schedule)
    _close(got_mean, mean)
    _close(got_var.expand_as(got_mean), var)


@FAST
@given(cases())
def test_x0_from_eps_agrees(case):
    schedule, t, shape, rng = case
    x_t, eps = rng.standard_normal(shape), rng.standard_normal(shape)
    expected = R.predict_x0_from_eps(x_t, t, eps, schedule.betas.numpy())
    # 1/√ᾱ_T reaches ~3e4 for the cosine schedule: compare relative to that amplification.
    got = D.predict_x0_from_eps(*_torch(x_t), torch.from_numpy(t), *_torch(eps), schedule).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


@FAST
@given(cases(), st.sampled_from(["small", "large"]), st.sampled_from([None, 1.0, 0.5]))
def test_reverse_step_agrees(case, variance, clip):
    schedule, t, shape, rng = case
    eps, x_t, noise = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal(shape)
    expected = R.reverse_step(eps, x_t, t, schedule.betas.numpy(), noise, variance=variance, clip=clip)
    got, _ = D.p_sample_step(
        *_torch(eps, x_t), torch.from_numpy(t), schedule, *_torch(noise), "eps", variance, clip
    )
    _close(got, expected)


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_reverse_step_every_t(variance, clip):
    """Every step of a linear T=1000 schedule at once, batch index = t."""
    schedule = SCHEDULES[("linear", 1000)]
    rng = np.random.default_rng(0)
    t = np.arange(schedule.T)
    eps, x_t, noise = (rng.standard_normal((schedule.T, 3)) for _ in range(3))
    expected = R.reverse_step(eps, x_t, t, schedule.betas.numpy(), noise, variance=variance, clip=clip)
    got, _ = D.p_sample_step(
        *_torch(eps, x_t), torch.from_numpy(t), schedule, *_torch(noise), "eps", variance, clip
    )
    _close(got, expected)


def test_reference_scalar_t_and_last_step_is_noise_free():
    betas = R.linear_betas(100)
    x_t, eps, noise = np.ones(5), np.full(5, 0.3), np.full(5, 7.0)
    a = R.reverse_step(eps, x_t, 0, betas, noise, variance="large")
    b = R.reverse_step(eps, x_t, 0, betas, np.zeros(5), variance="large")
    np.testing.assert_array_equal(a, b)
    schedule = Schedule.from_betas(torch.from_numpy(betas))
    x = torch.from_numpy(x_t)[None]
    got = D.q_sample(x, torch.tensor([37]), schedule, torch.from_numpy(eps)[None])[0]
    _close(got, R.q_sample(x_t, 37, betas, eps))


def test_reference_rejects_unknown_variance():
    with pytest.raises(ValueError):
        R.reverse_step(np.zeros(2), np.zeros(2), 3, R.linear_betas(1000), np.zeros(2), variance="medium")
