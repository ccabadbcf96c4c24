"""A plain NumPy reference of Gaussian diffusion, written straight from the equations of Ho et al. 2020.

This is the teaching version of :mod:`ddpm.diffusion` (the series' "1_2 Gaussian diffusion" step): float64
NumPy, no torch and no precomputed coefficient table, so the tests can check the library against an
independent derivation. Index ``t`` is 0-based (``t = 0`` is the paper's t = 1); it may be an int or an
integer array of shape ``(B,)`` indexing the leading axis of the data.
"""

from __future__ import annotations

import math

import numpy as np


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """β_t linear from 1e-4 to 0.02 at T = 1000 (Ho et al. 2020, sec. 4); both ends scaled by 1000 / T."""
    scale = 1000.0 / T
    return np.linspace(beta_start * scale, beta_end * scale, T, dtype=np.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1+s) · π/2).

    β_t = 1 − ᾱ_t / ᾱ_{t−1}, clipped at ``max_beta``.
    """
    betas = np.empty(T, dtype=np.float64)
    for t in range(1, T + 1):
        a_now = math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        a_prev = math.cos(((t - 1) / T + s) / (1 + s) * math.pi / 2) ** 2
        betas[t - 1] = min(1.0 - a_now / a_prev, max_beta)
    return betas


def alphas_and_alpha_bar(betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """α_t = 1 − β_t and ᾱ_t = Π_{s≤t} α_s (Ho et al. 2020, sec. 2, above eq. 4), by an explicit loop."""
    alphas = 1.0 - np.asarray(betas, dtype=np.float64)
    alpha_bar = np.empty_like(alphas)
    running = 1.0
    for i, a in enumerate(alphas):
        running *= a
        alpha_bar[i] = running
    return alphas, alpha_bar


def _at(values: np.ndarray, t, x: np.ndarray) -> np.ndarray:
    """``values[t]`` shaped to broadcast against ``x`` (one value per sample when ``t`` is an array)."""
    v = np.asarray(values)[t]
    return v.reshape(np.shape(t) + (1,) * (np.ndim(x) - np.ndim(t)))


def forward_step(x_prev: np.ndarray, t, betas: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """x_t = √(1 − β_t) x_{t−1} + √β_t ε, a draw of q(x_t | x_{t−1}) (Ho et al. 2020, eq. 2)."""
    beta = _at(betas, t, x_prev)
    return np.sqrt(1.0 - beta) * x_prev + np.sqrt(beta) * noise


def q_sample(x0: np.ndarray, t, betas: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a draw of q(x_t | x_0) (Ho et al. 2020, eq. 4)."""
    abar = _at(alphas_and_alpha_bar(betas)[1], t, x0)
    return np.sqrt(abar) * x0 + np.sqrt(1.0 - abar) * noise


def posterior_mean_variance(x0: np.ndarray, x_t: np.ndarray, t, betas: np.ndarray):
    """Mean μ̃_t and variance β̃_t of q(x_{t−1} | x_t, x_0) (Ho et al. 2020, eq. 6–7).

    μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t,
    β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t, with ᾱ_0 = 1 (so β̃_1 = 0).
    """
    alphas, alpha_bar = alphas_and_alpha_bar(betas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    beta, alpha = _at(betas, t, x_t), _at(alphas, t, x_t)
    abar, abar_prev = _at(alpha_bar, t, x_t), _at(alpha_bar_prev, t, x_t)
    mean = np.sqrt(abar_prev) * beta / (1 - abar) * x0 + np.sqrt(alpha) * (1 - abar_prev) / (1 - abar) * x_t
    variance = (1 - abar_prev) / (1 - abar) * beta
    return mean, np.broadcast_to(variance, np.shape(x_t))


def predict_x0_from_eps(x_t: np.ndarray, t, eps: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t: eq. 4 solved for x_0 (Ho et al. 2020, eq. 15)."""
    abar = _at(alphas_and_alpha_bar(betas)[1], t, x_t)
    return (x_t - np.sqrt(1.0 - abar) * eps) / np.sqrt(abar)


def reverse_step(
    eps_pred: np.ndarray,
    x_t: np.ndarray,
    t,
    betas: np.ndarray,
    noise: np.ndarray,
    variance: str = "small",
    clip: float | None = None,
) -> np.ndarray:
    """x_{t−1} = (x_t − β_t / √(1 − ᾱ_t) · ε_θ) / √α_t + σ_t z (Ho et al. 2020, Alg. 2 line 4 and eq. 11).

    σ_t² = β̃_t (``"small"``) or β_t (``"large"``), sec. 3.2; no noise at the last step (paper's t = 1).
    With ``clip``, x̂_0 of eq. 15 is clamped to [−clip, clip] and the mean is the posterior mean μ̃_t(x̂_0, x_t)
    of eq. 7, which equals the ε form above when nothing is clipped.
    """
    alphas, alpha_bar = alphas_and_alpha_bar(betas)
    if clip is None:
        beta, alpha, abar = _at(betas, t, x_t), _at(alphas, t, x_t), _at(alpha_bar, t, x_t)
        mean = (x_t - beta / np.sqrt(1 - abar) * eps_pred) / np.sqrt(alpha)
        post_var = posterior_mean_variance(x_t, x_t, t, betas)[1]
    else:
        x0 = np.clip(predict_x0_from_eps(x_t, t, eps_pred, betas), -clip, clip)
        mean, post_var = posterior_mean_variance(x0, x_t, t, betas)
    if variance == "small":
        sigma2 = post_var
    elif variance == "large":
        sigma2 = np.broadcast_to(_at(betas, t, x_t), np.shape(x_t))
    else:
        raise ValueError(f"unknown variance {variance!r}; choose 'small' or 'large'")
    not_last = _at(np.arange(len(betas)) > 0, t, x_t)
    return mean + not_last * np.sqrt(sigma2) * noise
