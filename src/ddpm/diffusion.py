"""The diffusion process, one function per equation of Ho et al. 2020 ("DDPM").

Pure functions on tensors: no model, no I/O, no training state. ``t`` is always a long tensor of shape
``(B,)`` holding 0-based indices (index ``t`` is the paper's step ``t + 1``), and a schedule's float64
coefficients are looked up with :func:`extract` and cast to the data's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpm.registry import check_name
from ddpm.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v", "edm")
VARIANCES = ("small", "large")
NOISE_LEVELS = ("uniform", "lognormal")  # how training draws t: uniformly, or EDM's log-normal σ
EDM_SIGMA_DATA = 0.5  # σ_data of EDM's preconditioning (Karras et al. 2022, Table 1: images in [−1, 1])

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def extract(coef: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``coef[t]`` shaped ``(B, 1, …, 1)`` to broadcast against ``x``, on its device, in its dtype."""
    out = coef.to(t.device)[t]
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    return out.to(x.device, dtype).reshape(-1, *([1] * (x.ndim - 1)))


# --- The forward process ---------------------------------------------------------------------------------


def q_step(x_prev: torch.Tensor, t: torch.Tensor, schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """One forward step, x_t ~ q(x_t | x_{t−1}) = N(√(1 − β_t) x_{t−1}, β_t I)  (Ho et al. 2020, eq. 2)."""
    return (
        extract(schedule.alphas.sqrt(), t, x_prev) * x_prev
        + extract(schedule.betas.sqrt(), t, x_prev) * noise
    )


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """Jump straight to step t: x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)  (Ho et al. 2020, eq. 4)."""
    return (
        extract(schedule.sqrt_alpha_bar, t, x0) * x0
        + extract(schedule.sqrt_one_minus_alpha_bar, t, x0) * noise
    )


def q_mean_variance(
    x0: torch.Tensor, t: torch.Tensor, schedule: Schedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean √ᾱ_t x_0 and variance 1 − ᾱ_t of q(x_t | x_0)  (Ho et al. 2020, eq. 4)."""
    return extract(schedule.sqrt_alpha_bar, t, x0) * x0, extract(1 - schedule.alpha_bar, t, x0).expand_as(x0)


def q_posterior_mean_variance(
    x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The posterior q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I)  (Ho et al. 2020, eq. 6–7).

    μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t and
    β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t. Returns (mean, variance, clipped log-variance).
    """
    mean = (
        extract(schedule.posterior_mean_coef1, t, x_t) * x0
        + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    )
    variance = extract(schedule.posterior_variance, t, x_t)
    log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance


# --- EDM's preconditioning on a VP schedule ------------------------------------------------------------


def edm_sigma(schedule: Schedule) -> torch.Tensor:
    """The noise level σ_t = √((1 − ᾱ_t) / ᾱ_t) of each step: x_t / √ᾱ_t = x_0 + σ_t ε is Karras et al.'s
    (2022, sec. 2) variance-exploding view of the same x_t. Float64 of shape (T,)."""
    return schedule.sqrt_recipm1_alpha_bar


def edm_preconditioning(
    schedule: Schedule, sigma_data: float = EDM_SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's D_θ(x; σ) = c_skip(σ) x + c_out(σ) F_θ(c_in(σ) x; c_noise(σ))  (Karras et al. 2022, eq. 7 and
    Table 1) on the steps of a VP schedule, written for x_t = √ᾱ_t x rather than x.

    With c_skip = σ_d² / (σ² + σ_d²), c_out = σ σ_d / √(σ² + σ_d²), c_in = 1 / √(σ² + σ_d²) and σ = σ_t
    (:func:`edm_sigma`), returns (c_skip / √ᾱ_t, c_out, c_in / √ᾱ_t), float64 of shape (T,), so that
    x̂_0 = skip_t · x_t + c_out · F(in_t · x_t). They are computed from ᾱ_t, finite even where ᾱ_t = 0.
    c_noise stays the step index t that our networks take (a monotone function of σ, as EDM's ¼ ln σ is).
    """
    a, d2 = schedule.alpha_bar, sigma_data**2
    var = 1 - a + a * d2  # ᾱ_t (σ_t² + σ_d²): the variance of x_t for data of variance σ_d²
    skip = d2 * a.sqrt() / var  # c_skip / √ᾱ_t
    out = sigma_data * (1 - a).sqrt() / var.sqrt()  # c_out = σ σ_d / √(σ² + σ_d²)
    c_in = 1 / var.sqrt()  # c_in / √ᾱ_t: x_t scaled to unit variance
    return skip, out, c_in


def network_input(x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule, prediction: str) -> torch.Tensor:
    """What the network is given: x_t itself, or for EDM's preconditioning c_in(σ_t) x = in_t · x_t."""
    if prediction != "edm":
        return x_t
    return extract(edm_preconditioning(schedule)[2], t, x_t) * x_t


def noise_level_probabilities(
    schedule: Schedule, noise_levels: str = "uniform", p_mean: float = -1.2, p_std: float = 1.2
) -> torch.Tensor:
    """The probability of each step t in training, float64 of shape (T,).

    "uniform": 1 / T each (Ho et al. 2020, Alg. 1). "lognormal": EDM's ln σ ~ N(P_mean, P_std²)
    (Karras et al. 2022, Table 1), given to the step whose ln σ_t is nearest: the mass of the normal
    between the midpoints of ln σ_t and its neighbours' (the first and last steps take the tails).
    """
    check_name("noise levels", noise_levels, NOISE_LEVELS)
    T = schedule.T
    if noise_levels == "uniform":
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    log_sigma = edm_sigma(schedule).log()
    edges = (log_sigma[1:] + log_sigma[:-1]) / 2  # between neighbouring steps
    cdf = torch.special.ndtr((edges - p_mean) / p_std)
    cdf = torch.cat([cdf.new_zeros(1), cdf, cdf.new_ones(1)])
    return cdf.diff()


def draw_timesteps(u: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """Steps t drawn with the given probabilities from uniform numbers u in [0, 1): the inverse CDF."""
    cdf = probabilities.cumsum(0)
    t = torch.searchsorted(cdf.to(u.device, torch.float64), u.to(torch.float64), right=True)
    return t.clamp(max=probabilities.numel() - 1)


# --- Parameterisations: ε, x_0, v and EDM's F are views of the same x_t --------------------------------


def predict_x0_from_eps(
    x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    """x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t, eq. 4 solved for x_0  (Ho et al. 2020, eq. 15)."""
    return (
        extract(schedule.sqrt_recip_alpha_bar, t, x_t) * x_t
        - extract(schedule.sqrt_recipm1_alpha_bar, t, x_t) * eps
    )


def predict_eps_from_x0(
    x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    """ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t): eq. 15 turned around (finite even where ᾱ_t = 0)."""
    return (x_t - extract(schedule.sqrt_alpha_bar, t, x_t) * x0) / extract(
        schedule.sqrt_one_minus_alpha_bar, t, x_t
    )


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The velocity v = √ᾱ_t ε − √(1 − ᾱ_t) x_0  (Salimans & Ho 2022, sec. 4 and appendix D)."""
    return (
        extract(schedule.sqrt_alpha_bar, t, x0) * eps - extract(schedule.sqrt_one_minus_alpha_bar, t, x0) * x0
    )


def x0_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v  (Salimans & Ho 2022, appendix D)."""
    return (
        extract(schedule.sqrt_alpha_bar, t, x_t) * x_t
        - extract(schedule.sqrt_one_minus_alpha_bar, t, x_t) * v
    )


def eps_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """ε = √(1 − ᾱ_t) x_t + √ᾱ_t v  (Salimans & Ho 2022, appendix D)."""
    return (
        extract(schedule.sqrt_one_minus_alpha_bar, t, x_t) * x_t
        + extract(schedule.sqrt_alpha_bar, t, x_t) * v
    )


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Dynamic thresholding of a predicted x̂_0 (Saharia et al. 2022, "Imagen", sec. 2.3).

    Per sample, s is the ``percentile`` (a fraction such as 0.995) of |x̂_0| over all its elements, floored at
    1; x̂_0 is then clipped to [−s, s] and divided by s, so it lands in [−1, 1]. With s = 1 this is plain
    clipping; when many values saturate, it pulls them back inside rather than flattening them at ±1.
    """
    if not 0 < percentile <= 1:
        raise ValueError(f"the threshold percentile must lie in (0, 1], got {percentile!r}")
    flat = x0.flatten(1)
    # torch.quantile wants float32 or float64; the result goes back to x̂_0's dtype.
    s = torch.quantile(flat.abs().to(torch.promote_types(x0.dtype, torch.float32)), percentile, dim=1)
    s = s.clamp(min=1).to(x0.dtype)[:, None]
    return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape)


def x0_eps_from_output(
    output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    prediction: str = "eps",
    clip_x0: float | None = None,
    threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a network's output as (x̂_0, ε̂), whichever of ε, x_0 or v it predicts.

    With ``clip_x0`` the prediction x̂_0 is clamped to [−clip_x0, clip_x0] (the data range) and ε̂ is
    recomputed from it, so both stay consistent with x_t (Ho et al. 2020, sec. 3.3 and their code).
    ``threshold`` (a percentile such as 0.995) first applies :func:`dynamic_threshold`, which already maps
    x̂_0 into [−1, 1], so a ``clip_x0`` ≥ 1 given as well changes nothing; ε̂ is recomputed the same way.
    """
    check_name("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        eps, x0 = output, predict_x0_from_eps(x_t, t, output, schedule)
    elif prediction == "x0":
        x0, eps = output, predict_eps_from_x0(x_t, t, output, schedule)
    elif prediction == "edm":
        skip, out, _ = edm_preconditioning(schedule)
        x0 = extract(skip, t, x_t) * x_t + extract(out, t, x_t) * output
        eps = predict_eps_from_x0(x_t, t, x0, schedule)
    else:
        x0, eps = x0_from_v(x_t, t, output, schedule), eps_from_v(x_t, t, output, schedule)
    if threshold is not None:
        x0 = dynamic_threshold(x0, threshold)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    if threshold is not None or clip_x0 is not None:
        eps = predict_eps_from_x0(x_t, t, x0, schedule)
    return x0, eps


# --- The reverse process -------------------------------------------------------------------------------


def p_variance(schedule: Schedule, variance: str = "small") -> torch.Tensor:
    """The fixed reverse-process variance σ_t² for every t, float64 of shape (T,)  (Ho et al. 2020, sec. 3.2).

    "small": σ_t² = β̃_t, optimal for deterministic x_0; "large": σ_t² = β_t, optimal for x_0 ~ N(0, I), with
    β_1 replaced by β̃_2 as in Ho et al.'s code, so that log σ_1² stays finite and small.
    """
    check_name("variance", variance, VARIANCES)
    if variance == "small":
        return schedule.posterior_variance
    first = schedule.posterior_variance[1:2] if schedule.T > 1 else schedule.betas[:1]
    return torch.cat([first, schedule.betas[1:]])


def p_mean_variance(
    output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    prediction: str = "eps",
    variance: str = "small",
    clip_x0: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The learned reverse step p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I)  (Ho et al. 2020, eq. 1 and sec. 3.2).

    μ_θ is the posterior mean (eq. 7) evaluated at the predicted x̂_0, which for ε-prediction is exactly
    eq. 11: μ_θ = (x_t − β_t / √(1 − ᾱ_t) · ε_θ) / √α_t; σ_t² is :func:`p_variance`.
    Returns (mean, variance, log-variance, x̂_0).
    """
    x0, _ = x0_eps_from_output(output, x_t, t, schedule, prediction, clip_x0)
    mean, post_var, post_log_var = q_posterior_mean_variance(x0, x_t, t, schedule)
    if variance == "small":  # β̃_1 = 0: its log is the clipped one of the schedule
        return mean, post_var, post_log_var, x0
    var = p_variance(schedule, variance)
    return mean, extract(var, t, x_t), extract(var.log(), t, x_t), x0


def p_sample_step(
    output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor,
    prediction: str = "eps",
    variance: str = "small",
    clip_x0: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_{t−1} = μ_θ(x_t, t) + σ_t z, with no noise added at the last step  (Ho et al. 2020, Alg. 2, line 4).

    Returns (x_{t−1}, x̂_0).
    """
    mean, _, _, x0 = p_mean_variance(output, x_t, t, schedule, prediction, variance, clip_x0)
    sigma = extract(p_variance(schedule, variance).sqrt(), t, x_t)
    nonzero = (t > 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
    return mean + nonzero * sigma * noise, x0


# --- Training -------------------------------------------------------------------------------------------


def training_target(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: Schedule, prediction: str
):
    """What the network regresses: ε (Ho et al. 2020, eq. 14), x_0, v (Salimans & Ho 2022), or EDM's
    effective target F = (x_0 − c_skip x) / c_out (Karras et al. 2022, eq. 8)."""
    check_name("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "edm":
        skip, out, _ = edm_preconditioning(schedule)
        x_t = q_sample(x0, t, schedule, noise)
        return (x0 - extract(skip, t, x0) * x_t) / extract(out, t, x0)
    return v_from_x0_eps(x0, noise, t, schedule)


def min_snr_weight(t: torch.Tensor, schedule: Schedule, prediction: str, gamma: float | None) -> torch.Tensor:
    """Per-sample loss weight of Min-SNR-γ (Hang et al. 2023, sec. 3.4), float32 of shape (B,).

    The x_0-loss weight is min(SNR_t, γ); written in the ε-, v- and EDM F-losses it becomes
    min(SNR_t, γ) / SNR_t, min(SNR_t, γ) / (SNR_t + 1) and min(SNR_t, γ) · c_out². ``gamma=None`` gives the
    plain unweighted loss (weight 1), which for "edm" is EDM's own weighting λ(σ) = 1 / c_out² of the
    x_0-loss (Karras et al. 2022, Table 1).
    """
    if gamma is None:
        return torch.ones(t.shape, device=t.device)
    snr = schedule.snr.to(t.device)[t]
    clipped = snr.clamp(max=gamma)
    if prediction == "edm":
        return (clipped * edm_preconditioning(schedule)[1].to(t.device)[t] ** 2).float()
    # min(SNR, γ) / SNR written as min(γ / SNR, 1), so that SNR = 0 (zero-terminal SNR) gives 1, not 0/0.
    weight = {"eps": (gamma / snr).clamp(max=1.0), "x0": clipped, "v": clipped / (snr + 1)}[prediction]
    return weight.float()


def training_loss(
    model_fn: ModelFn,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    schedule: Schedule,
    prediction: str = "eps",
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """The simplified objective L_simple = ‖target − f_θ(x_t, t)‖² per sample  (Ho et al. 2020, eq. 14).

    ``model_fn(x_t, t)`` is the network; ``t`` is passed as float so the model stays ignorant of the
    schedule. Returns the per-sample (optionally Min-SNR-weighted) mean squared error, shape (B,).
    """
    x_t = q_sample(x0, t, schedule, noise)
    target = training_target(x0, noise, t, schedule, prediction)
    output = model_fn(network_input(x_t, t, schedule, prediction), t.float()).float()
    mse = (output - target.float()).pow(2).flatten(1).mean(1)
    return mse * min_snr_weight(t, schedule, prediction, min_snr_gamma)


# --- The variational bound, for NLL in bits/dim --------------------------------------------------------


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), element-wise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) by the tanh approximation used for the discretised decoder (Ho et al. 2020's code)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bins: int = 256
) -> torch.Tensor:
    """log p(x_0 | x_1) of the discretised Gaussian decoder  (Ho et al. 2020, eq. 13).

    ``x`` holds 8-bit data scaled to [−1, 1]; each value owns a bin of width 2 / (bins − 1), and the edge
    bins extend to ±∞. ``log_scale`` is the decoder's log standard deviation. Element-wise, in nats.
    """
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (x - mean + half))
    cdf_min = approx_standard_normal_cdf(inv_std * (x - mean - half))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def prior_kl(x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per sample, in nats  (Ho et al. 2020, eq. 5)."""
    t = torch.full((x0.shape[0],), schedule.T - 1, device=x0.device, dtype=torch.long)
    mean, var = q_mean_variance(x0, t, schedule)
    zeros = torch.zeros_like(mean)
    return normal_kl(mean, var.log(), zeros, zeros).flatten(1).sum(1)


def vlb_term(
    output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    prediction: str = "eps",
    variance: str = "small",
    discrete: bool = True,
) -> torch.Tensor:
    """One term of the bound, per sample, in nats  (Ho et al. 2020, eq. 5).

    For t > 0 (the paper's t > 1): L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)).
    At t = 0: L_0 = −log p_θ(x_0 | x_1), the discretised decoder of eq. 13 for 8-bit data, or a plain
    Gaussian density when ``discrete`` is false (continuous data such as the 2-D spiral).
    """
    true_mean, _, true_log_var = q_posterior_mean_variance(x0, x_t, t, schedule)
    mean, _, log_var, _ = p_mean_variance(output, x_t, t, schedule, prediction, variance)
    kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).sum(1)
    if discrete:
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
    else:
        nll = 0.5 * (math.log(2 * math.pi) + log_var + (x0 - mean) ** 2 / log_var.exp())
    nll = nll.flatten(1).sum(1)
    return torch.where(t == 0, nll, kl)


@torch.no_grad()
def bits_per_dim(
    model_fn: ModelFn,
    x0: torch.Tensor,
    schedule: Schedule,
    prediction: str = "eps",
    variance: str = "small",
    discrete: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The full variational bound L_T + Σ L_{t−1} + L_0 in bits per dimension (Ho et al. 2020, eq. 5).

    Evaluates every one of the T terms (T network calls). Returns per-sample tensors: ``total``,
    ``prior`` (L_T), ``decoder`` (L_0) and ``terms`` of shape (B, T).
    """
    dims = x0[0].numel()
    to_bits = 1.0 / (dims * math.log(2.0))
    terms = []
    for i in range(schedule.T):
        t = torch.full((x0.shape[0],), i, device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = q_sample(x0, t, schedule, noise)
        output = model_fn(network_input(x_t, t, schedule, prediction), t.float()).to(x0.dtype)
        terms.append(vlb_term(output, x0, x_t, t, schedule, prediction, variance, discrete))
    terms = torch.stack(terms, 1) * to_bits
    prior = prior_kl(x0, schedule) * to_bits
    return {"total": terms.sum(1) + prior, "prior": prior, "decoder": terms[:, 0], "terms": terms}
