"""What else a trained denoiser can do with an image: inpaint it, edit it, invert it to noise, interpolate.

Pure functions on tensors, built on the samplers' ``denoise(x_t, t) -> (x̂_0, ε̂)`` (:mod:`ddpm.samplers`),
so guidance, clipping and the parameterisation are the denoiser's business, as in sampling. ``timesteps``
are decreasing step indices, as the samplers take them (:func:`ddpm.samplers.make_timesteps`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ddpm.diffusion import p_variance, q_sample, q_step
from ddpm.samplers import Denoiser, _alpha_bar, _checked, ancestral_step, ddpm_sample
from ddpm.schedules import Schedule

# --- Inpainting: RePaint ----------------------------------------------------------------------------------


def repaint_schedule(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The levels RePaint visits (Lugmayr et al. 2022, sec. 4.2, "resampling"): level 0 is x_T, level
    ``steps`` the clean x_0, and each move goes one level down (a reverse step) or up (a forward step).

    The way down is cut into segments of ``jump_length`` levels; each is walked down ``jump_n_sample``
    times, jumping back to its top in between. ``jump_length = 1`` is Algorithm 1 with U = ``jump_n_sample``;
    as there, the last segment, which ends at x_0, is walked once.
    """
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"jump length and repeats must be ≥ 1, got {jump_length} and {jump_n_sample}")
    path, top = [0], 0
    while top < steps:
        bottom = min(top + jump_length, steps)
        walks = jump_n_sample if bottom < steps else 1
        for r in range(walks):
            path += range(top + 1, bottom + 1)  # down the segment
            if r + 1 < walks:
                path += range(bottom - 1, top - 1, -1)  # and back up to its top
        top = bottom
    return path


def repaint_evaluations(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> int:
    """Network evaluations of one :func:`repaint` run: one per move down."""
    path = repaint_schedule(steps, jump_length, jump_n_sample)
    return sum(b > a for a, b in zip(path, path[1:]))


@torch.no_grad()
def repaint(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int] | None,
    x0: torch.Tensor,
    keep: torch.Tensor,
    *,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    variance: str = "small",
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Inpainting with RePaint (Lugmayr et al. 2022, Algorithm 1 and the resampling of sec. 4.2).

    ``keep`` (bool, broadcastable to ``x0``) marks the known pixels of ``x0``. At every level the known
    pixels are x0 noised to that level, x_t ~ q(x_t | x_0) (eq. 4), and the unknown ones come from the
    model's reverse step (Algorithm 2); jumping back up one level is a forward step q(x_t | x_{t−1}) (eq. 2)
    of the respaced schedule, so that the model sees the combined image and harmonises the two parts. The
    levels follow :func:`repaint_schedule`; at the end the known pixels are ``x0`` exactly.
    ``callback(i, t, x, x̂_0)`` sees every reverse step.
    """
    timesteps = _checked(schedule, timesteps)
    K = len(timesteps)
    spaced = schedule.respace(timesteps)  # level k < K is timesteps[k], index K − 1 − k of `spaced`
    sigma = p_variance(spaced, variance).sqrt()

    def noise() -> torch.Tensor:
        return torch.randn(x_T.shape, generator=generator, device=x_T.device, dtype=x_T.dtype)

    path = repaint_schedule(K, jump_length, jump_n_sample)
    x = x_T
    for i, (k, to) in enumerate(zip(path, path[1:])):
        j = torch.full((x.shape[0],), K - 1 - k, device=x.device, dtype=torch.long)
        if to < k:  # jump back: x_{t_{k−1}} ~ q(· | x_{t_k}), eq. 2 in the respaced schedule
            x = q_step(x, j + 1, spaced, noise())
            continue
        # unknown pixels: the model's reverse step from level k
        unknown, x0_hat = ancestral_step(denoise, x, timesteps[k], K - 1 - k, spaced, sigma, generator)
        # known pixels: x0 noised to the level reached (x0 itself at the clean level)
        known = x0 if to == K else q_sample(x0, j - 1, spaced, noise())
        x = torch.where(keep, known, unknown)
        if callback is not None:
            callback(i, timesteps[k], x, x0_hat)
    return x


# --- Editing: SDEdit --------------------------------------------------------------------------------------


def sdedit_start(schedule: Schedule, strength: float) -> int:
    """The step index SDEdit starts from: round(strength · T) − 1, i.e. t_0 = strength · T of the paper's
    t ∈ [0, 1] (Meng et al. 2022); −1 (nothing to do) when strength · T rounds to 0."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must lie in [0, 1] (0: the image, 1: a new sample), got {strength!r}")
    return round(strength * schedule.T) - 1


@torch.no_grad()
def sdedit(
    denoise: Denoiser,
    x0: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int] | None,
    strength: float,
    *,
    sampler: Callable[..., torch.Tensor] = ddpm_sample,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    **options,
) -> torch.Tensor:
    """SDEdit (Meng et al. 2022, Algorithm 1): noise the image to t_0 = strength · T with q(x_{t_0} | x_0)
    (Ho et al. 2020, eq. 4), then denoise it with any sampler of :mod:`ddpm.samplers`.

    The sampler starts at t_0 and then visits those of ``timesteps`` below it, so an edit costs about
    ``strength`` times a full sampling run. Strength 0 returns ``x0``; 1 is close to sampling anew.
    ``options`` go to the sampler (``eta``, ``variance``).
    """
    t0 = sdedit_start(schedule, strength)
    if t0 < 0:
        return x0.clone()
    steps = [t0] + [t for t in _checked(schedule, timesteps) if t < t0]
    tt = torch.full((x0.shape[0],), t0, device=x0.device, dtype=torch.long)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t0 = q_sample(x0, tt, schedule, z)  # perturb: x_{t_0} ~ q(x_{t_0} | x_0)
    return sampler(denoise, x_t0, schedule, steps, generator=generator, callback=callback, **options)


# --- DDIM inversion and interpolation ---------------------------------------------------------------------


@torch.no_grad()
def ddim_invert(
    denoise: Denoiser,
    x0: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int] | None,
    *,
    fixed_point_iterations: int = 0,
    callback: Callable | None = None,
) -> torch.Tensor:
    """DDIM inversion: the deterministic DDIM step (Song et al. 2021, eq. 12 with σ = 0, their sec. 4.3)
    run from the image towards noise, through the same ``timesteps`` as :func:`ddim_sample` in reverse.

    The step from level s up to level t is x_t = √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε̂ with x̂_0 = (x_s − √(1 − ᾱ_s) ε̂)
    / √ᾱ_s. DDIM's own step would take ε̂ = ε̂(x_t, t), at the point being sought; the usual inversion
    (Dhariwal & Nichol 2021, appendix F) takes ε̂ at the point it has, x_s, read at step t (at step s
    it is the clean image, where the network was never asked). ``fixed_point_iterations`` n > 0 then
    re-evaluates ε̂ at the new x_t n times, converging (where the iteration contracts) to the exact inverse
    of the DDIM sampler's step. ``callback(i, t, x_t, x̂_0)`` sees every step. Returns x_T.
    """
    steps = _checked(schedule, timesteps)[::-1]  # increasing
    x = x0
    for i, t in enumerate(steps):
        s = steps[i - 1] if i > 0 else -1
        ab_s, ab_t = _alpha_bar(schedule, s), _alpha_bar(schedule, t)
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x_t = x
        for _ in range(fixed_point_iterations + 1):
            _, eps = denoise(x_t, tt)
            x0_hat = (x - (1 - ab_s) ** 0.5 * eps) / ab_s**0.5  # eq. 12's predicted x_0, from x_s
            x_t = ab_t**0.5 * x0_hat + (1 - ab_t) ** 0.5 * eps  # and the direction to x_t
        x = x_t
        if callback is not None:
            callback(i, t, x, x0_hat)
    return x


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985), per sample, as Song et al. 2021 (sec. 5.4) do for x_T:
    sin((1 − α) θ) / sin θ · z0 + sin(α θ) / sin θ · z1, with θ the angle between z0 and z1. Gaussian noise
    lies near a sphere, where the straight line between two draws would pass inside (too little noise)."""
    a, b = z0.flatten(1), z1.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1)).reshape(-1, *[1] * (z0.ndim - 1))
    if float(theta.abs().min()) < 1e-6:  # (nearly) parallel: the arc is the line
        return (1 - alpha) * z0 + alpha * z1
    return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)


def slerp_path(z0: torch.Tensor, z1: torch.Tensor, frames: int) -> torch.Tensor:
    """``frames`` points of :func:`slerp` from z0 (one sample, (1, …)) to z1, evenly spaced in α."""
    if frames < 2:
        raise ValueError(f"an interpolation needs at least 2 frames, got {frames}")
    return torch.cat([slerp(z0, z1, a / (frames - 1)) for a in range(frames)])
