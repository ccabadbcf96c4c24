"""A run's edits: ``ddpm inpaint``, ``edit``, ``invert`` and ``interpolate`` on images the user gives.

The user's images and masks are read and checked against the run here (one-line :class:`RunError`s,
before any work); the edits themselves are :mod:`ddpm.editing`'s, with the run's denoiser
(:func:`ddpm.run.run_denoiser`: its prediction, clipping, labels and guidance) and its sampling settings
(:func:`ddpm.run.sampling_config`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddpm import editing
from ddpm.config import Config
from ddpm.data import sample_shape
from ddpm.data.folder import decode_image
from ddpm.progress import progress_bar
from ddpm.run import RunError, check_labels, is_image, run_denoiser, sample_steps, sample_timesteps
from ddpm.samplers import get_sampler, sampler_options
from ddpm.schedules import Schedule


def check_image_run(cfg: Config, command: str) -> None:
    """Editing needs a run of images."""
    if not is_image(cfg):
        raise RunError(f"ddpm {command} edits images; the run's data ({cfg.data.name}) are 2-D points")


def read_image(path: Path, cfg: Config, flag: str = "--image") -> torch.Tensor:
    """An image of the run's shape as (N, C, H, W) in the model's [−1, 1]: a PNG (or any picture Pillow
    reads; grey or colour by its mode), or a ``.npy`` array of one (C, H, W) or several (N, C, H, W), as
    ``ddpm sample --out x.npy`` writes them. A size or channel count other than the run's is refused."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{flag} {path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            x = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except (OSError, ValueError) as e:
            raise RunError(f"{flag} {path}: not a readable .npy array ({e})") from None
        x = x[None] if x.ndim == 3 else x
        if not torch.isfinite(x).all():
            raise RunError(f"{flag} {path}: holds values that are not finite")
    else:
        picture = np.asarray(decode_image(path))
        picture = picture[..., None] if picture.ndim == 2 else picture
        x = torch.from_numpy(picture.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    want = sample_shape(cfg.data)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        c, h, w = want
        got = "×".join(map(str, x.shape[1:] if x.ndim == 4 else x.shape))
        raise RunError(
            f"{flag} {path}: the run's images are C×H×W {c}×{h}×{w} ({c} channel{'s' * (c > 1)}), "
            f"this is {got}"
        )
    return x


def read_mask(path: Path, image: torch.Tensor) -> torch.Tensor:
    """A mask PNG of the image's size, read as grey: white (≥ 128) keeps the pixel, black is to be filled.
    Returns a bool tensor (1, 1, H, W), True where kept."""
    picture = np.asarray(decode_image(Path(path), "L"))
    h, w = image.shape[-2:]
    if picture.shape != (h, w):
        raise RunError(f"--mask {path}: is {picture.shape[0]}×{picture.shape[1]}, the image {h}×{w}")
    keep = torch.from_numpy(picture >= 128)[None, None]
    if keep.all():
        raise RunError(f"--mask {path}: is white everywhere: nothing to inpaint (black marks what to fill)")
    return keep


def _one(x: torch.Tensor, flag: str = "--image") -> torch.Tensor:
    if len(x) != 1:
        raise RunError(f"{flag}: holds {len(x)} images; give one")
    return x


def _bar(total: int, desc: str, progress: bool):
    """A progress bar over network evaluations × images, shown once the work has taken more than 2 s."""
    return progress_bar(
        total=total, desc=desc, unit="img-step", disable=not progress, unit_scale=True, delay=2
    )


@torch.no_grad()
def inpaint(
    cfg: Config,
    model: nn.Module,
    schedule: Schedule,
    image: torch.Tensor,
    keep: torch.Tensor,
    *,
    n: int = 1,
    seed: int = 0,
    label: int | None = None,
    guidance: float | None = None,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    progress: bool = True,
) -> torch.Tensor:
    """``n`` completions of ``image`` where ``keep`` is False, by RePaint (:func:`ddpm.editing.repaint`) over
    the run's sampling steps (``sample.steps``, ``sample.spacing``) with its ancestral variance."""
    check_labels(cfg, label, guidance)
    device = next(model.parameters()).device
    x0 = _one(image).to(device).expand(n, *image.shape[1:])
    y = None if label is None else torch.full((n,), label, dtype=torch.long, device=device)
    denoise = run_denoiser(cfg, model, schedule, y, guidance)
    generator = torch.Generator(device).manual_seed(seed)
    x_T = torch.randn(x0.shape, generator=generator, device=device)
    steps = sample_steps(cfg)
    bar = _bar(n * editing.repaint_evaluations(steps, jump_length, jump_n_sample), "inpainting", progress)
    out = editing.repaint(
        denoise, x_T, schedule, sample_timesteps(cfg, schedule), x0, keep.to(device),
        jump_length=jump_length, jump_n_sample=jump_n_sample, variance=cfg.diffusion.variance,
        generator=generator, callback=lambda *_: bar.update(n),
    )  # fmt: skip
    bar.close()
    return out


@torch.no_grad()
def edit(
    cfg: Config,
    model: nn.Module,
    schedule: Schedule,
    image: torch.Tensor,
    strength: float,
    *,
    n: int = 1,
    seed: int = 0,
    label: int | None = None,
    guidance: float | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """``n`` SDEdits of ``image`` at ``strength`` (:func:`ddpm.editing.sdedit`) with the run's sampler."""
    check_labels(cfg, label, guidance)
    editing.sdedit_start(schedule, strength)  # a strength outside [0, 1] is refused before any work
    device = next(model.parameters()).device
    x0 = _one(image).to(device).expand(n, *image.shape[1:]).contiguous()
    y = None if label is None else torch.full((n,), label, dtype=torch.long, device=device)
    denoise = run_denoiser(cfg, model, schedule, y, guidance)
    options = sampler_options(cfg.sample.sampler, variance=cfg.diffusion.variance, eta=cfg.sample.eta)
    bar = _bar(n * sample_steps(cfg), "editing", progress)
    out = editing.sdedit(
        denoise, x0, schedule, sample_timesteps(cfg, schedule), strength,
        sampler=get_sampler(cfg.sample.sampler), generator=torch.Generator(device).manual_seed(seed),
        callback=lambda *_: bar.update(n), **options,
    )  # fmt: skip
    bar.close()
    return out


@torch.no_grad()
def invert(
    cfg: Config,
    model: nn.Module,
    schedule: Schedule,
    images: torch.Tensor,
    *,
    refine: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """The noises x_T whose deterministic DDIM samples are ``images`` (:func:`ddpm.editing.ddim_invert`),
    over the run's sampling steps; ``refine`` fixed-point iterations per step."""
    if refine < 0:
        raise RunError(f"--refine {refine}: the number of fixed-point iterations must be ≥ 0")
    device = next(model.parameters()).device
    denoise = run_denoiser(cfg, model, schedule)
    bar = _bar(len(images) * sample_steps(cfg) * (refine + 1), "inverting", progress)
    out = editing.ddim_invert(
        denoise, images.to(device), schedule, sample_timesteps(cfg, schedule),
        fixed_point_iterations=refine, callback=lambda *_: bar.update(len(images) * (refine + 1)),
    )  # fmt: skip
    bar.close()
    return out


@torch.no_grad()
def decode(cfg: Config, model: nn.Module, schedule: Schedule, x_T: torch.Tensor, progress: bool = True):
    """Deterministic DDIM (η = 0) samples of the noises ``x_T``, over the run's sampling steps: what
    :func:`invert` inverts."""
    from ddpm.samplers import ddim_sample

    device = next(model.parameters()).device
    bar = _bar(len(x_T) * sample_steps(cfg), "decoding", progress)
    out = ddim_sample(
        run_denoiser(cfg, model, schedule), x_T.to(device), schedule, sample_timesteps(cfg, schedule),
        callback=lambda *_: bar.update(len(x_T)),
    )  # fmt: skip
    bar.close()
    return out


def seed_noise(cfg: Config, seed: int) -> torch.Tensor:
    """The noise x_T that ``ddpm sample --seed S --n 1`` starts from (1, C, H, W)."""
    return torch.randn((1, *sample_shape(cfg.data)), generator=torch.Generator().manual_seed(seed))
