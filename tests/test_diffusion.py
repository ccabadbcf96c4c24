"""Tests of ``ddpm.diffusion`` that a wrong formula would fail.

The identity checks are helper functions returning an error, so that each is run twice: once on the library
(error small) and once on a deliberately broken version (error large), which shows the check has teeth.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from ddpm import diffusion as D
from ddpm.schedules import Schedule, make_schedule

F64 = torch.float64
FAST = settings(max_examples=25, deadline=None)
LINEAR = make_schedule("linear", 1000)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The sampling loops here are many small ops: one thread avoids contention on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


COSINE = make_schedule("cosine", 1000)
SCHEDULES = {"linear": LINEAR, "cosine": COSINE, "sigmoid": make_schedule("sigmoid", 1000)}


def steps(i: int, n: int) -> torch.Tensor:
    return torch.full((n,), i, dtype=torch.long)


def normal(shape, g: torch.Generator) -> torch.Tensor:
    """Standard normals in float64 (drawn in float32, which is several times faster and ample here)."""
    return torch.randn(shape, generator=g).double()


def alpha_bar_by_hand(schedule: Schedule, t: int) -> float:
    """ᾱ_t = Π_{s≤t} (1 − β_s) with Python floats, independent of the schedule's own table."""
    out = 1.0
    for beta in schedule.betas[: t + 1].tolist():
        out *= 1.0 - beta
    return out


# --- Checks, each returning an error -------------------------------------------------------------------


def forward_process_z(schedule: Schedule, checkpoints=(0, 9, 99, 299), n=200_000, x0=1.5, seed=0) -> float:
    """Largest |z-score| of the empirical mean and variance of x_t against √ᾱ_t x_0 and 1 − ᾱ_t (eq. 4).

    x_t is drawn two ways: by iterating ``q_step`` (eq. 2) from x_0, and in one jump with ``q_sample``.
    The standard errors are those of the sample mean, σ/√n, and of the sample variance, σ²√(2/(n−1)).
    The n scalars form one batch element of shape (1, n), so each step is a single coefficient look-up.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.full((1, n), x0, dtype=F64)
    worst = 0.0
    for i in range(max(checkpoints) + 1):
        x = D.q_step(x, steps(i, 1), schedule, normal((1, n), g))
        if i not in checkpoints:
            continue
        ab = alpha_bar_by_hand(schedule, i)
        direct = D.q_sample(torch.full((1, n), x0, dtype=F64), steps(i, 1), schedule, normal((1, n), g))
        for sample in (x, direct):
            z_mean = (sample.mean().item() - math.sqrt(ab) * x0) / math.sqrt((1 - ab) / n)
            z_var = (sample.var().item() - (1 - ab)) / ((1 - ab) * math.sqrt(2 / (n - 1)))
            worst = max(worst, abs(z_mean), abs(z_var))
    return worst


def posterior_bayes_error(schedule: Schedule, t: int, x0: float, x_t: float) -> float:
    """Discrepancy between ``q_posterior_mean_variance`` and Bayes' rule evaluated numerically.

    q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1}) q(x_{t−1} | x_0)
                        = N(x_t; √α_t x_{t−1}, β_t) N(x_{t−1}; √ᾱ_{t−1} x_0, 1 − ᾱ_{t−1})
    is tabulated on a fine float64 grid and its mean and variance integrated. Returns the larger of
    |Δmean| / posterior std and |variance ratio − 1|. At t = 0 (paper's t = 1) the posterior is the point
    mass at x_0.
    """
    mean, var, _ = D.q_posterior_mean_variance(
        torch.tensor([x0], dtype=F64), torch.tensor([x_t], dtype=F64), steps(t, 1), schedule
    )
    mean, var = mean.item(), var.item()
    if t == 0:
        return max(abs(mean - x0), abs(var))
    beta, ab_prev = schedule.betas[t].item(), alpha_bar_by_hand(schedule, t - 1)

    def moments(grid):
        log_p = -((x_t - math.sqrt(1 - beta) * grid) ** 2) / (2 * beta) - (
            grid - math.sqrt(ab_prev) * x0
        ) ** 2 / (2 * (1 - ab_prev))
        w = np.exp(log_p - log_p.max())
        m = (w * grid).sum() / w.sum()
        return m, (w * (grid - m) ** 2).sum() / w.sum()

    sd_prior = math.sqrt(1 - ab_prev)
    m, v = moments(
        np.linspace(math.sqrt(ab_prev) * x0 - 12 * sd_prior, math.sqrt(ab_prev) * x0 + 12 * sd_prior, 20_001)
    )
    m, v = moments(
        np.linspace(m - 14 * math.sqrt(v), m + 14 * math.sqrt(v), 4001)
    )  # refine around the posterior
    return max(abs(mean - m) / math.sqrt(v), abs(var / v - 1))


def posterior_product_error(schedule: Schedule, seed: int = 0) -> float:
    """The same identity for every t > 0 at once, by the product-of-Gaussians closed form.

    As a function of x_{t−1}, N(x_t; √α_t x_{t−1}, β_t) N(x_{t−1}; √ᾱ_{t−1} x_0, 1 − ᾱ_{t−1}) is Gaussian with
    precision α_t/β_t + 1/(1 − ᾱ_{t−1}) and mean (√α_t x_t/β_t + √ᾱ_{t−1} x_0/(1 − ᾱ_{t−1})) / precision.
    """
    T = schedule.T
    g = torch.Generator().manual_seed(seed)
    x0, x_t = torch.randn(T, generator=g, dtype=F64), torch.randn(T, generator=g, dtype=F64)
    mean, var, _ = D.q_posterior_mean_variance(x0, x_t, torch.arange(T), schedule)
    betas = schedule.betas
    ab_prev = torch.tensor([alpha_bar_by_hand(schedule, t - 1) if t else 1.0 for t in range(T)], dtype=F64)
    prec = (1 - betas[1:]) / betas[1:] + 1 / (1 - ab_prev[1:])
    want_mean = (
        (1 - betas[1:]).sqrt() * x_t[1:] / betas[1:] + ab_prev[1:].sqrt() * x0[1:] / (1 - ab_prev[1:])
    ) / prec
    want_var = 1 / prec
    err_mean = ((mean[1:] - want_mean).abs() / want_var.sqrt()).max().item()
    err_var = (var[1:] / want_var - 1).abs().max().item()
    err_first = max((mean[0] - x0[0]).abs().item(), var[0].abs().item())
    return max(err_mean, err_var, err_first)


def reverse_process(schedule, posterior_x0, n, prediction="x0", variance="small", seed=0, record=()):
    """Ancestral sampling (Alg. 2) from x_T ~ N(0, I), the network replaced by the exact E[x_0 | x_t].

    ``posterior_x0(x_t, ᾱ_t)`` is that conditional mean; it is handed to ``p_sample_step`` as an x_0, ε or v
    prediction. Returns the n samples of x_0 and those of x_t at the 0-based steps in ``record``.
    """
    g = torch.Generator().manual_seed(seed)
    x = normal((1, n), g)
    kept = {}
    for i in reversed(range(schedule.T)):
        if i in record:
            kept[i] = x[0].clone()
        t = steps(i, 1)
        ab = schedule.alpha_bar[i]
        x0 = posterior_x0(x, ab)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        skip, out, _ = (c[i] for c in D.edm_preconditioning(schedule))
        output = {
            "x0": x0,
            "eps": eps,
            "v": D.v_from_x0_eps(x0, eps, t, schedule),
            "edm": (x0 - skip * x) / out,  # Karras et al. 2022, eq. 8: x̂_0 = c_skip x + c_out F
        }[prediction]
        x, _ = D.p_sample_step(output, x, t, schedule, normal((1, n), g), prediction, variance)
    return x[0], kept


# --- The forward process -------------------------------------------------------------------------------


def test_iterated_forward_steps_match_closed_form():
    assert forward_process_z(LINEAR) < 5


def test_iterated_forward_steps_match_closed_form_cosine():
    assert forward_process_z(make_schedule("cosine", 100), checkpoints=(0, 49, 99), n=100_000, x0=-0.8) < 5


def test_forward_check_catches_swapped_coefficients(monkeypatch):
    def swapped(x0, t, schedule, noise):
        return (
            D.extract(schedule.sqrt_one_minus_alpha_bar, t, x0) * x0
            + D.extract(schedule.sqrt_alpha_bar, t, x0) * noise
        )

    monkeypatch.setattr(D, "q_sample", swapped)
    assert forward_process_z(LINEAR, checkpoints=(0, 99), n=20_000) > 5


def test_forward_check_catches_wrong_step(monkeypatch):
    def no_sqrt(x_prev, t, schedule, noise):  # β_t as the noise scale instead of √β_t
        return (
            D.extract(schedule.alphas.sqrt(), t, x_prev) * x_prev
            + D.extract(schedule.betas, t, x_prev) * noise
        )

    monkeypatch.setattr(D, "q_step", no_sqrt)
    assert forward_process_z(LINEAR, checkpoints=(0, 99), n=20_000) > 5


def test_q_mean_variance_matches_q_sample():
    x0 = torch.randn(4, 3, dtype=F64)
    t = torch.tensor([0, 10, 500, 999])
    mean, var = D.q_mean_variance(x0, t, LINEAR)
    torch.testing.assert_close(mean, D.q_sample(x0, t, LINEAR, torch.zeros_like(x0)))
    torch.testing.assert_close(var.sqrt(), D.q_sample(torch.zeros_like(x0), t, LINEAR, torch.ones_like(x0)))


# --- The posterior q(x_{t−1} | x_t, x_0) ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("t", [0, 1, 10, 500, 999])
def test_posterior_is_bayes_rule(name, t):
    schedule = SCHEDULES[name]
    x0 = 0.7
    ab = alpha_bar_by_hand(schedule, t)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * 0.4  # a typical x_t given x_0
    assert posterior_bayes_error(schedule, t, x0, x_t) < 1e-6


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_posterior_product_of_gaussians(name):
    assert posterior_product_error(SCHEDULES[name]) < 1e-9


def _wrong_posteriors(s: Schedule) -> dict[str, Schedule]:
    ab, abp, b = s.alpha_bar, s.alpha_bar_prev, s.betas
    return {
        "coef1 without sqrt(alpha_bar_prev)": dataclasses.replace(s, posterior_mean_coef1=b / (1 - ab)),
        "coef1 with alpha_bar_prev": dataclasses.replace(s, posterior_mean_coef1=abp * b / (1 - ab)),
        "coef2 with alpha instead of sqrt(alpha)": dataclasses.replace(
            s, posterior_mean_coef2=s.alphas * (1 - abp) / (1 - ab)
        ),
        "coef2 with alpha_bar_prev and alpha_bar swapped": dataclasses.replace(
            s, posterior_mean_coef2=s.alphas.sqrt() * (1 - ab) / (1 - abp).clamp(min=1e-12)
        ),
        "variance beta (the 'large' one)": dataclasses.replace(s, posterior_variance=b),
        "variance without beta": dataclasses.replace(s, posterior_variance=(1 - abp) / (1 - ab)),
    }


@pytest.mark.parametrize("mutation", list(_wrong_posteriors(LINEAR)))
def test_posterior_checks_catch_wrong_coefficients(mutation):
    wrong = _wrong_posteriors(LINEAR)[mutation]
    errors = []
    for t in (1, 10, 500):
        ab = alpha_bar_by_hand(LINEAR, t)
        errors.append(posterior_bayes_error(wrong, t, 0.7, math.sqrt(ab) * 0.7 + math.sqrt(1 - ab) * 0.4))
    assert max(errors) > 1e-3
    assert posterior_product_error(wrong) > 1e-3


# --- ε, x_0 and v ---------------------------------------------------------------------------------------


@st.composite
def states(draw):
    schedule = SCHEDULES[draw(st.sampled_from(sorted(SCHEDULES)))]
    batch = draw(st.integers(1, 4))
    t = torch.tensor(draw(st.lists(st.integers(0, schedule.T - 1), min_size=batch, max_size=batch)))
    shape = (batch, *draw(st.lists(st.integers(1, 4), max_size=3)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x0, eps = torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)
    return schedule, t, x0, eps, D.q_sample(x0, t, schedule, eps)


@FAST
@given(states())
def test_eps_x0_round_trip(state):
    schedule, t, x0, eps, x_t = state
    # 1/√ᾱ_T is ~3e4 for the cosine schedule, so allow for that much amplification of rounding.
    torch.testing.assert_close(D.predict_x0_from_eps(x_t, t, eps, schedule), x0, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(D.predict_eps_from_x0(x_t, t, x0, schedule), eps, rtol=1e-8, atol=1e-9)


@FAST
@given(states())
def test_v_round_trip(state):
    schedule, t, x0, eps, x_t = state
    v = D.v_from_x0_eps(x0, eps, t, schedule)
    torch.testing.assert_close(D.x0_from_v(x_t, t, v, schedule), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(D.eps_from_v(x_t, t, v, schedule), eps, rtol=1e-10, atol=1e-10)
    # v is the rotation of (x_0, ε) by the angle φ with cos φ = √ᾱ_t, so the norm is kept.
    torch.testing.assert_close(v.pow(2) + x_t.pow(2), x0.pow(2) + eps.pow(2), rtol=1e-10, atol=1e-10)


@FAST
@given(states(), st.sampled_from(D.PREDICTIONS))
def test_x0_eps_from_output_reads_every_parameterisation(state, prediction):
    schedule, t, x0, eps, x_t = state
    output = D.training_target(x0, eps, t, schedule, prediction)
    got_x0, got_eps = D.x0_eps_from_output(output, x_t, t, schedule, prediction)
    torch.testing.assert_close(got_x0, x0, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(got_eps, eps, rtol=1e-8, atol=1e-9)


@FAST
@given(states(), st.sampled_from(D.PREDICTIONS), st.sampled_from([0.5, 1.0]))
def test_clipped_prediction_stays_consistent_with_x_t(state, prediction, clip):
    schedule, t, x0, eps, x_t = state
    output = D.training_target(3 * x0, eps, t, schedule, prediction)
    got_x0, got_eps = D.x0_eps_from_output(output, x_t, t, schedule, prediction, clip_x0=clip)
    assert float(got_x0.abs().max()) <= clip
    rebuilt = D.q_sample(got_x0, t, schedule, got_eps)
    torch.testing.assert_close(rebuilt, x_t, rtol=1e-8, atol=1e-9)


def test_unknown_prediction_or_variance_raises():
    x, t = torch.zeros(2, 3), torch.tensor([1, 2])
    with pytest.raises(ValueError):
        D.x0_eps_from_output(x, x, t, LINEAR, "score")
    with pytest.raises(ValueError):
        D.training_target(x, x, t, LINEAR, "score")
    with pytest.raises(ValueError):
        D.p_mean_variance(x, x, t, LINEAR, "eps", "medium")


# --- The reverse step ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_p_mean_is_eq_11_for_eps_prediction(name):
    schedule = SCHEDULES[name]
    T = schedule.T
    g = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(T, 2, generator=g, dtype=F64), torch.randn(T, 2, generator=g, dtype=F64)
    t = torch.arange(T)
    mean, var, log_var, _ = D.p_mean_variance(eps, x_t, t, schedule, "eps", "small")
    b = schedule.betas[:, None]
    ab = torch.tensor([alpha_bar_by_hand(schedule, i) for i in range(T)], dtype=F64)[:, None]
    eq11 = (x_t - b / (1 - ab).sqrt() * eps) / (1 - b).sqrt()
    torch.testing.assert_close(mean, eq11, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(var[:, 0], schedule.posterior_variance)
    torch.testing.assert_close(log_var[1:, 0], var[1:, 0].log())
    _, var_l, log_var_l, _ = D.p_mean_variance(eps, x_t, t, schedule, "eps", "large")
    torch.testing.assert_close(var_l[1:, 0], schedule.betas[1:])
    torch.testing.assert_close(var_l[0, 0], schedule.posterior_variance[1])  # β_1 replaced by β̃_2
    torch.testing.assert_close(log_var_l, var_l.log())


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_p_mean_is_posterior_mean_at_the_predicted_x0(prediction):
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(1000, 3, generator=g, dtype=F64), torch.randn(1000, 3, generator=g, dtype=F64)
    t = torch.arange(1000)
    x_t = D.q_sample(x0, t, LINEAR, eps)
    output = D.training_target(x0, eps, t, LINEAR, prediction)
    mean, _, _, pred_x0 = D.p_mean_variance(output, x_t, t, LINEAR, prediction)
    true_mean, _, _ = D.q_posterior_mean_variance(x0, x_t, t, LINEAR)
    torch.testing.assert_close(mean, true_mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pred_x0, x0, rtol=1e-8, atol=1e-9)


def test_p_sample_step_noise_scale_and_last_step():
    x_t, out = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    noise = torch.randn(3, 4, dtype=F64)
    t = torch.tensor([0, 5, 999])
    for variance in D.VARIANCES:
        mean, var, _, _ = D.p_mean_variance(out, x_t, t, LINEAR, "eps", variance)
        x_prev, _ = D.p_sample_step(out, x_t, t, LINEAR, noise, "eps", variance)
        torch.testing.assert_close(x_prev[0], mean[0])  # Alg. 2: z = 0 at the paper's t = 1
        torch.testing.assert_close(x_prev[1:], mean[1:] + var[1:].sqrt() * noise[1:])


def test_float32_in_float32_out():
    x, t = torch.randn(2, 3), torch.tensor([3, 700])
    assert D.q_sample(x, t, LINEAR, x).dtype == torch.float32
    assert D.p_sample_step(x, x, t, LINEAR, x)[0].dtype == torch.float32
    assert D.extract(LINEAR.betas, t, torch.zeros(2, 1, 1, dtype=torch.long)).dtype == torch.float32


# --- The reverse process recovers the data -------------------------------------------------------------


def two_points(x_t, ab):
    """E[x_0 | x_t] for x_0 = ±1 with probability 1/2: P(+1 | x_t) = sigmoid(2√ᾱ x_t / (1 − ᾱ))."""
    return torch.tanh(ab.sqrt() * x_t / (1 - ab))


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_reverse_process_recovers_two_point_mixture(prediction):
    n = 40_000
    x, _ = reverse_process(make_schedule("linear", 100), two_points, n, prediction, "small")
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs((x > 0).double().mean().item() - 0.5) < 5 * 0.5 / math.sqrt(n)
    assert ((x.abs() - 1).abs() < 0.05).double().mean().item() > 0.999


def test_reverse_process_recovers_gaussian_and_its_marginals():
    """Data N(m, 1): then q(x_{t−1} | x_t) is exactly N(μ̃_t(E[x_0 | x_t], x_t), β_t), so the "large" variance
    sampler is exact, and every x_t along the way is distributed as q(x_t) = N(√ᾱ_t m, 1)."""
    m, n = 0.5, 50_000
    schedule = make_schedule("linear", 100)

    def gaussian(x_t, ab):  # E[x_0 | x_t] for x_0 ~ N(m, 1), x_t | x_0 ~ N(√ᾱ x_0, 1 − ᾱ)
        return m + ab.sqrt() * (x_t - ab.sqrt() * m)

    x, kept = reverse_process(schedule, gaussian, n, "eps", "large", seed=3, record=(80, 50, 10))
    for sample, want_mean in [(x, m)] + [(kept[i], schedule.sqrt_alpha_bar[i].item() * m) for i in kept]:
        assert abs(sample.mean().item() - want_mean) < 5 / math.sqrt(n)
        assert abs(sample.var().item() - 1) < 5 * math.sqrt(2 / n)


# --- Training -------------------------------------------------------------------------------------------


def _batch(seed=0, shape=(6, 2, 3)):
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.tensor([0, 1, 50, 300, 700, 999])[: shape[0]]
    return x0, noise, t


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_training_loss_zero_for_exact_model(prediction, gamma):
    x0, noise, t = _batch()
    seen = {}

    def model(x_t, t_float):
        seen["x_t"], seen["t"] = x_t, t_float
        return D.training_target(x0, noise, t, LINEAR, prediction)

    loss = D.training_loss(model, x0, t, noise, LINEAR, prediction, gamma)
    assert loss.shape == (6,) and bool((loss == 0).all())
    assert seen["t"].dtype.is_floating_point and torch.equal(seen["t"], t.float())
    x_t = D.q_sample(x0, t, LINEAR, noise)
    if prediction == "edm":  # the network sees c_in(σ) x = x_t / √(ᾱ σ² + ᾱ σ_d²): unit variance for σ_d
        ab, sd = LINEAR.alpha_bar[t].float(), D.EDM_SIGMA_DATA
        x_t = x_t / (1 - ab + ab * sd**2).sqrt()[:, None, None]
    torch.testing.assert_close(seen["x_t"], x_t)


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_training_loss_of_zero_model(prediction):
    x0, noise, t = _batch()
    loss = D.training_loss(lambda x, s: torch.zeros_like(x), x0, t, noise, LINEAR, prediction)
    target = D.training_target(x0, noise, t, LINEAR, prediction)
    torch.testing.assert_close(loss, target.pow(2).flatten(1).mean(1))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_min_snr_weights(name):
    schedule = SCHEDULES[name]
    t = torch.arange(schedule.T)
    ab = torch.tensor([alpha_bar_by_hand(schedule, i) for i in range(schedule.T)], dtype=F64)
    snr = ab / (1 - ab)
    gamma = 5.0
    want = {
        "eps": snr.clamp(max=gamma) / snr,
        "x0": snr.clamp(max=gamma),
        "v": snr.clamp(max=gamma) / (snr + 1),
        # EDM's F-loss is the x_0-loss divided by c_out² = σ² σ_d² / (σ² + σ_d²), with σ² = 1 / SNR.
        "edm": snr.clamp(max=gamma) * D.EDM_SIGMA_DATA**2 / (1 + snr * D.EDM_SIGMA_DATA**2),
    }
    for prediction in D.PREDICTIONS:
        w = D.min_snr_weight(t, schedule, prediction, gamma)
        assert w.shape == (schedule.T,) and w.dtype == torch.float32
        torch.testing.assert_close(w, want[prediction].float(), rtol=1e-5, atol=1e-7)
        assert torch.equal(D.min_snr_weight(t, schedule, prediction, None), torch.ones(schedule.T))
    assert bool((D.min_snr_weight(t, schedule, "eps", gamma) <= 1).all())


@pytest.mark.parametrize("gamma", [1.0, 5.0, 1e9])
def test_min_snr_loss_is_the_same_x0_loss_in_every_parameterisation(gamma):
    """‖ε − ε̂‖² = SNR ‖x_0 − x̂_0‖² and ‖v − v̂‖² = (SNR + 1) ‖x_0 − x̂_0‖², so with the Min-SNR weights all
    three losses equal min(SNR, γ) ‖x_0 − x̂_0‖² (Hang et al. 2023, eq. 8 onwards)."""
    x0, noise, t = _batch(seed=1)
    x0, noise = x0.double(), noise.double()
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    x_t = D.q_sample(x0, t, LINEAR, noise)
    eps_hat = D.predict_eps_from_x0(x_t, t, x0_hat, LINEAR)
    skip, out, _ = (D.extract(c, t, x_t) for c in D.edm_preconditioning(LINEAR))
    outputs = {
        "x0": x0_hat,
        "eps": eps_hat,
        "v": D.v_from_x0_eps(x0_hat, eps_hat, t, LINEAR),
        "edm": (x0_hat - skip * x_t) / out,
    }
    want = LINEAR.snr[t].clamp(max=gamma) * (x0 - x0_hat).pow(2).flatten(1).mean(1)
    for prediction, output in outputs.items():
        loss = D.training_loss(lambda x, s, o=output: o, x0, t, noise, LINEAR, prediction, gamma)
        torch.testing.assert_close(loss.double(), want, rtol=2e-4, atol=1e-7)


# --- The variational bound ------------------------------------------------------------------------------


def test_normal_kl_identical_is_zero():
    m, lv = torch.randn(10, dtype=F64), torch.randn(10, dtype=F64)
    torch.testing.assert_close(D.normal_kl(m, lv, m, lv), torch.zeros(10, dtype=F64), atol=1e-14, rtol=0)


@FAST
@given(st.floats(-3, 3), st.floats(-3, 3), st.floats(-2, 2), st.floats(-2, 2))
def test_normal_kl_closed_form(m1, m2, log_s1, log_s2):
    got = D.normal_kl(*(torch.tensor(v, dtype=F64) for v in (m1, 2 * log_s1, m2, 2 * log_s2))).item()
    s1, s2 = math.exp(log_s1), math.exp(log_s2)
    want = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert got >= -1e-12


def test_normal_kl_by_quadrature():
    m1, s1, m2, s2 = 0.3, 0.7, -0.4, 1.3
    p, q = stats.norm(m1, s1), stats.norm(m2, s2)
    want, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -12, 12)
    got = D.normal_kl(*(torch.tensor(v, dtype=F64) for v in (m1, 2 * math.log(s1), m2, 2 * math.log(s2))))
    assert got.item() == pytest.approx(want, rel=1e-8)


@pytest.mark.parametrize("mean", [-1.3, -1.0, -0.4, 0.0, 0.0123, 0.77, 1.0])
@pytest.mark.parametrize("scale", [1e-3, 0.02, 0.3, 3.0])
def test_discretized_likelihood_sums_to_one(mean, scale):
    centres = torch.linspace(-1, 1, 256, dtype=F64)
    log_p = D.discretized_gaussian_log_likelihood(
        centres, torch.full_like(centres, mean), torch.full_like(centres, math.log(scale))
    )
    p = log_p.exp()
    assert bool((log_p <= 1e-12).all())
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    # Against the exact Gaussian CDF: the tanh approximation of Φ is good to a few 1e-4.
    edges = np.concatenate([[-np.inf], (centres[:-1] + 1 / 255).numpy(), [np.inf]])
    exact = np.diff(stats.norm.cdf(edges, loc=mean, scale=scale))
    np.testing.assert_allclose(p.numpy(), exact, atol=1e-3)


def test_prior_kl_small_for_linear_T1000():
    x0 = torch.rand(4, 3, 8, 8, dtype=F64) * 2 - 1
    kl = D.prior_kl(x0, LINEAR)
    assert kl.shape == (4,)
    ab = alpha_bar_by_hand(LINEAR, 999)
    want = (0.5 * (-1 - math.log(1 - ab) + (1 - ab) + ab * x0**2)).flatten(1).sum(1)
    torch.testing.assert_close(kl, want, rtol=1e-6, atol=1e-12)
    assert bool((kl / x0[0].numel() < 1e-4).all()) and bool((kl >= 0).all())


def _uint8_images(seed=0, shape=(3, 1, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).double() / 255 * 2 - 1


@pytest.mark.parametrize("name, kwargs", [("cosine", {}), ("linear", {"beta_end": 0.005})])
def test_bits_per_dim_tiny_schedule(name, kwargs):
    schedule = make_schedule(name, 10, **kwargs)
    x0 = _uint8_images()
    perfect = D.bits_per_dim(
        lambda x_t, t: x0, x0, schedule, "x0", generator=torch.Generator().manual_seed(0)
    )
    assert set(perfect) == {"total", "prior", "decoder", "terms"}
    assert perfect["terms"].shape == (3, 10)
    for key in ("total", "prior", "decoder"):
        assert perfect[key].shape == (3,)
        assert bool(torch.isfinite(perfect[key]).all()) and bool((perfect[key] > 0).all()), key
    torch.testing.assert_close(perfect["total"], perfect["terms"].sum(1) + perfect["prior"])
    torch.testing.assert_close(perfect["decoder"], perfect["terms"][:, 0])
    # An exact x_0-predictor makes every KL term L_{t−1}, t > 1, vanish.
    torch.testing.assert_close(perfect["terms"][:, 1:], torch.zeros(3, 9, dtype=F64), atol=1e-9, rtol=0)
    blind = D.bits_per_dim(lambda x_t, t: torch.zeros_like(x_t), x0, schedule, "eps")
    assert bool(torch.isfinite(blind["total"]).all()) and bool((blind["total"] > perfect["total"]).all())
    continuous = D.bits_per_dim(lambda x_t, t: x0, x0, schedule, "x0", discrete=False)
    assert bool(torch.isfinite(continuous["total"]).all())


def test_vlb_term_is_the_posterior_kl():
    x0 = _uint8_images(1)
    g = torch.Generator().manual_seed(4)
    t = torch.tensor([0, 3, 700])
    x_t = D.q_sample(x0, t, LINEAR, torch.randn(x0.shape, generator=g, dtype=F64))
    out = torch.randn(x0.shape, generator=g, dtype=F64)
    got = D.vlb_term(out, x0, x_t, t, LINEAR)
    true_mean, _, true_log_var = D.q_posterior_mean_variance(x0, x_t, t, LINEAR)
    mean, _, log_var, _ = D.p_mean_variance(out, x_t, t, LINEAR)
    kl = D.normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).sum(1)
    torch.testing.assert_close(got[1:], kl[1:])
    nll = -D.discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).sum(1)
    torch.testing.assert_close(got[0], nll[0])
    assert bool((got > 0).all())


def test_vlb_term_continuous_decoder_is_gaussian_nll():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(4, 2, generator=g, dtype=F64)
    t = torch.zeros(4, dtype=torch.long)
    x_t = D.q_sample(x0, t, LINEAR, torch.randn(4, 2, generator=g, dtype=F64))
    out = torch.randn(4, 2, generator=g, dtype=F64)
    for variance in D.VARIANCES:
        got = D.vlb_term(out, x0, x_t, t, LINEAR, "eps", variance, discrete=False)
        # The decoder's variance is exp(log σ²): β̃_1 = 0 is replaced by β̃_2 in the clipped log-variance.
        mean, _, log_var, _ = D.p_mean_variance(out, x_t, t, LINEAR, "eps", variance)
        sd = (0.5 * log_var).exp().expand_as(mean).numpy()
        want = -stats.norm.logpdf(x0.numpy(), mean.numpy(), sd).sum(1)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
