"""Noise schedules: the sequence β_1 … β_T and every coefficient derived from it.

Everything is computed once, in float64, and stored under the paper's name, so the diffusion functions
only ever look coefficients up (the habit of openai/improved-diffusion). Index ``t`` of every array is the
paper's step ``t + 1``: ``betas[0]`` is β_1 and ``alpha_bar[T - 1]`` is ᾱ_T.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from ddpm.registry import check_name


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear β from ``beta_start`` to ``beta_end`` (Ho et al. 2020, sec. 4: 1e-4 … 0.02 at T = 1000).

    For other T both ends are scaled by 1000 / T (Nichol & Dhariwal 2021, sec. 3.2 and their code), so that
    the total amount of noise, and hence ᾱ_T, stays about the same whatever the number of steps.
    """
    scale = 1000.0 / T
    return torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)


def scaled_linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β linear in √β between the (1000 / T-rescaled) ends: the "scaled linear" schedule of latent models."""
    scale = 1000.0 / T
    return (
        torch.linspace(math.sqrt(beta_start * scale), math.sqrt(beta_end * scale), T, dtype=torch.float64)
        ** 2
    )


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): ᾱ_t = f(t) / f(0), f(t) = cos²((t/T + s)/(1+s)·π/2).

    β_t = 1 − ᾱ_t / ᾱ_{t−1}, clipped at ``max_beta`` to avoid the singularity at t = T.
    """
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def sigmoid_betas(
    T: int, beta_start: float = 1e-4, beta_end: float = 0.02, start: float = -6.0, end: float = 6.0
) -> torch.Tensor:
    """Sigmoid schedule (Xu et al. 2022, GeoDiff): β follows a logistic curve between the (rescaled) ends."""
    scale = 1000.0 / T
    x = torch.sigmoid(torch.linspace(start, end, T, dtype=torch.float64))
    return beta_start * scale + (beta_end - beta_start) * scale * x


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ so that ᾱ_T = 0 exactly, keeping √ᾱ_1 (Lin et al. 2023, Algorithm 1).

    With SNR(T) = 0 the last step sees pure noise, as sampling does; ε-prediction is then undefined at T,
    so pair this with v- or x0-prediction.
    """
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


# name → β_1 … β_T as a function of T
SCHEDULES = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


@dataclass(frozen=True)
class Schedule:
    """A noise schedule and its derived coefficients (Ho et al. 2020, sec. 2 and eq. 4, 6, 7, 15).

    All tensors have shape ``(T,)`` and dtype float64.
    """

    betas: torch.Tensor  # β_t
    alphas: torch.Tensor  # α_t = 1 − β_t
    alpha_bar: torch.Tensor  # ᾱ_t = Π_{s≤t} α_s
    alpha_bar_prev: torch.Tensor  # ᾱ_{t−1}, with ᾱ_0 = 1
    sqrt_alpha_bar: torch.Tensor  # √ᾱ_t: the signal coefficient of eq. 4
    sqrt_one_minus_alpha_bar: torch.Tensor  # √(1 − ᾱ_t): the noise coefficient of eq. 4
    sqrt_recip_alpha_bar: torch.Tensor  # 1/√ᾱ_t  (eq. 15)
    sqrt_recipm1_alpha_bar: torch.Tensor  # √(1/ᾱ_t − 1)  (eq. 15)
    posterior_variance: torch.Tensor  # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t  (eq. 7)
    posterior_log_variance_clipped: torch.Tensor  # log β̃_t, with β̃_1 = 0 replaced by β̃_2
    posterior_mean_coef1: torch.Tensor  # √ᾱ_{t−1} β_t / (1 − ᾱ_t): multiplies x_0 in μ̃_t  (eq. 7)
    posterior_mean_coef2: torch.Tensor  # √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t): multiplies x_t in μ̃_t  (eq. 7)
    snr: torch.Tensor  # signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021)
    log_snr: torch.Tensor  # λ_t = log SNR(t)

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> Schedule:
        """Derive every coefficient from β, in float64."""
        betas = betas.to(torch.float64)
        alphas = 1 - betas
        return cls._derive(betas, alphas, torch.cumprod(alphas, 0))

    @classmethod
    def from_alpha_bar(cls, alpha_bar: torch.Tensor) -> Schedule:
        """Derive every coefficient from ᾱ, in float64: α_t = ᾱ_t / ᾱ_{t−1} and β_t = 1 − α_t."""
        alpha_bar = alpha_bar.to(torch.float64)
        alphas = alpha_bar / torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        return cls._derive(1 - alphas, alphas, alpha_bar)

    @classmethod
    def _derive(cls, betas: torch.Tensor, alphas: torch.Tensor, alpha_bar: torch.Tensor) -> Schedule:
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError(f"every beta must lie in (0, 1], got {betas.min():.3g} … {betas.max():.3g}")
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        # β̃_1 = 0 (x_0 is known exactly given x_1 and x_0); its log is clipped to the next value.
        first = posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        log_var = torch.log(torch.cat([first, posterior_variance[1:]]))
        snr = alpha_bar / (1 - alpha_bar)
        return cls(
            betas=betas,
            alphas=alphas,
            alpha_bar=alpha_bar,
            alpha_bar_prev=alpha_bar_prev,
            sqrt_alpha_bar=alpha_bar.sqrt(),
            sqrt_one_minus_alpha_bar=(1 - alpha_bar).sqrt(),
            sqrt_recip_alpha_bar=alpha_bar.rsqrt(),
            sqrt_recipm1_alpha_bar=(1 / alpha_bar - 1).sqrt(),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=log_var,
            posterior_mean_coef1=alpha_bar_prev.sqrt() * betas / (1 - alpha_bar),
            posterior_mean_coef2=alphas.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar),
            snr=snr,
            log_snr=snr.log(),
        )

    def respace(self, timesteps: Sequence[int]) -> Schedule:
        """The schedule of the steps ``timesteps`` alone, as if the others had never been there (Nichol &
        Dhariwal 2021, sec. 4): ᾱ is kept at those steps and β_t = 1 − ᾱ_t / ᾱ_s links each to the kept step
        s before it, so every coefficient, the posterior of eq. 6–7 among them, goes from one kept step to
        the next. Index i of the result is the (i + 1)-th smallest of ``timesteps``."""
        return Schedule.from_alpha_bar(self.alpha_bar[sorted(int(t) for t in timesteps)])

    def to(self, device: torch.device | str) -> Schedule:
        """The same schedule with every tensor on ``device`` (kept in float64)."""
        return Schedule(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def make_schedule(name: str = "linear", T: int = 1000, zero_terminal_snr: bool = False, **kwargs) -> Schedule:
    """Build a schedule by name: ``linear``, ``scaled_linear``, ``cosine`` or ``sigmoid``."""
    check_name("schedule", name, SCHEDULES)
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"the number of steps T must be a positive integer, got {T!r}")
    betas = SCHEDULES[name](T, **kwargs)
    if betas.max() >= 1:  # the 1000/T-scaled ends of the linear-type schedules pass 1 for T ≤ 20 or so
        raise ValueError(
            f"the {name} schedule at T = {T} reaches β = {float(betas.max()):.3g} ≥ 1, where ᾱ vanishes "
            "(more steps, or the cosine schedule)"
        )
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return Schedule.from_betas(betas)
