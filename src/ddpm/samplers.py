"""Samplers: each turns noise x_T into data with a trained denoiser, one function per algorithm.

Every sampler has one signature, ``sampler(denoise, x_T, schedule, timesteps, *, generator=None,
callback=None, **options)``:

- ``denoise(x_t, t) -> (x̂_0, ε̂)`` wraps the network (:func:`make_denoiser`), so a sampler never needs to
  know whether the network predicts ε, x_0 or v, nor whether guidance or clipping is applied;
- ``timesteps`` is a decreasing sequence of 0-based step indices (all T of them, or a subset chosen by
  :func:`make_timesteps`); each step goes from index t to the next index s, the last one to s = −1,
  where ᾱ = 1: the clean data;
- ``callback(i, t, x_s, x̂_0)`` sees the state after every step and the x̂_0 that produced it;
- options particular to one sampler (``variance`` for DDPM, ``eta`` for DDIM) are keyword arguments, so a
  misplaced option is an error; :func:`sampler_options` picks those one sampler takes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch

from ddpm.diffusion import (
    edm_sigma,
    extract,
    network_input,
    p_variance,
    q_posterior_mean_variance,
    x0_eps_from_output,
)
from ddpm.registry import check_name
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

    ``prediction`` says what the network outputs (ε, x_0, v or EDM's F; for F its input is scaled by c_in).
    ``clip_x0`` clamps x̂_0 to the data range;
    ``threshold`` (a percentile such as 0.995) applies Imagen's dynamic thresholding (Saharia et al. 2022,
    sec. 2.3). Either way ε̂ is recomputed from the final x̂_0 (see :func:`x0_eps_from_output`).
    """
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"threshold is a percentile in (0, 1], such as 0.995; got {threshold!r}")

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = model_fn(network_input(x_t, t, schedule, prediction), t.float()).to(x_t.dtype)
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


def autoguidance(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    guide_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    guidance: float,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself", sec. 3):
    ε̃ = (1 + w) ε(x_t) − w ε_bad(x_t).

    Classifier-free guidance's rule with the unconditional pass replaced by ``guide_fn``, a weaker version
    of the same model (trained for fewer steps, or smaller), so that it also guides unconditional models.
    The paper's weight is our w + 1. Both networks must output the same quantity on the same schedule.
    """

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        good = model_fn(x_t, t)
        return good + guidance * (good - guide_fn(x_t, t))

    return guided


def guidance_interval(
    guided_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    plain_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: Schedule,
    sigma_lo: float,
    sigma_hi: float,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Guidance in a limited interval (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval…",
    sec. 3): the guided output where the step's noise level σ_t (:func:`ddpm.diffusion.edm_sigma`) lies in
    (σ_lo, σ_hi], the plain one elsewhere; outside the interval the guide's pass is not run at all."""
    if not 0 <= sigma_lo < sigma_hi:
        raise ValueError(f"a guidance interval is 0 ≤ σ_lo < σ_hi; got ({sigma_lo:g}, {sigma_hi:g}]")
    sigma = edm_sigma(schedule)

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = sigma.to(t.device)[t.long()]
        inside = (s > sigma_lo) & (s <= sigma_hi)
        if bool(inside.all()):
            return guided_fn(x_t, t)
        if not bool(inside.any()):
            return plain_fn(x_t, t)
        mask = inside.view(-1, *([1] * (x_t.ndim - 1)))
        return torch.where(mask, guided_fn(x_t, t), plain_fn(x_t, t))

    return fn


# --- Which steps to visit ---------------------------------------------------------------------------------

SPACINGS = ("uniform", "trailing", "quadratic", "logsnr", "karras")
# The "karras" spacing's σ range and ρ (EDM's ρ = 7; σ_max and σ_min chosen by measurement on the headline
# MNIST model: docs/results.md, "The sampler and spacing by measurement").
KARRAS_SIGMA_MAX = 20.0
KARRAS_SIGMA_MIN = 0.3
KARRAS_RHO = 7.0


def full_timesteps(schedule: Schedule) -> list[int]:
    """All steps, from T − 1 down to 0: the original DDPM sampler."""
    return list(range(schedule.T - 1, -1, -1))


def make_timesteps(schedule: Schedule, steps: int, spacing: str = "uniform") -> list[int]:
    """``steps`` distinct step indices in 0 … T − 1, decreasing: where a shortened sampler stops.

    - "uniform": round(i · T / steps), i = 0 … steps − 1: DDIM's and diffusers' "leading" spacing (with an
      unfloored stride); it starts at 0 and its largest step falls short of T − 1.
    - "trailing": round(T − i · T / steps) − 1 (Lin et al. 2024, Table 2): always starts at T − 1.
    - "quadratic": (T − 1) · (i / (steps − 1))², denser near the data (Song et al. 2021, appendix D.2).
    - "logsnr": uniform in λ = log SNR between the first and the last step, each mapped to the nearest step.
    - "karras": T − 1 (pure noise, as "trailing"), then the steps whose σ_t are nearest EDM's noise levels
      (:func:`karras_sigmas`) from :data:`KARRAS_SIGMA_MAX` down to :data:`KARRAS_SIGMA_MIN`.

    Values that round onto the same integer are pushed apart; ``steps = T`` gives every step.
    """
    check_name("spacing", spacing, SPACINGS)
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
        nearest = _nearest_steps(lam, targets)
        nearest[0] = T - 1  # moves off T − 2 only when λ_T = −∞
        timesteps = _distinct(nearest)
    else:  # "karras"
        log_sigma = edm_sigma(schedule).cpu().log()  # increasing in t; ∞ where ᾱ = 0
        targets = karras_sigmas(steps - 1, KARRAS_SIGMA_MAX, KARRAS_SIGMA_MIN, KARRAS_RHO).log()
        timesteps = _distinct([T - 1, *_nearest_steps(log_sigma, targets)])
    return sorted(set(timesteps), reverse=True)


def karras_sigmas(n: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's time steps (Karras et al. 2022, eq. 5): σ_i = (σ_max^(1/ρ) + i/(n − 1) · (σ_min^(1/ρ) −
    σ_max^(1/ρ)))^ρ for i = 0 … n − 1, without the final σ_N = 0; n = 1 gives σ_max. Float64 of shape (n,)."""
    i = torch.arange(n, dtype=torch.float64)
    return (
        sigma_max ** (1 / rho) + i / max(n - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    ) ** rho


def _nearest_steps(values: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """For each target, the step whose value (λ_t or log σ_t, one per step) is nearest it."""
    return (values[None, :] - targets[:, None]).abs().argmin(1).tolist()


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


def _sigma(schedule: Schedule, t: int) -> float:
    """σ_t = √((1 − ᾱ_t) / ᾱ_t): the noise level of step t in EDM's variables (Karras et al. 2022, sec. 2),
    where x_t / √ᾱ_t = x_0 + σ_t ε; 0 at t = −1 (the data), ∞ where ᾱ_t = 0 (zero terminal SNR)."""
    return 0.0 if t < 0 else float(edm_sigma(schedule)[t])


def _at(x: torch.Tensor, t: int) -> torch.Tensor:
    """Step t for every sample of the batch x, as the denoiser takes it."""
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


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

    Each step draws x_s ~ q(x_s | x_t, x̂_0), the posterior of eq. 6–7 at the predicted x̂_0, in the
    schedule respaced to the visited steps (:meth:`Schedule.respace`), so that skipped steps work too.
    ``variance`` picks σ² = β̃ ("small") or β ("large"); no noise is added at the last step.
    """
    timesteps = _checked(schedule, timesteps)
    spaced = schedule.respace(timesteps)  # the visited steps alone, smallest first
    sigma = p_variance(spaced, variance).sqrt()
    x = x_T
    for i, t in enumerate(timesteps):
        x, x0 = ancestral_step(denoise, x, t, len(timesteps) - 1 - i, spaced, sigma, generator)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def ancestral_step(
    denoise: Denoiser,
    x: torch.Tensor,
    t: int,
    j: int,
    spaced: Schedule,
    sigma: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Algorithm 2 (Ho et al. 2020) from step index ``t``, which is index ``j`` of the respaced
    schedule ``spaced``: x_s = μ̃(x_t, x̂_0) + σ z (eq. 7), with no noise on the last step (j = 0).
    ``sigma`` holds σ of every respaced step (:func:`p_variance`). Returns (x_s, x̂_0)."""
    jj = torch.full((x.shape[0],), j, device=x.device, dtype=torch.long)
    x0, _ = denoise(x, torch.full_like(jj, t))
    mean, _, _ = q_posterior_mean_variance(x0, x, jj, spaced)  # μ̃(x_t, x̂_0), eq. 7
    if j == 0:
        return mean, x0
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # Alg. 2, line 4
    return mean + extract(sigma, jj, x) * z, x0


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
    """Denoising diffusion implicit models (Song et al. 2021, eq. 12 with σ(η) of eq. 16; their α is our ᾱ).

    η = 0 is deterministic; η = 1 gives σ² = β̃ of the respaced schedule, and the step is then exactly
    :func:`ddpm_sample`'s with variance "small", with the same noise (z is drawn only when η > 0).
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
        # eq. 12: the predicted x_0, the direction pointing to x_t, and random noise
        x = ab_s**0.5 * x0 + max(1 - ab_s - sigma**2, 0.0) ** 0.5 * eps
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
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2): a second-order multistep solver of
    the probability-flow ODE in λ = log(α / σ), with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) and h = λ_s − λ_t:

        x_s = (σ_s / σ_t) x_t − α_s (e^(−h) − 1) D,    D: :func:`_multistep_x0`.

    The last step, into σ = 0 where λ = +∞, is first order and returns x̂_0 (the paper stops at a small
    time instead). Deterministic: ``generator`` is unused.
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
            D = _multistep_x0(x0, x0_prev, h, h_prev)  # second order: extrapolate x̂_0 in λ
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
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095): the multistep data-prediction solver of the
    reverse SDE instead of the ODE. With D held constant over the step, exactly

        x_s = (σ_s / σ_t) e^(−h) x_t + α_s (1 − e^(−2h)) D + σ_s √(1 − e^(−2h)) z,

    whose coefficients are those of the posterior q(x_s | x_t, x_0) of Ho et al. 2020, eq. 6–7: with
    D = x̂_0(t) this is :func:`ddpm_sample`'s step. D is :func:`_multistep_x0`; the last step returns x̂_0.
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
            D = _multistep_x0(x0, x0_prev, h, h_prev)  # second order: extrapolate x̂_0 in λ
            ab_t, ab_s = _alpha_bar(schedule, t), _alpha_bar(schedule, s)
            one_minus = -math.expm1(-2 * h)  # 1 − e^(−2h)
            x_coef = ((1 - ab_s) / (1 - ab_t)) ** 0.5 * math.exp(-h)  # (σ_s / σ_t) e^(−h)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x_coef * x + ab_s**0.5 * one_minus * D + ((1 - ab_s) * one_minus) ** 0.5 * noise
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i, t, x, x0)
    return x


# EDM's largest noise level (Karras et al. 2022, Table 1: σ_max = 80). Heun's correction averages the slopes
# at both ends of a step and multiplies the average by the step's length, so on a step from far above it
# (the cosine schedule's last step has σ ≈ 2·10⁴, so trailing grids start there) a slope difference of a
# few per cent becomes an error of hundreds; there the Euler step (DDIM's, exact as σ → ∞) is taken alone.
HEUN_SIGMA_MAX = 80.0


def _heun_step(denoise: Denoiser, x_t: torch.Tensor, t: int, s: int, schedule: Schedule):
    """One step of Heun's method from step t to step s (s = −1: σ = 0) in EDM's variables x = x_t / √ᾱ_t
    (Karras et al. 2022, Alg. 1, lines 4–8), where the slope d = (x − D(x; σ)) / σ is our ε̂; an Euler step
    alone from above :data:`HEUN_SIGMA_MAX`. Returns x_s (back in our variables, √ᾱ_s x) and the x̂_0 of the
    step's first evaluation."""
    sigma_t, sigma_s = _sigma(schedule, t), _sigma(schedule, s)
    x0, d = denoise(x_t, _at(x_t, t))  # D(x; σ_t) and d_i = (x − D(x; σ_t)) / σ_t
    if math.isinf(sigma_t):  # zero terminal SNR: x = ∞; the Euler step's limit is x̂_0 + σ_s d, no correction
        return _alpha_bar(schedule, s) ** 0.5 * (x0 + sigma_s * d), x0
    x = x_t / _alpha_bar(schedule, t) ** 0.5
    x_next = x + (sigma_s - sigma_t) * d  # Euler step (line 5)
    if sigma_s > 0 and sigma_t <= HEUN_SIGMA_MAX:  # second-order correction (lines 6–8): mean of the slopes
        scale_s = _alpha_bar(schedule, s) ** 0.5
        _, d_next = denoise(scale_s * x_next, _at(x_t, s))
        x_next = x + (sigma_s - sigma_t) * (0.5 * d + 0.5 * d_next)
    return _alpha_bar(schedule, s) ** 0.5 * x_next, x0


@torch.no_grad()
def heun_sample(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int] | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1): Heun's method on the probability-flow
    ODE dx/dσ = (x − D(x; σ)) / σ of x = x_t / √ᾱ_t, whose noise level at step t is σ_t = √((1 − ᾱ_t) / ᾱ_t).

    It steps between the σ of the visited steps and from the last to σ = 0, so the network only sees the
    steps it was trained at. Its Euler step is DDIM's; each step but the last (an Euler step into σ = 0)
    evaluates the network twice: 2n − 1 evaluations on n steps (:func:`network_evaluations`).
    Deterministic: ``generator`` is unused.
    """
    timesteps = _checked(schedule, timesteps)
    x = x_T
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        x, x0 = _heun_step(denoise, x, t, s, schedule)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def _step_near_sigma(schedule: Schedule, t: int, sigma: float) -> int:
    """The step whose σ is nearest ``sigma``, and not below t: where Algorithm 2's raised noise level t̂
    lands on the steps the network was trained at."""
    sigmas = edm_sigma(schedule)  # ∞ where ᾱ = 0
    return max(int((sigmas - sigma).abs().argmin()), t)


@torch.no_grad()
def heun_churn_sample(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int] | None = None,
    *,
    s_churn: float = 30.0,
    s_tmin: float = 0.01,
    s_tmax: float = 1.0,
    s_noise: float = 1.007,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): before each Heun step, noise raises σ_i by
    the factor 1 + γ_i, γ_i = min(S_churn / n, √2 − 1) on n steps when S_tmin ≤ σ_i ≤ S_tmax (else 0), with
    noise of standard deviation S_noise. The defaults are the paper's for CIFAR-10 (Table 5).

    On our discrete steps the raised level t̂ is the step whose σ is nearest (1 + γ_i) σ_i, so that the
    network is evaluated where it was trained; noise is drawn only when t̂ is above t_i. With S_churn = 0
    this is :func:`heun_sample`, with no draw. Evaluations as Heun's: 2n − 1.
    """
    if s_churn < 0 or s_noise <= 0 or not 0 <= s_tmin <= s_tmax:
        raise ValueError(
            f"need s_churn ≥ 0, s_noise > 0 and 0 ≤ s_tmin ≤ s_tmax, got s_churn={s_churn!r}, "
            f"s_noise={s_noise!r}, s_tmin={s_tmin!r}, s_tmax={s_tmax!r}"
        )
    timesteps = _checked(schedule, timesteps)
    x = x_T
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        sigma = _sigma(schedule, t)
        gamma = min(s_churn / len(timesteps), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0  # line 4
        t_hat = _step_near_sigma(schedule, t, (1 + gamma) * sigma)
        if t_hat > t:  # lines 5–6: x̂ = x + √(σ̂² − σ²) ε, ε ~ N(0, S_noise² I), in EDM's variables
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_ve = x / _alpha_bar(schedule, t) ** 0.5
            x_ve = x_ve + (_sigma(schedule, t_hat) ** 2 - sigma**2) ** 0.5 * s_noise * z
            x = _alpha_bar(schedule, t_hat) ** 0.5 * x_ve
        x, x0 = _heun_step(denoise, x, t_hat, s, schedule)  # lines 7–11: Heun's step from σ̂ to σ_{i+1}
        if callback is not None:
            callback(i, t, x, x0)
    return x


def _unipc_rho(r: list[float], h: float) -> list[float]:
    """UniPC's weights ρ for data prediction with B(h) = e^(−h) − 1 ("bh2"; Zhao et al. 2023, sec. 3): the
    solution of Σ_k ρ_k r_k^(i−1) = i! (−h) φ_{i+1}(−h) / B(h), i = 1 … K, where φ_1(z) = (e^z − 1) / z and
    φ_{i+1}(z) = (φ_i(z) − 1/i!) / z. For one point ρ = ½, as the paper takes for UniP-2 and UniC-1."""
    if len(r) == 1:
        return [0.5]
    z = -h
    phi = math.expm1(z) / z  # φ_1
    b = []
    for i in range(1, len(r) + 1):
        phi = (phi - 1 / math.factorial(i)) / z  # φ_{i+1}
        b.append(math.factorial(i) * z * phi / math.expm1(z))
    R = torch.tensor([[rk ** (i - 1) for rk in r] for i in range(1, len(r) + 1)], dtype=torch.float64)
    return torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()


def _unipc_update(
    x: torch.Tensor,
    t: int,
    s: int,
    schedule: Schedule,
    m0: torch.Tensor,
    earlier: list[tuple[float, torch.Tensor]],
    m_s: torch.Tensor | None = None,
) -> torch.Tensor:
    """UniPC's update of data prediction from step t to step s (Zhao et al. 2023, sec. 3), with h = λ_s − λ_t:

        x_s = (σ_s / σ_t) x − α_s (e^(−h) − 1) m0 − α_s B(h) Σ_k ρ_k D_k,   D_k = (m_k − m0) / r_k,

    m0 = x̂_0 at t and ``earlier`` points (λ_k, m_k), r_k = (λ_k − λ_t) / h: the predictor UniP. Given m_s,
    the x̂_0 at the predicted x_s, the point (r = 1, m_s) joins them: the corrector UniC. The first-order
    part is DPM-Solver++'s step; B(h) = e^(−h) − 1."""
    lam_t, lam_s = _lambda(schedule, t), _lambda(schedule, s)
    h = lam_s - lam_t
    points = [((lam_k - lam_t) / h, m_k) for lam_k, m_k in earlier]
    if m_s is not None:
        points.append((1.0, m_s))
    ab_t, ab_s = _alpha_bar(schedule, t), _alpha_bar(schedule, s)
    x_s = ((1 - ab_s) / (1 - ab_t)) ** 0.5 * x - ab_s**0.5 * math.expm1(-h) * m0  # first order
    if points:
        rho = _unipc_rho([r for r, _ in points], h)
        correction = sum(rho_k * (m_k - m0) / r_k for rho_k, (r_k, m_k) in zip(rho, points))
        x_s = x_s - ab_s**0.5 * math.expm1(-h) * correction
    return x_s


@torch.no_grad()
def unipc_sample(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int] | None = None,
    *,
    order: int = 2,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """UniPC (Zhao et al. 2023, arXiv 2302.04867): a multistep predictor UniP-p and corrector UniC-p of the
    probability-flow ODE in data prediction, B(h) = e^(−h) − 1 ("bh2"). Once the network has seen the
    predicted x_t, UniC redoes the step that led there with that x̂_0 as one more point, which raises the
    order by one at no extra evaluation; the next step starts from the corrected x_t.

    One network evaluation a step. The order is lowered on the first steps (the points there are) and the
    last (at most the steps left), so the last step, into σ = 0, returns x̂_0 (:func:`_unipc_update`).
    ``order`` 2 with UniC is third order. Deterministic: ``generator`` is unused.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    timesteps = _checked(schedule, timesteps)
    x = x_T
    earlier: list[tuple[float, torch.Tensor]] = []  # (λ, x̂_0) of the steps before, the latest last
    last = None  # the latest predictor step: its start x, its step, its x̂_0 and its earlier points
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        x0, _ = denoise(x, _at(x, t))
        if last is not None:  # UniC: the step into t again, with the new x̂_0
            x = _unipc_update(*last[:2], t, schedule, *last[2:], m_s=x0)
        usable = [p for p in earlier if math.isfinite(p[0])]  # λ = −∞ (zero terminal SNR) gives no slope
        p = min(order, 1 + len(usable), len(timesteps) - i)
        points = usable[len(usable) - (p - 1) :][::-1]  # the p − 1 latest, the nearest first
        last = (x, t, x0, points)
        x = _unipc_update(x, t, s, schedule, x0, points)  # UniP-p
        earlier.append((_lambda(schedule, t), x0))
        if callback is not None:
            callback(i, t, x, x0)
    return x


SAMPLERS = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpmpp2m": dpmpp_2m_sample,
    "dpmpp2m-sde": dpmpp_2m_sde_sample,
    "heun": heun_sample,
    "heun-churn": heun_churn_sample,
    "unipc": unipc_sample,
}


# Heun's method evaluates the network twice a step, but once on the last (an Euler step into σ = 0).
TWO_EVALUATIONS_A_STEP = ("heun", "heun-churn")


def network_evaluations(name: str, steps: int) -> int:
    """How many times sampler ``name`` evaluates the network on ``steps`` steps (at most: from above
    :data:`HEUN_SIGMA_MAX`, e.g. σ = ∞ under zero terminal SNR, Heun's first step is an Euler step)."""
    return 2 * steps - 1 if name in TWO_EVALUATIONS_A_STEP else steps


def steps_within(name: str, evaluations: int) -> int:
    """The most steps sampler ``name`` takes in ``evaluations`` network evaluations (at least one step).
    ``--steps K`` counts evaluations, so that samplers compare at equal cost (Heun: K − 1 when K is even)."""
    return max(1, (evaluations + 1) // 2) if name in TWO_EVALUATIONS_A_STEP else evaluations


# The sampler and spacing of a run whose config says "auto" (new runs' default), by the number of network
# evaluations: the first row whose bound (None: any) is at least the count. Measured on the headline MNIST
# model (pretrained/mnist-unet) at 10, 20, 50 and 100 evaluations, trailing and karras spacings, every
# sampler at 10: docs/results.md, "The sampler and spacing by measurement", with the commands;
# tests/test_sampler_table.py checks this table against that sweep in benchmarks/results.json. The
# stochastic solver throughout: with EDM's spacing up to 50, trailing from 51 to 100 (karras's last jump,
# from σ = 0.3, costs more than its steps gain there; 51–99 were not measured); above 100 (unmeasured but
# for all T steps) what runs did before the table: DDPM, uniform.
AUTO: tuple[tuple[int | None, str, str], ...] = (
    (50, "dpmpp2m-sde", "karras"),
    (100, "dpmpp2m-sde", "trailing"),
    (None, "ddpm", "uniform"),
)
# Every one of the T steps (a small T, such as the spiral's): the sweep's reference, Ho et al.'s Alg. 2.
EVERY_STEP = ("ddpm", "uniform")


def auto_sampling(evaluations: int, T: int | None = None) -> tuple[str, str]:
    """The (sampler, spacing) that :data:`AUTO` gives for ``evaluations`` network evaluations a sample;
    :data:`EVERY_STEP` when they cover all ``T`` steps of the schedule."""
    if T is not None and evaluations >= T:
        return EVERY_STEP
    return next((sampler, spacing) for most, sampler, spacing in AUTO if most is None or evaluations <= most)


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler registered under ``name``, or a one-line error naming the choices."""
    return SAMPLERS[check_name("sampler", name, SAMPLERS)]


def sampler_options(name: str, **settings) -> dict:
    """The ``settings`` that sampler ``name`` takes (``variance`` goes to DDPM only, ``eta`` to DDIM only);
    settings given as None are left out, so the sampler's default applies."""
    params = inspect.signature(get_sampler(name)).parameters.values()
    takes = {p.name for p in params if p.kind is p.KEYWORD_ONLY} - {"generator", "callback"}
    return {k: v for k, v in settings.items() if k in takes and v is not None}
