"""The probability-flow ODE's log-likelihood against closed forms: for Gaussian data and its exact denoiser
the flow is linear, so the density it assigns is known exactly."""

import math

import numpy as np
import pytest
import scipy.integrate
import torch

from ddpm.diffusion import EDM_SIGMA_DATA
from ddpm.likelihood import ContinuousVP, dequantize, nll_bits_per_dim, ode_log_likelihood
from ddpm.schedules import make_schedule


def continuous_gaussian_model(schedule, m, cov, prediction="eps"):
    """The exact network for x_0 ~ N(m, Σ) in the continuous reading of the schedule: asked at fractional
    step index τ, it uses ᾱ(t) at t = (τ + 1) / T. E[x_0 | x_t] = m + a Σ (a² Σ + b² I)⁻¹ (x_t − a m)."""
    dims, vp = len(m), ContinuousVP.from_schedule(schedule)

    def model(x, index):
        ab = math.exp(vp.log_alpha_bar((index[0].item() + 1) / schedule.T))
        a, b = math.sqrt(ab), math.sqrt(1 - ab)
        var = 1 - ab + ab * EDM_SIGMA_DATA**2  # EDM's network is given x_t / √var (c_in)
        x = x * math.sqrt(var) if prediction == "edm" else x
        gain = a * cov @ torch.linalg.inv(ab * cov + (1 - ab) * torch.eye(dims, dtype=cov.dtype))
        x0 = m + (x - a * m) @ gain.T
        eps = (x - a * x0) / b
        if prediction == "edm":  # F = (x_0 − c_skip x) / c_out, in x_t (Karras et al. 2022, eq. 8)
            return (x0 - EDM_SIGMA_DATA**2 * a / var * x) / (EDM_SIGMA_DATA * b / math.sqrt(var))
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[prediction]

    return model


def flow_log_likelihood(schedule, m, cov, x):
    """What the exact ODE gives: with C_t = (ᾱ(t) Σ + (1 − ᾱ(t)) I)^½ the flow keeps C_t⁻¹ (x_t − √ᾱ(t) m)
    constant, so x(1) = √ᾱ(1) m + C_1 C_ε⁻¹ (x − √ᾱ(ε) m) and
    log p(x) = log N(x(1); 0, I) + log det(C_1 C_ε⁻¹)."""
    eye, vp = torch.eye(len(m), dtype=cov.dtype), ContinuousVP.from_schedule(schedule)

    def root(t):
        ab = math.exp(vp.log_alpha_bar(t))
        vals, vecs = torch.linalg.eigh(ab * cov + (1 - ab) * eye)
        return math.sqrt(ab), vecs @ torch.diag(vals.sqrt()) @ vecs.T

    a0, c0 = root(1 / schedule.T)
    a1, c1 = root(1.0)
    jac = c1 @ torch.linalg.inv(c0)
    z = a1 * m + (x - a0 * m) @ jac.T
    prior = -0.5 * (len(m) * math.log(2 * math.pi) + z.pow(2).sum(1))
    return prior + torch.logdet(jac)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_the_continuous_schedule_passes_through_the_discrete_one(name):
    schedule = make_schedule(name, 50)
    vp = ContinuousVP.from_schedule(schedule)
    for i in (0, 7, 49):
        t = (i + 1) / 50
        assert vp.log_alpha_bar(t) == pytest.approx(math.log(schedule.alpha_bar[i]), rel=1e-12)
        assert vp.step_index(t) == pytest.approx(i)
    assert vp.log_alpha_bar(0.0) == 0.0
    # β(t) = −d log ᾱ / dt, positive where the ODE runs (from t = 1/T), and its integral over [0, t_i] is
    # −log ᾱ_i
    t = np.linspace(0, 0.4, 4001)
    beta = np.array([vp.beta(s) for s in t])
    assert (beta[t >= 1 / 50] > 0).all()
    assert scipy.integrate.trapezoid(beta, t) == pytest.approx(-math.log(schedule.alpha_bar[19]), rel=1e-5)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        ContinuousVP.from_schedule(make_schedule(name, 50, zero_terminal_snr=True))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "edm"])
def test_ode_likelihood_of_gaussian_data_is_the_closed_form(prediction):
    """Independent dimensions: ∂f/∂x is diagonal, so a Rademacher probe gives the trace exactly and only the
    solver's error is left: a few 1e-3 nats at the default tolerances (1e-5), 1e-5 at 1e-9."""
    schedule = make_schedule("linear", 100)
    m = torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)
    cov = torch.diag(torch.tensor([0.25, 0.04, 0.5], dtype=torch.float64))
    x = m + torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5
    model = continuous_gaussian_model(schedule, m, cov, prediction)
    want = flow_log_likelihood(schedule, m, cov, x)
    for tol, error in ((1e-5, 5e-3), (1e-9, 2e-5)):
        g = torch.Generator().manual_seed(1)
        got = ode_log_likelihood(model, x, schedule, prediction, rtol=tol, atol=tol, generator=g)
        assert torch.allclose(got["log_likelihood"], want, atol=error), (tol, got["log_likelihood"], want)
    assert got["nfe"] > 100 and torch.allclose(got["prior"] + got["delta"], got["log_likelihood"])


def test_hutchinson_is_unbiased_and_exact_trace_is_exact_for_correlated_data():
    """Correlated 2-D data: ∂f/∂x is not diagonal, so each probe's estimate is off by its own amount; the
    exact trace is exact, and the mean of many Gaussian-probe estimates is within its standard error."""
    schedule = make_schedule("linear", 100)
    m = torch.tensor([0.1, -0.3], dtype=torch.float64)
    cov = torch.tensor([[0.3, 0.25], [0.25, 0.3]], dtype=torch.float64)
    model = continuous_gaussian_model(schedule, m, cov)
    x = torch.tensor([[0.4, 0.1]], dtype=torch.float64)
    want = flow_log_likelihood(schedule, m, cov, x).item()
    exact = ode_log_likelihood(model, x, schedule, trace="exact", rtol=1e-9, atol=1e-9)
    assert exact["log_likelihood"].item() == pytest.approx(want, abs=2e-5)
    g = torch.Generator().manual_seed(2)
    many = ode_log_likelihood(model, x.expand(1000, 2), schedule, trace="gaussian", generator=g)
    estimates = many["log_likelihood"]
    se = estimates.std().item() / math.sqrt(len(estimates))
    assert estimates.std() > 0.1  # the estimator's own noise
    assert abs(estimates.mean().item() - want) < 4 * se, (estimates.mean().item(), want, se)


def test_bits_per_dim_of_uniform_noise_on_the_pixel_bins_is_8():
    """The density uniform on [−1 − 1/255, 1 + 1/255]^D (every 8-bit value equally likely) is 8 bits per
    pixel: the scaling term takes a density of [−1, 1] values to one of 8-bit data."""
    dims = 784
    log_p = torch.tensor([-dims * math.log(2 + 2 / 255)])
    assert nll_bits_per_dim(log_p, dims).item() == pytest.approx(8.0, abs=1e-12)
    assert nll_bits_per_dim(log_p, dims, bins=None).item() == pytest.approx(math.log2(2 + 2 / 255))
    x = torch.linspace(-1, 1, 256).reshape(1, 256)
    y = dequantize(x.expand(100, 256), torch.Generator().manual_seed(0))
    assert ((y - x).abs() <= 1 / 255).all() and (y - x).abs().max() > 0.9 / 255
