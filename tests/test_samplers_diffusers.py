"""Differential tests: our samplers against Hugging Face diffusers' schedulers, step for step.

Both sides see the same network, schedule, steps and noise. The schedule goes to diffusers as
``trained_betas``; diffusers keeps betas and ᾱ in float32, so, where its step can run in float64 (DDPM,
DDIM), its ᾱ is replaced by ours and the two must agree to rounding. Conventions that differ by design are
aligned here and written next to the alignment:

- DDPMScheduler ("fixed_small" / "fixed_large" are our "small" / "large") adds noise whenever t > 0: when
  the last step starts above 0 (trailing spacing) it adds σ z there too, which with "fixed_large" leaves
  noise in the sample; ours never adds noise on the last step. Its ``clip_sample`` is on by default.
- DDIMScheduler takes our step with ``set_alpha_to_one=True`` (else its last step ends at ᾱ_1 < 1) and only
  visits steps a constant stride apart; with ``clip_sample`` it keeps the unclipped ε̂ unless
  ``use_clipped_model_output=True``, where our ε̂ always agrees with the final x̂_0.
- DPMSolverMultistepScheduler ("dpmsolver++" and "sde-dpmsolver++", order 2) with its default
  ``final_sigmas_type="zero"`` takes a first-order last step into σ = 0 whatever ``lower_order_final`` and
  ``euler_at_final`` say, as ours does; with "sigma_min" it stops at the noise level of step 0 instead.
- Our "uniform" spacing is diffusers' "leading" one with an unfloored stride: they agree when the number
  of steps divides T.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
# diffusers turns its torch ᾱ into numpy in a way numpy 2 warns about; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

from ddpm.diffusion import dynamic_threshold  # noqa: E402
from ddpm.samplers import (  # noqa: E402
    HEUN_SIGMA_MAX,
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    dpmpp_2m_sde_sample,
    heun_sample,
    karras_sigmas,
    make_denoiser,
    make_timesteps,
    network_evaluations,
    unipc_sample,
)
from ddpm.schedules import make_schedule  # noqa: E402

T = 1000
SCHEDULES = {name: make_schedule(name, T) for name in ("linear", "cosine")}
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def fake_model(x, t):
    """Any smooth function of (x, t): both implementations must read its output the same way."""
    return torch.tanh(x * 0.7 + 0.3 * torch.sin(x * 3) + 0.002 * t.reshape(-1, *[1] * (x.ndim - 1)))


def model_at(x, t: int):
    """The network as diffusers' loop calls it; t in float32, as make_denoiser passes it."""
    return fake_model(x, torch.full((x.shape[0],), float(t)))


def start(*shape):
    return torch.randn(shape or (16, 3), dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def with_our_alpha_bar(scheduler, schedule):
    """diffusers rebuilds ᾱ from float32 betas; give its float64-capable steps our float64 ᾱ instead."""
    scheduler.betas = schedule.betas.clone()
    scheduler.alphas = schedule.alphas.clone()
    scheduler.alphas_cumprod = schedule.alpha_bar.clone()
    return scheduler


def test_trained_betas_rebuild_our_schedule():
    for schedule in SCHEDULES.values():
        scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, trained_betas=schedule.betas.numpy())
        assert torch.allclose(scheduler.alphas_cumprod.double(), schedule.alpha_bar, rtol=1e-4, atol=1e-9)


# --- Timestep spacings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 7, 10, 25, 30, 64, 250, 999, 1000])
def test_trailing_spacing_is_diffusers_trailing(steps):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    assert make_timesteps(SCHEDULES["linear"], steps, "trailing") == scheduler.timesteps.tolist()


@pytest.mark.parametrize("steps", [1, 8, 10, 25, 40, 125, 500, 1000])
def test_uniform_spacing_is_diffusers_leading_when_steps_divide_T(steps):
    """diffusers' "leading" floors the stride, T // steps; ours rounds i · T / steps. Equal when steps | T."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, timestep_spacing="leading", steps_offset=0)
    scheduler.set_timesteps(steps)
    assert make_timesteps(SCHEDULES["linear"], steps, "uniform") == scheduler.timesteps.tolist()


@pytest.mark.parametrize("n", [1, 2, 9, 30])
@pytest.mark.parametrize("sigma_max, sigma_min", [(20.0, 0.17), (80.0, 0.002)])
def test_karras_sigmas_are_diffusers_karras_sigmas(n, sigma_max, sigma_min):
    """EDM's eq. 5 as diffusers writes it (its ramp from σ_max to σ_min, ρ = 7), in float64."""
    scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T)
    theirs = scheduler._convert_to_karras(torch.tensor([sigma_max, sigma_min], dtype=torch.float64), n)
    assert torch.allclose(karras_sigmas(n, sigma_max, sigma_min), torch.as_tensor(theirs), rtol=1e-12)


# --- DDPM ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("prediction", list(PREDICTION_TYPES))
@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddpm_matches_ddpm_scheduler(schedule_name, prediction, variance, clip):
    """Ancestral sampling over 25 respaced steps ending at t = 0, with noise from the same generator.

    variance "small"/"large" ↔ variance_type "fixed_small"/"fixed_large" (both use 1 − ᾱ_t / ᾱ_s as β for
    skipped steps); clip_x0 ↔ clip_sample (diffusers clips by default). Both draw the noise of a step with
    the same torch.randn call, and neither adds noise at t = 0.
    """
    schedule = SCHEDULES[schedule_name]
    timesteps = make_timesteps(schedule, 25, "uniform")
    x_T = start()
    denoise = make_denoiser(fake_model, schedule, prediction, clip)
    ours = ddpm_sample(
        denoise, x_T, schedule, timesteps, variance=variance, generator=torch.Generator().manual_seed(1)
    )

    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        trained_betas=schedule.betas.numpy(),
        variance_type={"small": "fixed_small", "large": "fixed_large"}[variance],
        prediction_type=PREDICTION_TYPES[prediction],
        clip_sample=clip is not None,
        clip_sample_range=clip or 1.0,
    )
    with_our_alpha_bar(scheduler, schedule)
    scheduler.set_timesteps(timesteps=timesteps)
    g = torch.Generator().manual_seed(1)
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(model_at(x, int(t)), t, x, generator=g).prev_sample
    assert torch.allclose(ours, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_last_step_above_zero_differs_by_design(variance):
    """With trailing steps the last step starts at t > 0. We add no noise on the step into the data (ᾱ = 1);
    diffusers adds noise whenever t > 0, with variance β̃ = 0 ("fixed_small": nothing, up to its 1e-20
    floor) or β = 1 − ᾱ_t ("fixed_large": a visibly noisy sample). The difference is exactly that noise.
    """
    schedule = SCHEDULES["linear"]
    timesteps = make_timesteps(schedule, 10, "trailing")
    x_T = start()
    denoise = make_denoiser(fake_model, schedule, "eps", clip_x0=1.0)
    g = torch.Generator().manual_seed(1)
    ours = ddpm_sample(denoise, x_T, schedule, timesteps, variance=variance, generator=g)
    last_noise = torch.randn(x_T.shape, generator=g, dtype=x_T.dtype)  # the draw diffusers makes next

    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        trained_betas=schedule.betas.numpy(),
        variance_type={"small": "fixed_small", "large": "fixed_large"}[variance],
        clip_sample=True,
    )
    with_our_alpha_bar(scheduler, schedule)
    scheduler.set_timesteps(timesteps=timesteps)
    g = torch.Generator().manual_seed(1)
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(model_at(x, int(t)), t, x, generator=g).prev_sample
    t_last = timesteps[-1]
    std = 1e-10 if variance == "small" else float(1 - schedule.alpha_bar[t_last]) ** 0.5
    assert torch.allclose(x - ours, std * last_noise, atol=1e-12)
    assert ours.abs().max() <= 1 and (variance == "small" or (x - ours).abs().max() > 0.5)


# --- DDIM ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("prediction", list(PREDICTION_TYPES))
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", ["uniform", "trailing"])
def test_ddim_matches_ddim_scheduler(schedule_name, prediction, eta, spacing):
    """25 steps, the same noise passed as ``variance_noise``.

    DDIMScheduler finds the next step as t − T // steps, so only constant strides can be compared: our
    uniform ("leading") and trailing spacings with steps dividing T. set_alpha_to_one=True makes its last
    step end at ᾱ = 1 as ours does (False would end at ᾱ_1). We draw no noise on the last step (σ = 0
    there); diffusers multiplies a draw by σ = 0, so it is given zeros.
    """
    schedule = SCHEDULES[schedule_name]
    timesteps = make_timesteps(schedule, 25, spacing)
    x_T = start()
    denoise = make_denoiser(fake_model, schedule, prediction)
    ours = ddim_sample(denoise, x_T, schedule, timesteps, eta=eta, generator=torch.Generator().manual_seed(1))

    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        trained_betas=schedule.betas.numpy(),
        prediction_type=PREDICTION_TYPES[prediction],
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing={"uniform": "leading", "trailing": "trailing"}[spacing],
        steps_offset=0,
    )
    with_our_alpha_bar(scheduler, schedule)
    scheduler.set_timesteps(25)
    assert scheduler.timesteps.tolist() == timesteps
    g = torch.Generator().manual_seed(1)
    x = x_T
    for i, t in enumerate(scheduler.timesteps):
        last = i == len(timesteps) - 1
        noise = torch.zeros_like(x) if last or eta == 0 else torch.randn(x.shape, generator=g, dtype=x.dtype)
        x = scheduler.step(model_at(x, int(t)), t, x, eta=eta, variance_noise=noise).prev_sample
    assert torch.allclose(ours, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction", list(PREDICTION_TYPES))
@pytest.mark.parametrize("x0_option", ["clip", "threshold"])
def test_ddim_with_clipping_or_thresholding_matches(prediction, x0_option):
    """Our denoiser recomputes ε̂ from the clipped (or thresholded) x̂_0; diffusers does so only with
    use_clipped_model_output=True (its default keeps the raw ε̂, which no longer agrees with x_t).

    Imagen's dynamic threshold is s = max(percentile, 1), unbounded above: diffusers caps s at
    sample_max_value, 1.0 by default (which makes thresholding plain clipping), so it is lifted here.
    """
    schedule = SCHEDULES["linear"]
    timesteps = make_timesteps(schedule, 20, "trailing")
    x_T = 1.5 * start(4, 2, 3, 3)  # diffusers' thresholding wants (batch, channels, ...)
    kwargs = {"clip_x0": 1.0} if x0_option == "clip" else {"threshold": 0.9}
    denoise = make_denoiser(lambda x, t: 2 * fake_model(x, t), schedule, prediction, **kwargs)
    ours = ddim_sample(denoise, x_T, schedule, timesteps, eta=0.0)

    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        trained_betas=schedule.betas.numpy(),
        prediction_type=PREDICTION_TYPES[prediction],
        clip_sample=x0_option == "clip",
        thresholding=x0_option == "threshold",
        dynamic_thresholding_ratio=0.9,
        sample_max_value=float("inf"),
        timestep_spacing="trailing",
    )
    with_our_alpha_bar(scheduler, schedule)
    scheduler.set_timesteps(20)
    x = x_T
    for t in scheduler.timesteps:
        output = 2 * model_at(x, int(t))
        x = scheduler.step(output, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    assert torch.allclose(ours, x, rtol=1e-10, atol=1e-10)


def test_dynamic_threshold_matches_diffusers():
    x0 = 3 * torch.randn(6, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x0[0] *= 0.1  # a sample whose percentile is below 1: plain clipping at ±1
    scheduler = diffusers.DDIMScheduler(
        thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=float("inf")
    )
    assert torch.allclose(dynamic_threshold(x0, 0.95), scheduler._threshold_sample(x0), atol=1e-12)


# --- DPM-Solver++(2M) ---------------------------------------------------------------------------------


def dpm_solver(schedule, timesteps, algorithm_type: str, prediction: str, **options):
    """diffusers' second-order DPM-Solver over our exact steps (``set_timesteps(timesteps=...)``), ending at
    σ = 0 (final_sigmas_type="zero"), with its float32 σ_t = √((1 − ᾱ_t) / ᾱ_t) replaced by float64 values
    from our ᾱ, which leaves only its float32 arithmetic."""
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        trained_betas=schedule.betas.numpy(),
        algorithm_type=algorithm_type,
        solver_order=2,
        solver_type="midpoint",
        prediction_type=PREDICTION_TYPES[prediction],
        final_sigmas_type="zero",
        **options,
    )
    scheduler.set_timesteps(timesteps=timesteps)
    alpha_bar = schedule.alpha_bar[timesteps]
    scheduler.sigmas = torch.cat([((1 - alpha_bar) / alpha_bar).sqrt(), torch.zeros(1, dtype=torch.float64)])
    return scheduler


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("prediction", list(PREDICTION_TYPES))
@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("spacing", ["uniform", "trailing", "logsnr"])
def test_dpmpp_2m_matches_dpm_solver_multistep(schedule_name, prediction, steps, spacing):
    """Whole trajectories, our exact steps passed as ``set_timesteps(timesteps=...)``.

    final_sigmas_type="zero" (the default) makes the last step go to σ = 0 (ᾱ = 1) and take it first
    order, as ours does; lower_order_final and euler_at_final then change nothing (checked below).
    diffusers steps in float32 whatever the input's dtype (it casts the sample) and keeps its σ_t =
    √((1 − ᾱ_t) / ᾱ_t) in float32; σ is replaced by float64 values from our ᾱ, which leaves only the
    float32 arithmetic, so the comparison is to float32 accuracy.
    """
    schedule = SCHEDULES[schedule_name]
    timesteps = make_timesteps(schedule, steps, spacing)
    x_T = start()
    denoise = make_denoiser(fake_model, schedule, prediction)
    seen = []
    ours = dpmpp_2m_sample(denoise, x_T, schedule, timesteps, callback=lambda i, t, x, x0: seen.append(x))

    for lower_order_final, euler_at_final in [(True, False), (False, False), (False, True)]:
        scheduler = dpm_solver(
            schedule,
            timesteps,
            "dpmsolver++",
            prediction,
            lower_order_final=lower_order_final,
            euler_at_final=euler_at_final,
        )
        x = x_T.float()
        for i, t in enumerate(scheduler.timesteps):
            x = scheduler.step(model_at(x, int(t)), t, x).prev_sample
            assert torch.allclose(seen[i].float(), x, atol=1e-5, rtol=1e-5), (i, int(t))
        assert torch.allclose(ours.float(), x, atol=1e-5)


def test_dpmpp_2m_sigma_min_final_differs_by_design():
    """final_sigmas_type="sigma_min" stops at the noise level of step 0 instead of ᾱ = 1: not our sampler."""
    schedule = SCHEDULES["linear"]
    timesteps = make_timesteps(schedule, 10, "trailing")
    x_T = start()
    ours = dpmpp_2m_sample(make_denoiser(fake_model, schedule), x_T, schedule, timesteps)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=schedule.betas.numpy(), final_sigmas_type="sigma_min"
    )
    scheduler.set_timesteps(timesteps=timesteps)
    x = x_T.float()
    for t in scheduler.timesteps:
        x = scheduler.step(model_at(x, int(t)), t, x).prev_sample
    assert not torch.allclose(ours.float(), x, atol=1e-3)


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("prediction", list(PREDICTION_TYPES))
@pytest.mark.parametrize("spacing", ["uniform", "trailing", "logsnr"])
def test_dpmpp_2m_sde_matches_sde_dpm_solver_multistep(schedule_name, prediction, spacing):
    """SDE-DPM-Solver++(2M) against algorithm_type="sde-dpmsolver++", the same noise passed to diffusers as
    ``variance_noise`` (ours draws it from the generator at every step but the last, in float64; diffusers'
    last step into σ = 0 multiplies its noise by zero). Float32 on diffusers' side, as above."""
    schedule = SCHEDULES[schedule_name]
    timesteps = make_timesteps(schedule, 12, spacing)
    x_T = start()
    denoise = make_denoiser(fake_model, schedule, prediction)
    seen = []
    ours = dpmpp_2m_sde_sample(
        denoise,
        x_T,
        schedule,
        timesteps,
        generator=torch.Generator().manual_seed(3),
        callback=lambda i, t, x, x0: seen.append(x),
    )
    g = torch.Generator().manual_seed(3)
    noises = [torch.randn(x_T.shape, generator=g, dtype=x_T.dtype) for _ in timesteps[1:]]
    noises.append(torch.zeros_like(x_T))

    scheduler = dpm_solver(schedule, timesteps, "sde-dpmsolver++", prediction)
    x = x_T.float()
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(model_at(x, int(t)), t, x, variance_noise=noises[i].float()).prev_sample
        assert torch.allclose(seen[i].float(), x, atol=1e-5, rtol=1e-5), (i, int(t))
    assert torch.allclose(ours.float(), x, atol=1e-5)


# --- EDM's Heun sampler ---------------------------------------------------------------------------------


def sigmas_at(schedule, timesteps):
    """σ_t = √((1 − ᾱ_t) / ᾱ_t) of the steps, in float64 from our ᾱ, and 0 for the end."""
    alpha_bar = schedule.alpha_bar[timesteps]
    return torch.cat([((1 - alpha_bar) / alpha_bar).sqrt(), torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("prediction", list(PREDICTION_TYPES))
@pytest.mark.parametrize("spacing", ["uniform", "trailing", "logsnr"])
def test_heun_matches_heun_discrete_scheduler(schedule_name, prediction, spacing):
    """EDM's Algorithm 1 against HeunDiscreteScheduler over our steps (``set_timesteps(timesteps=...)``).

    diffusers' state is EDM's x = x_t / √ᾱ_t (its init_noise_sigma scales the noise, scale_model_input
    divides by √(σ² + 1) = 1/√ᾱ_t), so x_T goes in as x_T / √ᾱ_{t_0}; it lists each step twice (the Euler
    step, then the correction, each one network call) and the last once: 2n − 1 calls on n steps. Its σ is
    float32 from float32 ᾱ; given our float64 σ (repeated as it repeats them) it steps in float64.
    """
    schedule = SCHEDULES[schedule_name]
    timesteps = make_timesteps(schedule, 9, spacing)
    x_T = start()
    calls = []

    def counted(x, t):
        calls.append(int(t[0]))
        return fake_model(x, t)

    seen = []
    denoise = make_denoiser(counted, schedule, prediction)
    ours = heun_sample(denoise, x_T, schedule, timesteps, callback=lambda i, t, x, x0: seen.append(x))
    # From above EDM's σ_max our steps are Euler's alone (DDIM's steps); diffusers then takes over from our
    # state after the last of them, over the remaining steps.
    above = int((sigmas_at(schedule, timesteps)[:-1] > HEUN_SIGMA_MAX).sum())
    assert len(calls) == 2 * len(timesteps) - 1 - above
    assert len(calls) <= network_evaluations("heun", len(timesteps))
    if above:
        ddim = []
        record = lambda i, t, x, x0: ddim.append(x)  # noqa: E731
        ddim_sample(
            make_denoiser(fake_model, schedule, prediction), x_T, schedule, timesteps, callback=record
        )
        for i in range(above):
            assert torch.allclose(seen[i], ddim[i], rtol=1e-9, atol=1e-9)
    rest, x_start, done = (timesteps[above:], seen[above - 1], above) if above else (timesteps, x_T, 0)

    scheduler = diffusers.HeunDiscreteScheduler(
        num_train_timesteps=T,
        trained_betas=schedule.betas.numpy(),
        prediction_type=PREDICTION_TYPES[prediction],
    )
    scheduler.set_timesteps(timesteps=rest)
    sigmas = sigmas_at(schedule, rest)
    scheduler.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
    assert [int(t) for t in scheduler.timesteps] == calls[done:]
    x = x_start * (1 + sigmas[0] ** 2).sqrt()
    for k, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(model_at(model_input, int(t)), t, x).prev_sample
        if k % 2 == 1:  # step i ends with its correction: our state there, in EDM's variables
            i = k // 2
            mine = seen[i + done] * (1 + sigmas[i + 1] ** 2).sqrt()
            assert torch.allclose(mine, x, rtol=1e-9, atol=1e-9), k
    assert torch.allclose(ours, x, rtol=1e-9, atol=1e-9)


# --- UniPC ------------------------------------------------------------------------------------------------


def unipc(schedule, timesteps, prediction: str, order: int):
    """diffusers' UniPC (bh2, data prediction, lower_order_final, ending at σ = 0) over our exact steps. Its
    set_timesteps takes no list of steps: they are set after it, with float64 σ from our ᾱ."""
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=T,
        trained_betas=schedule.betas.numpy(),
        solver_order=order,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        prediction_type=PREDICTION_TYPES[prediction],
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(len(timesteps))
    scheduler.timesteps = torch.tensor(timesteps)
    scheduler.sigmas = sigmas_at(schedule, timesteps)
    return scheduler


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("prediction", list(PREDICTION_TYPES))
@pytest.mark.parametrize("spacing", ["uniform", "trailing", "logsnr", "karras"])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc_matches_unipc_multistep(schedule_name, prediction, spacing, order):
    """Whole trajectories, 12 steps; each step's state is the predictor's (the corrector acts on it once the
    network has seen it). UniPCMultistepScheduler lowers the order on the last steps with
    lower_order_final=True, as ours does; without it a last step of order > 1 into σ = 0 divides by r = 0."""
    schedule = SCHEDULES[schedule_name]
    timesteps = make_timesteps(schedule, 12, spacing)
    x_T = start()
    seen = []
    denoise = make_denoiser(fake_model, schedule, prediction)
    callback = lambda i, t, x, x0: seen.append(x)  # noqa: E731
    ours = unipc_sample(denoise, x_T, schedule, timesteps, order=order, callback=callback)

    scheduler = unipc(schedule, timesteps, prediction, order)
    x = x_T
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(model_at(x, int(t)), t, x).prev_sample
        assert torch.allclose(seen[i], x, rtol=1e-9, atol=1e-9), (i, int(t))
    assert torch.allclose(ours, x, rtol=1e-9, atol=1e-9)
