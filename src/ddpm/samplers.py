"""Samplers: each turns noise x_T into data with a trained denoiser, one function per algorithm.

Every sampler has one signature, ``sampler(denoise, x_T, schedule, timesteps, *, generator=None,
callback=None, **options)``:

- ``denoise(x_t, t) -> (x̂_0, ε̂)`` wraps the network (see :func:`make_denoiser`), so a sampler never needs
  to know whether the network predicts ε, x_0 or v, nor whether guidance or clipping is applied;
- ``timesteps`` is a decreasing sequence of 0-based step indices (all T of them, or a subset);
- ``callback(i, t, x_s, x0)`` sees the state after every step and the x̂_0 that produced it (for GIFs
  of the reverse process).

Each step goes from index t to the next index s of ``timesteps``, and the last step goes to s = −1, where
ᾱ = 1: the clean data. :func:`make_timesteps` picks a subset of steps ("respacing"). Options particular to
one sampler (``variance`` for DDPM, ``eta`` for DDIM) are explicit keyword arguments, so a misspelt or
misplaced option is an error rather than silently ignored; :func:`sampler_options` picks, out of a
caller's settings, those one sampler takes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch

from ddpm.diffusion import VARIANCES, x0_eps_from_output
from ddpm.schedules import Schedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def make_denoiser(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: Schedule,
    prediction: str = "eps",
    clip_x0: float | None = None,
    threshold: float | None = None,
) -> Denoiser:
    """Wrap a network ``model_fn(x_t, t_float)`` as ``denoise(x_t, t) -> (x̂_0, ε̂)``.

    ``prediction`` says what the network outputs (ε, x_0 or v). ``clip_x0`` clamps x̂_0 to the data range;
    ``threshold`` (a percentile such as 0.995) applies Imagen's dynamic thresholding (Saharia et al. 2022,
    sec. 2.3). Either way ε̂ is recomputed from the final x̂_0 (see :func:`x0_eps_from_output`).
    """
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"threshold is a percentile in (0, 1], such as 0.995; got {threshold!r}")

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = model_fn(x_t, t.float()).to(x_t.dtype)
        return x0_eps_from_output(output, x_t, t, schedule, prediction, clip_x0, threshold)

    return denoise


def classifier_free_guidance(
    model_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    null_label: int,
    guidance: float,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): ε̃ = (1 + w) ε(x_t, c) − w ε(x_t, ∅).

    ``model_fn(x_t, t, y)`` is a class-conditional network whose label ``null_label`` means "no label"
    (learned by dropping labels in training). The conditional and unconditional passes share one forward
    pass of a doubled batch. The rule is applied to the raw output: for fixed x_t and t, x̂_0, ε̂ and v̂ are
    affine in one another with weights that sum to one, so guiding any of them guides ε the same way.
    ``w = 0`` is the plain conditional model.
    """

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = torch.cat([y, torch.full_like(y, null_label)])
        cond, uncond = model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), labels).chunk(2)
        return cond + guidance * (cond - uncond)

    return guided


# --- Which steps to visit ---------------------------------------------------------------------------------

SPACINGS = ("uniform", "trailing", "quadratic", "logsnr")


def full_timesteps(schedule: Schedule) -> list[int]:
    """All steps, from T − 1 down to 0: the original DDPM sampler."""
    return list(range(schedule.T - 1, -1, -1))


def make_timesteps(schedule: Schedule, steps: int, spacing: str = "uniform") -> list[int]:
    """``steps`` distinct step indices in 0 … T − 1, decreasing: where a shortened sampler stops.

    - "uniform": round(i · T / steps) for i = 0 … steps − 1 (Python's round, half to even), as
      ``ddpm.run.sample_timesteps`` has always done. It starts at 0 and its largest step is about
      T − T / steps, short of T − 1. This is the "leading" spacing of DDIM's code and of diffusers,
      range(0, T, T // steps), except that the stride is not floored; the two agree when steps divides T.
    - "trailing": round(T − i · T / steps) − 1 (Lin et al. 2024, "Common diffusion noise schedules and
      sample steps are flawed", Table 2): always starts at T − 1, the step that sees the most noise.
    - "quadratic": (T − 1) · (i / (steps − 1))², denser near the data (Song et al. 2021, DDIM, appendix D.2;
      their code stops at 0.8 T, we span 0 … T − 1).
    - "logsnr": uniform in λ_t = log(ᾱ_t / (1 − ᾱ_t)) between λ of the first and the last step, each
      value mapped to the step whose λ is nearest (where ᾱ_T = 0 and λ_T = −∞, the grid spans the finite λ
      and still starts at T − 1).

    Quadratic and log-SNR values that round onto the same integer are pushed apart so that the steps stay
    distinct. ``steps = T`` gives every step, whatever the spacing.
    """
    T = schedule.T
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1…T ({T}), got {steps!r}")
    if spacing == "uniform":
        stride = T / steps
        timesteps = [round(i * stride) for i in range(steps)]
    elif spacing == "trailing":
        stride = T / steps
        timesteps = [round(T - i * stride) - 1 for i in range(steps)]
    elif spacing == "quadratic":
        timesteps = _distinct([(T - 1) * (i / max(steps - 1, 1)) ** 2 for i in range(steps)][::-1])
    elif spacing == "logsnr":
        lam = schedule.log_snr.cpu()
        finite = lam[torch.isfinite(lam)]
        targets = torch.linspace(float(finite[-1]), float(lam[0]), steps, dtype=torch.float64)
        nearest = (lam[None, :] - targets[:, None]).abs().argmin(1).tolist()
        nearest[0] = T - 1  # moves off T − 2 only when λ_T = −∞
        timesteps = _distinct(nearest)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return sorted(set(timesteps), reverse=True)


def _distinct(targets: list[float]) -> list[int]:
    """Round decreasing values in [0, T − 1] to distinct integers, moving collisions down, then up at 0."""
    timesteps: list[int] = []
    for x in targets:
        t = round(x)
        timesteps.append(t if not timesteps or t < timesteps[-1] else timesteps[-1] - 1)
    for i in range(len(timesteps) - 1, -1, -1):  # from the last (smallest) step: keep t_i ≥ t_{i+1} + 1 ≥ 0
        floor = 0 if i == len(timesteps) - 1 else timesteps[i + 1] + 1
        timesteps[i] = max(timesteps[i], floor)
    return timesteps


def _checked(schedule: Schedule, timesteps: Sequence[int] | None) -> list[int]:
    """The steps a sampler visits: all T when None, else checked to decrease strictly within 0 … T − 1."""
    if timesteps is None:
        return full_timesteps(schedule)
    steps = [int(t) for t in timesteps]
    if (
        not steps
        or steps[0] > schedule.T - 1
        or steps[-1] < 0
        or any(a <= b for a, b in zip(steps, steps[1:]))
    ):
        raise ValueError(f"timesteps must be a non-empty, strictly decreasing sequence in 0…{schedule.T - 1}")
    return steps


def _alpha_bar(schedule: Schedule, t: int) -> float:
    """ᾱ at index t, with ᾱ = 1 before the first step (t = −1)."""
    return 1.0 if t < 0 else float(schedule.alpha_bar[t])


def _lambda(schedule: Schedule, t: int) -> float:
    """λ_t = log(α_t / σ_t) = ½ log SNR(t) (Lu et al. 2022); +∞ at t = −1 (clean), −∞ where ᾱ_t = 0."""
    return math.inf if t < 0 else 0.5 * float(schedule.log_snr[t])


def _multistep_x0(x0: torch.Tensor, x0_prev: torch.Tensor | None, h: float, h_prev: float | None):
    """The data prediction D of DPM-Solver++(2M)'s step (Lu et al. 2022, Alg. 2): x̂_0(t) on the first step,
    then D = (1 + 1/(2r)) x̂_0(t) − 1/(2r) x̂_0(t_prev) with r = h_prev / h, a linear extrapolation in λ of the
    two latest predictions. r = ∞ (so D = x̂_0) after a first step from λ = −∞ (zero terminal SNR)."""
    if x0_prev is None:
        return x0
    r = h_prev / h
    return (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev


# --- The samplers ---------------------------------------------------------------------------------------


@torch.no_grad()
def ddpm_sample(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int] | None = None,
    *,
    variance: str = "small",
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2).

    Each step draws x_s ~ q(x_s | x_t, x̂_0), the posterior of eq. 6–7 evaluated at the predicted x̂_0.
    For a subset of steps (s < t not adjacent) the same posterior holds with α_t replaced by
    ᾱ_t / ᾱ_s (Nichol & Dhariwal 2021, sec. 4): with s = t − 1 these are exactly eq. 6–7.
    ``variance`` picks σ² = β̃ ("small") or β ("large"); no noise is added at the last step.

    diffusers' DDPMScheduler takes the same steps ("fixed_small" / "fixed_large") but adds noise whenever
    t > 0: when the last step starts above 0 (trailing spacing), it adds σ z there too, which with
    "fixed_large" (σ² = 1 − ᾱ_t) leaves noise in the sample. Its ``clip_sample`` defaults to on.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    timesteps = _checked(schedule, timesteps)
    x = x_T
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, _ = denoise(x, tt)
        ab_t, ab_s = _alpha_bar(schedule, t), _alpha_bar(schedule, s)
        beta = 1 - ab_t / ab_s  # β_t when s = t − 1
        mean = (ab_s**0.5 * beta / (1 - ab_t)) * x0 + ((ab_t / ab_s) ** 0.5 * (1 - ab_s) / (1 - ab_t)) * x
        if s >= 0:
            var = beta * (1 - ab_s) / (1 - ab_t) if variance == "small" else beta
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + var**0.5 * noise
        else:
            x = mean
        if callback is not None:
            callback(i, t, x, x0)
    return x


@torch.no_grad()
def ddim_sample(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int] | None = None,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Denoising diffusion implicit models (Song et al. 2021, eq. 12 with σ_t(η) of eq. 16).

    Each step from t to the next step s (sec. 4.2; the paper's α is our ᾱ) is

        x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z,    σ = η √((1 − ᾱ_s) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_s).

    η = 0 is deterministic: the sample moves along the line of its current ε̂. η = 1 makes σ² the DDPM
    posterior variance β̃ (for s = t − 1, and with ᾱ_t / ᾱ_s in place of α_t for skipped steps), and the
    step is then exactly that of :func:`ddpm_sample` with variance "small", with the same noise: z is drawn
    from ``generator`` only when η > 0, at every step but the last. The last step (s = −1, ᾱ = 1) has σ = 0
    and returns x̂_0.

    diffusers' DDIMScheduler takes the same step with ``set_alpha_to_one=True`` (else its last step ends
    at ᾱ_1 < 1), but only visits steps a constant stride apart, and with ``clip_sample`` it keeps the
    unclipped ε̂ unless ``use_clipped_model_output=True``; here ε̂ always agrees with the final x̂_0.
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1] (0: DDIM, 1: DDPM-like), got {eta!r}")
    timesteps = _checked(schedule, timesteps)
    x = x_T
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, eps = denoise(x, tt)
        ab_t, ab_s = _alpha_bar(schedule, t), _alpha_bar(schedule, s)
        sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)) ** 0.5  # eq. 16
        x = ab_s**0.5 * x0 + max(1 - ab_s - sigma**2, 0.0) ** 0.5 * eps  # eq. 12, without the noise
        if eta > 0 and s >= 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback(i, t, x, x0)
    return x


@torch.no_grad()
def dpmpp_2m_sample(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int] | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2): a second-order multistep solver
    of the probability-flow ODE, written for the data prediction x̂_0 and stepping in λ = log(α / σ).

    With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) and h = λ_s − λ_t > 0, each step from t to s is

        x_s = (σ_s / σ_t) x_t − α_s (e^(−h) − 1) D,

    where D = x̂_0(t) on the first step (DPM-Solver++1, the same step as DDIM with η = 0) and afterwards
    D = (1 + 1/(2r)) x̂_0(t) − 1/(2r) x̂_0(t_prev) with r = h_prev / h: a linear extrapolation, in λ, of the
    two latest predictions. The solver is deterministic; ``generator`` is accepted and unused.

    The last step goes to s = −1 (ᾱ = 1, σ = 0, λ = +∞), where r = 0 and the second-order term has no
    limit; it is taken first order, whose limit is x_s = x̂_0, so the sample is the x̂_0 of the last
    evaluation (the paper instead integrates to a small time ε > 0, where λ is finite). This is exactly
    diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2) with its default
    final_sigmas_type="zero", which forces a first-order last step whatever lower_order_final and
    euler_at_final say. With final_sigmas_type="sigma_min" diffusers instead stops at the noise level of
    step 0 (ᾱ_1 < 1), a second-order step once there are 15 steps or more, and returns that slightly noisy x.
    """
    timesteps = _checked(schedule, timesteps)
    x = x_T
    x0_prev, h_prev = None, None
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, _ = denoise(x, tt)
        if s < 0:
            x = x0  # first order into σ_s = 0: (σ_s / σ_t) x_t → 0 and −α_s (e^(−h) − 1) → 1
        else:
            h = _lambda(schedule, s) - _lambda(schedule, t)
            D = _multistep_x0(x0, x0_prev, h, h_prev)
            ab_t, ab_s = _alpha_bar(schedule, t), _alpha_bar(schedule, s)
            sigma_ratio = ((1 - ab_s) / (1 - ab_t)) ** 0.5  # σ_s / σ_t
            x = sigma_ratio * x - ab_s**0.5 * math.expm1(-h) * D
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i, t, x, x0)
    return x


@torch.no_grad()
def dpmpp_2m_sde_sample(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int] | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, the solver of the diffusion SDE that
    diffusers names "sde-dpmsolver++"): the multistep data-prediction solver of the reverse SDE instead of
    the probability-flow ODE.

    Integrating the linear part of the reverse SDE exactly in λ (h = λ_s − λ_t) gives, for a data
    prediction D held constant over the step,

        x_s = (σ_s / σ_t) e^(−h) x_t + α_s (1 − e^(−2h)) D + σ_s √(1 − e^(−2h)) z.

    Written out with ᾱ, these three coefficients are those of the DDPM posterior q(x_s | x_t, x_0) of eq. 6–7
    of Ho et al. 2020 (with ᾱ_t / ᾱ_s for α_t), and σ_s² (1 − e^(−2h)) is β̃: with D = x̂_0(t) the step is
    exactly :func:`ddpm_sample`'s with variance "small". The second-order solver keeps that step and only
    replaces x̂_0 by the extrapolation of :func:`dpmpp_2m_sample`, D = (1 + 1/(2r)) x̂_0(t) − 1/(2r)
    x̂_0(t_prev), r = h_prev / h; the first step is first order. The injected noise corrects errors of the
    network that the ODE carries to the end, which is why stochastic samplers do better on imperfect
    models. The last step (σ_s = 0) returns x̂_0, like the other samplers; z is drawn from ``generator`` at
    every step but the last, as in :func:`ddpm_sample`.
    """
    timesteps = _checked(schedule, timesteps)
    x = x_T
    x0_prev, h_prev = None, None
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, _ = denoise(x, tt)
        if s < 0:
            x = x0
        else:
            h = _lambda(schedule, s) - _lambda(schedule, t)
            D = _multistep_x0(x0, x0_prev, h, h_prev)
            ab_t, ab_s = _alpha_bar(schedule, t), _alpha_bar(schedule, s)
            one_minus = -math.expm1(-2 * h)  # 1 − e^(−2h)
            x_coef = ((1 - ab_s) / (1 - ab_t)) ** 0.5 * math.exp(-h)  # (σ_s / σ_t) e^(−h)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x_coef * x + ab_s**0.5 * one_minus * D + ((1 - ab_s) * one_minus) ** 0.5 * noise
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i, t, x, x0)
    return x


SAMPLERS = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpmpp2m": dpmpp_2m_sample,
    "dpmpp2m-sde": dpmpp_2m_sde_sample,
}


def sampler_options(name: str, **settings) -> dict:
    """The ``settings`` that sampler ``name`` takes, e.g. ``sampler(..., **sampler_options(name,
    variance=cfg.diffusion.variance, eta=eta))``: variance goes to DDPM only, eta to DDIM only.

    The samplers themselves refuse options they don't know; this is where a caller holding every setting
    picks the relevant ones. Settings given as None are left out, so the sampler's default applies.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    params = inspect.signature(SAMPLERS[name]).parameters.values()
    takes = {p.name for p in params if p.kind is p.KEYWORD_ONLY} - {"generator", "callback"}
    return {k: v for k, v in settings.items() if k in takes and v is not None}
