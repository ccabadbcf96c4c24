"""Samplers: the ancestral sampler is Algorithm 2 step by step, for every parameterisation."""

import pytest
import torch

from ddpm import diffusion
from ddpm.samplers import (
    KARRAS_RHO,
    KARRAS_SIGMA_MAX,
    KARRAS_SIGMA_MIN,
    SAMPLERS,
    SPACINGS,
    autoguidance,
    classifier_free_guidance,
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    dpmpp_2m_sde_sample,
    full_timesteps,
    guidance_interval,
    heun_churn_sample,
    heun_sample,
    karras_sigmas,
    make_denoiser,
    make_timesteps,
    network_evaluations,
    sampler_options,
    steps_within,
    unipc_sample,
)
from ddpm.schedules import make_schedule


def fake_model(x, t):
    """Any smooth function of (x, t) will do: the sampler must not care what the network is."""
    return torch.tanh(x * 0.7 + 0.01 * t[:, None])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddpm_sampler_equals_algorithm_2(prediction, variance, clip):
    schedule = make_schedule("linear", 50)
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    denoise = make_denoiser(fake_model, schedule, prediction, clip)
    got = ddpm_sample(denoise, x_T, schedule, variance=variance, generator=torch.Generator().manual_seed(1))

    g = torch.Generator().manual_seed(1)
    x = x_T
    for t in full_timesteps(schedule):
        tt = torch.full((8,), t, dtype=torch.long)
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype) if t > 0 else torch.zeros_like(x)
        x, _ = diffusion.p_sample_step(
            fake_model(x, tt.float()), x, tt, schedule, noise, prediction, variance, clip
        )
    assert torch.allclose(got, x, atol=1e-10)


def test_callback_sees_every_step():
    schedule = make_schedule("cosine", 30)
    seen = []
    denoise = make_denoiser(fake_model, schedule)
    ddpm_sample(denoise, torch.randn(4, 2), schedule, callback=lambda i, t, x, x0: seen.append(t))
    assert seen == list(range(29, -1, -1))


def test_subset_of_steps_runs_and_ends_deterministic():
    schedule = make_schedule("linear", 100)
    denoise = make_denoiser(fake_model, schedule, "eps", 1.0)
    x = ddpm_sample(
        denoise, torch.randn(16, 2), schedule, [99, 66, 33, 0], generator=torch.Generator().manual_seed(0)
    )
    assert x.shape == (16, 2) and torch.isfinite(x).all() and x.abs().max() <= 1.0 + 1e-6


def conditional_model(x, t, y):
    """A fake class-conditional network; label 3 is the "no label" index."""
    return torch.tanh(x * 0.5 + 0.1 * y[:, None].float() - 0.01 * t[:, None])


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_classifier_free_guidance_is_eq_6_in_one_forward_pass(w):
    calls = []

    def counted(x, t, y):
        calls.append(len(x))
        return conditional_model(x, t, y)

    x, t = torch.randn(6, 2), torch.full((6,), 7.0)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    got = classifier_free_guidance(counted, y, 3, w)(x, t)
    cond, uncond = conditional_model(x, t, y), conditional_model(x, t, torch.full_like(y, 3))
    assert torch.allclose(got, (1 + w) * cond - w * uncond, atol=1e-6)
    assert calls == [12]  # conditional and unconditional halves batched together
    if w == 0:
        assert torch.allclose(got, cond)


@pytest.mark.parametrize("w", [0.0, 0.7, 2.0])
def test_autoguidance_extrapolates_away_from_the_weaker_model(w):
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.full((6,), 7.0, dtype=torch.float64)
    good = lambda a, b: torch.tanh(a * 0.5 - 0.01 * b[:, None])  # noqa: E731
    bad = lambda a, b: 0.8 * torch.tanh(a * 0.4)  # noqa: E731
    got = autoguidance(good, bad, w)(x, t)
    assert torch.allclose(got, (1 + w) * good(x, t) - w * bad(x, t), atol=1e-12)
    assert torch.equal(autoguidance(good, good, w)(x, t), good(x, t))  # a guide equal to the model: no change


def test_guidance_interval_guides_only_inside_sigma_lo_sigma_hi():
    schedule = make_schedule("cosine", 100)
    sigma = schedule.sqrt_recipm1_alpha_bar
    lo, hi = float(sigma[30]), float(sigma[70])  # guided at t = 31…70: σ_lo excluded, σ_hi included
    calls = []

    def guided(x, t):
        calls.append("guided")
        return x + 1

    def plain(x, t):
        calls.append("plain")
        return x

    fn = guidance_interval(guided, plain, schedule, lo, hi)
    x = torch.zeros(3, 2)
    for step, expected in [(30, 0.0), (31, 1.0), (70, 1.0), (71, 0.0), (99, 0.0)]:
        calls.clear()
        out = fn(x, torch.full((3,), float(step)))
        assert torch.equal(out, torch.full_like(x, expected))
        assert calls == ["guided" if expected else "plain"]  # the other pass is not run
    mixed = fn(x, torch.tensor([10.0, 50.0, 90.0]))  # one batch across the edges: each row its own
    assert mixed[:, 0].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="0 ≤ σ_lo < σ_hi"):
        guidance_interval(guided, plain, schedule, 2.0, 1.0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_guiding_the_raw_output_guides_eps(prediction):
    """ε̂ is affine in the network output with weights summing to one, so eq. 6 may act on x0 or v too."""
    schedule = make_schedule("cosine", 40)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 17, dtype=torch.long)
    y, w = torch.tensor([0, 1, 2, 1, 0]), 2.0
    guided = make_denoiser(classifier_free_guidance(conditional_model, y, 3, w), schedule, prediction)
    _, eps = guided(x, t)
    _, eps_c = make_denoiser(lambda a, b: conditional_model(a, b, y), schedule, prediction)(x, t)
    null = torch.full_like(y, 3)
    _, eps_u = make_denoiser(lambda a, b: conditional_model(a, b, null), schedule, prediction)(x, t)
    assert torch.allclose(eps, (1 + w) * eps_c - w * eps_u, atol=1e-9)


# --- DDIM and DPM-Solver++(2M) ------------------------------------------------------------------------------


def gaussian_model(schedule, m, s, prediction):
    """The exact network for data x_0 ~ N(m, s²) (s = 0: the single point m), in any parameterisation.

    With x_t = a x_0 + b ε (a = √ᾱ_t, b = √(1 − ᾱ_t)), E[x_0 | x_t] = m + a s² / (a² s² + b²) · (x_t − a m).
    """

    def model(x, t):
        i = t.long()
        a = schedule.sqrt_alpha_bar[i].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        b = schedule.sqrt_one_minus_alpha_bar[i].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        x0 = m + a * s**2 / (a**2 * s**2 + b**2) * (x - a * m)
        eps = (x - a * x0) / b
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[prediction]

    return model


def standard_normal(n, seed=0):
    """n × 1 draws standardised to mean 0 and std 1 exactly: an ODE sampler's output is then exact in mean
    and std up to its discretisation error, with no Monte Carlo error."""
    z = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return (z - z.mean()) / z.std()


def test_ddim_eta_0_is_deterministic_and_draws_no_noise():
    schedule = make_schedule("linear", 100)
    denoise = make_denoiser(fake_model, schedule, "v")
    x_T = torch.randn(8, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    a = ddim_sample(denoise, x_T, schedule, make_timesteps(schedule, 10), generator=g)
    b = ddim_sample(denoise, x_T, schedule, make_timesteps(schedule, 10), generator=torch.Generator())
    assert torch.equal(a, b)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state())


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("timesteps", [None, [99, 66, 33, 0], [90, 50, 20, 5]])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddim_eta_1_is_ddpm_with_small_variance(prediction, timesteps, clip):
    """Eq. 16 with η = 1: σ² = (1 − ᾱ_s)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_s) = β̃ (s = t − 1, or its respaced form),
    and √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ is then the posterior mean μ̃ of eq. 7; the noise draws line up."""
    schedule = make_schedule("linear", 100)
    denoise = make_denoiser(fake_model, schedule, prediction, clip)
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ddim = ddim_sample(denoise, x_T, schedule, timesteps, eta=1.0, generator=torch.Generator().manual_seed(1))
    ddpm = ddpm_sample(
        denoise, x_T, schedule, timesteps, variance="small", generator=torch.Generator().manual_seed(1)
    )
    assert torch.allclose(ddim, ddpm, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m", "heun", "unipc"])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ode_samplers_follow_the_exact_path_to_a_single_point(sampler, spacing):
    """Data = one point x*: the ideal x̂_0 is x* and ε̂ = (x_T − √ᾱ_T x*)/√(1 − ᾱ_T) stays constant, so every
    state is √ᾱ_s x* + √(1 − ᾱ_s) ε̂ (DPM-Solver++'s extrapolation of a constant is that constant)."""
    schedule = make_schedule("cosine", 200)
    x_star = torch.tensor([0.3, -0.7], dtype=torch.float64)
    denoise = make_denoiser(gaussian_model(schedule, x_star, 0.0, "eps"), schedule, "eps")
    timesteps = make_timesteps(schedule, 12, spacing)
    x_T = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ab = schedule.alpha_bar
    eps = (x_T - ab[timesteps[0]].sqrt() * x_star) / (1 - ab[timesteps[0]]).sqrt()
    states = []
    x = SAMPLERS[sampler](denoise, x_T, schedule, timesteps, callback=lambda i, t, x, x0: states.append(x))
    for s, state in zip(timesteps[1:], states):
        assert torch.allclose(state, ab[s].sqrt() * x_star + (1 - ab[s]).sqrt() * eps, atol=1e-10)
    assert torch.allclose(x, x_star.expand_as(x), atol=1e-10)


def test_dpmpp_2m_first_step_is_a_ddim_step_and_the_last_returns_x0():
    schedule = make_schedule("linear", 100)
    denoise = make_denoiser(fake_model, schedule, "eps")
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = make_timesteps(schedule, 8, "trailing")
    dpm, ddim = [], []
    out = dpmpp_2m_sample(denoise, x_T, schedule, timesteps, callback=lambda i, t, x, x0: dpm.append((x, x0)))
    ddim_sample(denoise, x_T, schedule, timesteps, callback=lambda i, t, x, x0: ddim.append(x))
    assert torch.allclose(dpm[0][0], ddim[0], atol=1e-12)  # DPM-Solver++1 = DDIM (η = 0)
    assert not torch.allclose(dpm[1][0], ddim[1], atol=1e-4)  # then the second-order correction
    assert torch.equal(out, dpm[-1][1])  # the step into σ = 0 returns x̂_0 of the last evaluation


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_dpmpp_2m_sde_first_step_is_a_ddpm_step_then_second_order(prediction):
    """SDE-DPM-Solver++'s step with D = x̂_0 is the DDPM posterior step with β̃, noise for noise; the
    multistep correction then changes only D; the step into σ = 0 returns x̂_0."""
    schedule = make_schedule("cosine", 100)
    denoise = make_denoiser(fake_model, schedule, prediction)
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = make_timesteps(schedule, 8, "trailing")
    sde, ddpm = [], []
    out = dpmpp_2m_sde_sample(
        denoise,
        x_T,
        schedule,
        timesteps,
        generator=torch.Generator().manual_seed(1),
        callback=lambda i, t, x, x0: sde.append((x, x0)),
    )
    ddpm_sample(
        denoise,
        x_T,
        schedule,
        timesteps,
        generator=torch.Generator().manual_seed(1),
        callback=lambda i, t, x, x0: ddpm.append(x),
    )
    assert torch.allclose(sde[0][0], ddpm[0], atol=1e-12)
    assert not torch.allclose(sde[1][0], ddpm[1], atol=1e-4)
    assert torch.equal(out, sde[-1][1])
    # two steps: the first is first order and the second returns x̂_0, so the whole run is DDPM's
    two = timesteps[:1] + timesteps[-1:]
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert torch.allclose(
        dpmpp_2m_sde_sample(denoise, x_T, schedule, two, generator=g()),
        ddpm_sample(denoise, x_T, schedule, two, generator=g()),
        atol=1e-12,
    )


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_sampler_reads_every_parameterisation(sampler, prediction):
    """One exact model written as ε, x_0 or v gives the same samples (and the same noise) with any sampler."""
    schedule = make_schedule("cosine", 100)
    x_T = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = make_timesteps(schedule, 15, "trailing")

    def run(pred):
        denoise = make_denoiser(gaussian_model(schedule, 0.5, 0.3, pred), schedule, pred)
        return SAMPLERS[sampler](
            denoise, x_T, schedule, timesteps, generator=torch.Generator().manual_seed(1)
        )

    assert torch.allclose(run(prediction), run("eps"), atol=1e-9)
    out = SAMPLERS[sampler](make_denoiser(fake_model, schedule, prediction), x_T, schedule, timesteps)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "sampler, tol",
    [
        ("ddpm", 0.05),
        ("ddim", 0.02),
        ("dpmpp2m", 0.002),
        ("dpmpp2m-sde", 0.02),
        ("heun", 0.002),
        ("heun-churn", 0.01),
        ("unipc", 0.002),
    ],
)
def test_samplers_reproduce_gaussian_data(sampler, tol):
    """Data N(m, s²) with its exact denoiser: 20k samples, 50 steps uniform in log-SNR. The probability-flow
    ODE maps the prior to the data exactly, so DDIM and DPM-Solver++ miss only by their discretisation
    error (first order for DDIM, second for DPM-Solver++); the ancestral sampler also by Monte Carlo error."""
    m, s = 0.5, 0.3
    schedule = make_schedule("linear", 1000)
    denoise = make_denoiser(gaussian_model(schedule, m, s, "eps"), schedule, "eps")
    timesteps = make_timesteps(schedule, 50, "logsnr")
    x = SAMPLERS[sampler](
        denoise, standard_normal(20_000), schedule, timesteps, generator=torch.Generator().manual_seed(1)
    )
    assert abs(x.mean().item() - m) < 0.01
    assert abs(x.std().item() - s) < tol


def test_dpmpp_2m_is_second_order_and_ddim_first_order():
    """For Gaussian data the ODE keeps (x_t − √ᾱ_t m) / √(ᾱ_t s² + 1 − ᾱ_t) constant, which gives the exact
    end point; doubling the steps divides DDIM's error by about 2 and DPM-Solver++(2M)'s by about 4."""
    m, s = 0.5, 0.3
    schedule = make_schedule("linear", 1000)
    denoise = make_denoiser(gaussian_model(schedule, m, s, "eps"), schedule, "eps")
    x_T = standard_normal(100)
    ab = schedule.alpha_bar[-1]
    exact = m + s * (x_T - ab.sqrt() * m) / (ab * s**2 + 1 - ab).sqrt()

    def error(sampler, steps):
        x = SAMPLERS[sampler](denoise, x_T, schedule, make_timesteps(schedule, steps, "logsnr"))
        return (x - exact).abs().max().item()

    assert 1.7 < error("ddim", 20) / error("ddim", 40) < 2.3
    assert error("dpmpp2m", 20) / error("dpmpp2m", 40) > 3.5


def exact_ode_end(schedule, m, s, x_T, t_last):
    """For data N(m, s²): the probability-flow ODE from x_T at step T − 1 down to step t_last, exactly, then
    x̂_0 there, which is what every sampler's last step returns: the reference free of that last step."""
    ab = schedule.alpha_bar
    z = (x_T - ab[-1].sqrt() * m) / (ab[-1] * s**2 + 1 - ab[-1]).sqrt()  # constant along the ODE
    a, var = ab[t_last].sqrt(), ab[t_last] * s**2 + 1 - ab[t_last]
    x = a * m + var.sqrt() * z
    return m + a * s**2 / var * (x - a * m)


def test_heun_is_second_order_and_unipc_third():
    """Doubling the steps divides Heun's error by about 4 (Karras et al. 2022, sec. 3) and UniPC's by about
    8: UniP-2 with the corrector UniC is third order (Zhao et al. 2023, sec. 3); DDIM's by 2, for scale.
    Measured against the exact ODE down to the last visited step, so the last step's x̂_0 adds nothing."""
    m, s = 0.5, 0.3
    schedule = make_schedule("linear", 1000)
    denoise = make_denoiser(gaussian_model(schedule, m, s, "eps"), schedule, "eps")
    x_T = standard_normal(100)

    def error(sampler, steps):
        timesteps = make_timesteps(schedule, steps, "logsnr")
        x = SAMPLERS[sampler](denoise, x_T, schedule, timesteps)
        return (x - exact_ode_end(schedule, m, s, x_T, timesteps[-1])).abs().max().item()

    assert 1.8 < error("ddim", 20) / error("ddim", 40) < 2.2
    assert 3.5 < error("heun", 20) / error("heun", 40) < 5.5
    assert 6.5 < error("unipc", 20) / error("unipc", 40) < 10
    assert error("unipc", 40) < error("dpmpp2m", 40) / 2  # the corrector, at no extra evaluation


def test_heun_counts_two_evaluations_a_step_and_steps_count_evaluations():
    schedule = make_schedule("cosine", 100)
    calls = []
    denoise = make_denoiser(lambda x, t: calls.append(int(t[0])) or fake_model(x, t), schedule)
    timesteps = make_timesteps(schedule, 5, "uniform")
    heun_sample(denoise, torch.randn(3, 2), schedule, timesteps)
    assert calls == [80, 60, 60, 40, 40, 20, 20, 0, 0]  # Euler step, correction at its end; last: Euler
    calls.clear()  # trailing starts at σ_99 ≈ 10² > HEUN_SIGMA_MAX: that step is Euler's alone
    heun_sample(denoise, torch.randn(3, 2), schedule, make_timesteps(schedule, 5, "trailing"))
    assert calls == [99, 79, 59, 59, 39, 39, 19, 19]
    assert network_evaluations("heun", 5) == 9 and network_evaluations("unipc", 5) == 5
    assert [steps_within("heun", k) for k in (1, 2, 3, 9, 10)] == [1, 1, 2, 5, 5]  # never more than K
    assert all(steps_within(name, 20) == 20 for name in ("ddpm", "ddim", "dpmpp2m", "unipc"))


def test_unipc_first_step_is_a_ddim_step_then_corrected():
    """UniP-1 is DPM-Solver++1, DDIM's step; once the network has seen that state, UniC moves it, and the
    last step returns x̂_0."""
    schedule = make_schedule("linear", 100)
    denoise = make_denoiser(fake_model, schedule, "v")
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = make_timesteps(schedule, 8, "trailing")
    uni, ddim = [], []
    out = unipc_sample(denoise, x_T, schedule, timesteps, callback=lambda i, t, x, x0: uni.append((x, x0)))
    ddim_sample(denoise, x_T, schedule, timesteps, callback=lambda i, t, x, x0: ddim.append(x))
    assert torch.allclose(uni[0][0], ddim[0], atol=1e-12)
    assert not torch.allclose(uni[1][0], ddim[1], atol=1e-4)
    assert torch.equal(out, uni[-1][1])


def test_heun_churn_without_churn_is_algorithm_1_and_draws_no_noise():
    schedule = make_schedule("linear", 200)
    denoise = make_denoiser(fake_model, schedule, "eps")
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = make_timesteps(schedule, 10, "trailing")
    g = torch.Generator().manual_seed(3)
    churned = heun_churn_sample(denoise, x_T, schedule, timesteps, s_churn=0.0, generator=g)
    assert torch.equal(churned, heun_sample(denoise, x_T, schedule, timesteps))
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state())


def test_heun_churn_raises_the_noise_to_a_trained_step():
    """Algorithm 2, lines 4–6, on our steps: γ = min(S_churn / n, √2 − 1) raises σ_i to the step t̂ whose σ
    is nearest (1 + γ) σ_i, with fresh noise √(σ̂² − σ²) S_noise z in x / √ᾱ; then Heun's step from t̂.
    S_tmax lets the first step (σ ≈ 160) go unchurned; above HEUN_SIGMA_MAX it is Euler's alone."""
    schedule = make_schedule("linear", 1000)
    calls = []
    denoise = make_denoiser(lambda x, t: calls.append(int(t[0])) or fake_model(x, t), schedule, "eps")
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = make_timesteps(schedule, 5, "logsnr")
    sigma = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()
    t0, t1, t2 = timesteps[:3]
    states = []
    options = {"s_churn": 1.0, "s_tmin": 0.0, "s_tmax": float(sigma[t1]), "s_noise": 1.01}  # γ = 0.2
    heun_churn_sample(
        denoise,
        x_T,
        schedule,
        timesteps,
        **options,
        generator=torch.Generator().manual_seed(1),
        callback=lambda i, t, x, x0: states.append(x),
    )
    t_hat = int((sigma - 1.2 * sigma[t1]).abs().argmin())
    assert t1 < t_hat < t0 and calls[:3] == [t0, t_hat, t2]  # evaluated where the network was trained
    z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(1), dtype=x_T.dtype)
    ab = schedule.alpha_bar
    x_hat = ab[t_hat].sqrt() * (
        states[0] / ab[t1].sqrt() + (sigma[t_hat] ** 2 - sigma[t1] ** 2).sqrt() * 1.01 * z
    )
    heun = []
    heun_sample(
        denoise, x_hat, schedule, [t_hat, *timesteps[2:]], callback=lambda i, t, x, x0: heun.append(x)
    )
    assert torch.allclose(states[1], heun[0], atol=1e-12)


def test_heun_churn_caps_gamma_at_sqrt2_minus_1():
    """Algorithm 2, line 4: with S_churn / n above √2 − 1, γ is √2 − 1, so σ̂ = √2 σ_i (the paper's cap: the
    noise added never exceeds what is already there)."""
    schedule = make_schedule("linear", 1000)
    calls = []
    denoise = make_denoiser(lambda x, t: calls.append(int(t[0])) or fake_model(x, t), schedule, "eps")
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = make_timesteps(schedule, 5, "logsnr")
    sigma = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()
    options = {"s_churn": 50.0, "s_tmin": 0.0, "s_tmax": float(sigma[timesteps[1]])}  # S_churn / n = 10
    heun_churn_sample(
        denoise, x_T, schedule, timesteps, **options, generator=torch.Generator().manual_seed(1)
    )
    t_hat = int((sigma - 2**0.5 * sigma[timesteps[1]]).abs().argmin())
    assert timesteps[1] < t_hat < timesteps[0] and calls[1] == t_hat


def test_samplers_refuse_options_and_timesteps_they_do_not_take():
    schedule = make_schedule("linear", 50)
    denoise, x_T = make_denoiser(fake_model, schedule), torch.randn(4, 2)
    with pytest.raises(TypeError):
        ddim_sample(denoise, x_T, schedule, variance="small")
    with pytest.raises(TypeError):
        dpmpp_2m_sample(denoise, x_T, schedule, eta=0.0)
    with pytest.raises(TypeError):
        ddpm_sample(denoise, x_T, schedule, eta=0.0)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(denoise, x_T, schedule, eta=-0.1)
    with pytest.raises(TypeError):
        heun_sample(denoise, x_T, schedule, s_churn=1.0)
    for bad in ({"s_churn": -1.0}, {"s_noise": 0.0}, {"s_tmin": 2.0, "s_tmax": 1.0}):
        with pytest.raises(ValueError, match="s_churn ≥ 0"):
            heun_churn_sample(denoise, x_T, schedule, **bad)
    with pytest.raises(ValueError, match="order"):
        unipc_sample(denoise, x_T, schedule, order=4)
    for bad in ([], [10, 20], [10, 10, 0], [50, 0], [5, -1]):
        for sampler in SAMPLERS.values():
            with pytest.raises(ValueError, match="timesteps"):
                sampler(denoise, x_T, schedule, bad)


def test_sampler_options_keeps_what_each_sampler_takes():
    settings = {"variance": "large", "eta": 0.5}
    assert sampler_options("ddpm", **settings) == {"variance": "large"}
    assert sampler_options("ddim", **settings) == {"eta": 0.5}
    assert sampler_options("dpmpp2m", **settings) == {}
    assert sampler_options("dpmpp2m-sde", **settings) == {}
    churn = {"s_churn": 10.0, "s_tmin": 0.1, "s_tmax": 2.0, "s_noise": 1.0}
    assert sampler_options("heun-churn", **settings, **churn) == churn
    assert sampler_options("heun", **settings, **churn) == sampler_options("unipc", **churn) == {}
    assert sampler_options("ddim", variance="small", eta=None) == {}  # None: the sampler's default
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_options("euler", eta=0.0)
    schedule = make_schedule("linear", 25)
    for name, sampler in SAMPLERS.items():
        sampler(
            make_denoiser(fake_model, schedule),
            torch.randn(2, 2),
            schedule,
            **sampler_options(name, **settings),
        )


# --- Timestep spacings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name, T", [("linear", 1000), ("cosine", 1000), ("cosine", 37), ("linear", 21)])
def test_spacings_give_distinct_decreasing_steps_in_range(spacing, name, T):
    schedule = make_schedule(name, T)
    for steps in sorted({1, 2, 3, T // 7 or 1, T // 2, T - 1, T}):
        timesteps = make_timesteps(schedule, steps, spacing)
        assert len(timesteps) == steps
        assert timesteps == sorted(set(timesteps), reverse=True)
        assert 0 <= timesteps[-1] and timesteps[0] <= T - 1
    assert make_timesteps(schedule, T, spacing) == full_timesteps(schedule)


@pytest.mark.parametrize("T", [20, 100, 1000])
def test_trailing_starts_at_T_minus_1_and_uniform_ends_at_0(T):
    schedule = make_schedule("cosine", T)
    for steps in (1, 3, 7, 10, T // 3):
        assert make_timesteps(schedule, steps, "trailing")[0] == T - 1
        assert make_timesteps(schedule, steps, "uniform")[-1] == 0
    assert make_timesteps(schedule, 4, "trailing") == [T - 1, 3 * T // 4 - 1, T // 2 - 1, T // 4 - 1]


def test_uniform_spacing_is_what_runs_have_always_used():
    """Runs sampled before spacings existed used round(i·T/steps); "uniform" keeps those steps."""
    for T in (20, 100, 999, 1000):
        schedule = make_schedule("cosine", T)
        for steps in {1, 3, 7, 10, T // 3, T - 1}:
            before = sorted({int(round(i * T / steps)) for i in range(steps)}, reverse=True)
            assert make_timesteps(schedule, steps, "uniform") == before


def test_quadratic_spacing_is_denser_near_the_data():
    timesteps = make_timesteps(make_schedule("linear", 1000), 50, "quadratic")[::-1]
    gaps = [b - a for a, b in zip(timesteps, timesteps[1:])]
    assert timesteps[0] == 0 and timesteps[-1] == 999
    assert gaps[:5] == sorted(gaps[:5]) and max(gaps[:10]) < min(gaps[-10:])
    assert sum(t < 250 for t in timesteps) >= 25  # (i / 49)² ≤ ¼ for the first half


def test_logsnr_spacing_is_about_uniform_in_log_snr():
    schedule = make_schedule("linear", 1000)
    lam = schedule.log_snr

    def spread(spacing):
        gaps = lam[make_timesteps(schedule, 20, spacing)].diff()
        return (gaps.std() / gaps.mean().abs()).item()

    assert spread("logsnr") < 0.1
    assert spread("logsnr") < min(spread(s) for s in SPACINGS if s != "logsnr") / 3
    zero_snr = make_schedule("linear", 1000, zero_terminal_snr=True)  # λ_T = −∞
    assert make_timesteps(zero_snr, 10, "logsnr")[0] == 999


def test_karras_spacing_starts_at_T_minus_1_then_follows_edm_eq_5():
    """Step T − 1, then the step nearest each σ_i of EDM's eq. 5 (in log σ): σ^(1/ρ) falls about linearly
    in i from KARRAS_SIGMA_MAX to KARRAS_SIGMA_MIN."""
    schedule = make_schedule("cosine", 1000)
    log_sigma = diffusion.edm_sigma(schedule).log()
    assert make_timesteps(schedule, 1, "karras") == [999]
    for steps in (2, 5, 10, 20):
        timesteps = make_timesteps(schedule, steps, "karras")
        assert timesteps[0] == 999
        targets = karras_sigmas(steps - 1, KARRAS_SIGMA_MAX, KARRAS_SIGMA_MIN, KARRAS_RHO).log()
        assert timesteps[1:] == (log_sigma[None, :] - targets[:, None]).abs().argmin(1).tolist()
        reached = log_sigma[timesteps[1:]].exp()
        assert reached[0] == pytest.approx(KARRAS_SIGMA_MAX, rel=0.05)
        if steps > 2:
            assert reached[-1] == pytest.approx(KARRAS_SIGMA_MIN, rel=0.05)
            gaps = (reached ** (1 / KARRAS_RHO)).diff()
            assert (gaps < 0).all() and gaps.std() / gaps.mean().abs() < 0.1
    sigmas = karras_sigmas(10, 20.0, 0.17, 7.0)
    assert sigmas[0] == pytest.approx(20.0) and sigmas[-1] == pytest.approx(0.17)
    assert torch.allclose(
        sigmas ** (1 / 7), torch.linspace(20.0 ** (1 / 7), 0.17 ** (1 / 7), 10, dtype=torch.float64)
    )
    assert karras_sigmas(1, 20.0, 0.17).tolist() == pytest.approx([20.0])


@pytest.mark.parametrize("steps", [0, -1, 101, 2.0, True, None])
def test_make_timesteps_refuses_bad_steps(steps):
    with pytest.raises(ValueError, match=r"steps must be an integer in 1…T \(100\)"):
        make_timesteps(make_schedule("linear", 100), steps)


def test_make_timesteps_refuses_unknown_spacing():
    with pytest.raises(ValueError, match="unknown spacing 'edm'"):
        make_timesteps(make_schedule("linear", 100), 10, "edm")


# --- Dynamic thresholding -------------------------------------------------------------------------------


def test_dynamic_threshold_is_imagen_sec_2_3():
    x0 = torch.stack([torch.linspace(-3, 3, 101), torch.linspace(-0.5, 0.5, 101)]).double()
    out = diffusion.dynamic_threshold(x0, 0.9)
    s = x0[0].abs().quantile(0.9)  # about 2.7: clip to ±s, then divide by s
    assert torch.allclose(out[0], x0[0].clamp(-s, s) / s)
    assert torch.equal(out[1], x0[1])  # percentile below 1: s = 1, nothing to do
    assert out.abs().max() <= 1
    with pytest.raises(ValueError, match="percentile"):
        diffusion.dynamic_threshold(x0, 1.5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_thresholded_denoiser_keeps_eps_consistent_with_x_t(prediction):
    schedule = make_schedule("cosine", 100)
    x_t = 3 * torch.randn(6, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.full((6,), 5, dtype=torch.long)
    model = lambda x, tt: 4 * torch.tanh(x)  # noqa: E731
    x0, eps = make_denoiser(model, schedule, prediction, threshold=0.995)(x_t, t)
    raw_x0, _ = make_denoiser(model, schedule, prediction)(x_t, t)
    assert torch.allclose(x0, diffusion.dynamic_threshold(raw_x0, 0.995))
    ab = schedule.alpha_bar[5]
    assert torch.allclose(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x_t, atol=1e-12)
    with pytest.raises(ValueError, match="percentile"):
        make_denoiser(model, schedule, prediction, threshold=99.5)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_samplers_start_from_pure_noise_with_zero_terminal_snr(sampler):
    """With ᾱ_T = 0 (Lin et al. 2024), x_T is pure noise: ε̂ = x_T and λ_T = −∞; every sampler stays finite
    and, from a single data point, its first step lands on √ᾱ_s x* + √(1 − ᾱ_s) x_T (noise aside)."""
    schedule = make_schedule("linear", 100, zero_terminal_snr=True)
    denoise = make_denoiser(gaussian_model(schedule, 0.4, 0.0, "v"), schedule, "v")
    x_T = torch.randn(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    timesteps = make_timesteps(schedule, 10, "trailing")
    states = []
    options = {"variance": "small"} if sampler == "ddpm" else {}
    x = SAMPLERS[sampler](
        denoise, x_T, schedule, timesteps, callback=lambda *a: states.append(a[2]), **options
    )
    assert torch.isfinite(x).all() and torch.allclose(x, torch.full_like(x, 0.4), atol=1e-10)
    if sampler in (
        "ddim",
        "dpmpp2m",
        "heun",
        "unipc",
    ):  # deterministic; the others replace x_T by fresh noise
        ab = schedule.alpha_bar[timesteps[1]]
        assert torch.allclose(states[0], ab.sqrt() * 0.4 + (1 - ab).sqrt() * x_T, atol=1e-10)


def test_heun_from_the_cosine_schedules_last_step_stays_accurate():
    """Trailing grids start at the last step, σ ≈ 2·10⁴ on the cosine schedule. Heun's correction across the
    first step would multiply the two slopes' difference by that step's length; above HEUN_SIGMA_MAX the
    step is Euler's alone, and 10 steps then land as close to the exact ODE as DDIM's 10 do, or closer."""
    m, s = 0.5, 0.3
    schedule = make_schedule("cosine", 1000)
    denoise = make_denoiser(gaussian_model(schedule, m, s, "eps"), schedule, "eps")
    x_T = standard_normal(100)
    timesteps = make_timesteps(schedule, 10, "trailing")
    exact = exact_ode_end(schedule, m, s, x_T, timesteps[-1])
    heun = (heun_sample(denoise, x_T, schedule, timesteps) - exact).abs().max().item()
    ddim = (SAMPLERS["ddim"](denoise, x_T, schedule, timesteps) - exact).abs().max().item()
    assert heun < min(ddim, 0.05)
