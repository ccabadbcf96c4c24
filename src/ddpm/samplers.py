"""Samplers: each turns noise x_T into data with a trained denoiser, one function per algorithm.

Every sampler has one signature, ``sampler(denoise, x_T, schedule, timesteps, *, generator=None,
callback=None, **options)``:

- ``denoise(x_t, t) -> (x̂_0, ε̂)`` wraps the network (see :func:`make_denoiser`), so a sampler never needs
  to know whether the network predicts ε, x_0 or v, nor whether guidance or clipping is applied;
- ``timesteps`` is a decreasing sequence of 0-based step indices (all T of them, or a subset);
- ``callback(i, t, x_t, x0)`` sees every intermediate state (for GIFs of the reverse process).
"""

from __future__ import annotations

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
) -> Denoiser:
    """Wrap a network ``model_fn(x_t, t_float)`` as ``denoise(x_t, t) -> (x̂_0, ε̂)``."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = model_fn(x_t, t.float()).to(x_t.dtype)
        return x0_eps_from_output(output, x_t, t, schedule, prediction, clip_x0)

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


def full_timesteps(schedule: Schedule) -> list[int]:
    """All steps, from T − 1 down to 0: the original DDPM sampler."""
    return list(range(schedule.T - 1, -1, -1))


def _alpha_bar(schedule: Schedule, t: int) -> float:
    """ᾱ at index t, with ᾱ = 1 before the first step (t = −1)."""
    return 1.0 if t < 0 else float(schedule.alpha_bar[t])


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
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    timesteps = list(full_timesteps(schedule) if timesteps is None else timesteps)
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


SAMPLERS = {"ddpm": ddpm_sample}
