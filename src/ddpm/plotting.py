"""Pictures: scatter plots of 2-D samples, image grids and GIFs of the diffusion processes.

Every picture is written through :func:`ddpm.fileio.atomic_path`: whole or not at all.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ddpm.fileio import atomic_path  # noqa: E402

LIM = (-1.6, 1.6)


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def scatter_axes(ax, points, reference=None, title: str | None = None, s: float = 2.0) -> None:
    """Draw 2-D points (and, faintly, reference data) on one axis with the fixed data limits."""
    if reference is not None:
        r = _np(reference)
        ax.scatter(r[:, 0], r[:, 1], s=s, c="#bbbbbb", alpha=0.5, linewidths=0, label="data")
    p = _np(points)
    ax.scatter(p[:, 0], p[:, 1], s=s, c="#1f77b4", alpha=0.8, linewidths=0, label="samples")
    ax.set(xlim=LIM, ylim=LIM, aspect="equal", xticks=[], yticks=[])
    if title:
        ax.set_title(title, fontsize=9)


def save_scatter(path: Path, points, reference=None, title: str | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    scatter_axes(ax, points, reference, title)
    return _save(fig, path)


def scatter_row(path: Path, panels: Sequence, titles: Sequence[str], reference=None) -> Path:
    """Several 2-D point sets side by side (e.g. noising at several t)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.6), dpi=100)
    for ax, pts, title in zip(np.atleast_1d(axes), panels, titles):
        scatter_axes(ax, pts, reference, title, s=1.5)
    return _save(fig, path)


def points_gif(path: Path, frames: Sequence, titles: Sequence[str], duration_ms: int = 80) -> Path:
    """An animated GIF of 2-D point clouds, one frame per entry (the last frame is held longer)."""
    images = []
    for pts, title in zip(frames, titles):
        fig, ax = plt.subplots(figsize=(3.2, 3.2), dpi=80)
        scatter_axes(ax, pts, title=title, s=2.0)
        fig.tight_layout()
        fig.canvas.draw()
        images.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
        plt.close(fig)
    return _save_gif(path, images, duration_ms)


def _save_gif(path: Path, images: list[Image.Image], duration_ms: int) -> Path:
    durations = [duration_ms] * (len(images) - 1) + [duration_ms * 15]
    with atomic_path(path) as tmp:
        images[0].save(tmp, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return Path(path)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [−1, 1] → (N, H, W, C) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid_image(images: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile (N, C, H, W) images in [−1, 1] into one picture, ``nrow`` per row (square by default)."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(arr):
        r, q = divmod(i, nrow)
        canvas[
            pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w
        ] = img
    picture = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    return (
        picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        if scale > 1
        else picture
    )


def save_grid(path: Path, images: torch.Tensor, nrow: int | None = None, scale: int = 2) -> Path:
    with atomic_path(path) as tmp:
        grid_image(images, nrow, scale=scale).save(tmp)
    return Path(path)


def grid_gif(
    path: Path, frames: Sequence[torch.Tensor], nrow: int | None = None, duration_ms: int = 60
) -> Path:
    """An animated GIF of image grids (e.g. the reverse process from noise to digits)."""
    return _save_gif(path, [grid_image(f, nrow, scale=2).convert("P") for f in frames], duration_ms)


def loss_curve(path: Path, metrics_csv: Path) -> Path | None:
    """Plot the loss column of a run's metrics.csv (log scale)."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    return _save(fig, path)


def labelled_grid(
    path: Path,
    images: torch.Tensor,
    nrow: int,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str | None = None,
) -> Path:
    """An image grid (``grid_image``) with a label for each row and, on top, each column."""
    cell, rows = images.shape[-1] + 2, math.ceil(len(images) / nrow)  # grid_image pads by 2 pixels
    fig, ax = plt.subplots(figsize=(1.4 + 0.5 * nrow, 0.5 + 0.5 * rows), dpi=100)
    ax.imshow(np.asarray(grid_image(images, nrow)), cmap="gray", vmin=0, vmax=255)
    ax.set_yticks([cell * (r + 0.5) + 1 for r in range(len(row_labels))], row_labels, fontsize=8)
    ax.set_xticks([cell * (c + 0.5) + 1 for c in range(len(col_labels))], col_labels, fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def fld_vs_nfe(path: Path, rows: Sequence[dict], title: str | None = None) -> Path:
    """FLD against the number of network evaluations, one line per sampler and spacing (named "sampler,
    spacing" when rows have several spacings); the floor (real training images at the same N) dashed.
    ``rows`` hold ``sampler``, ``nfe``, ``n``, ``fld``, ``fld_train_test`` and optionally ``spacing``."""
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    several = len({r.get("spacing") for r in rows if r["nfe"] < max(q["nfe"] for q in rows)}) > 1
    several = several or len({r.get("spacing") for r in rows} - {None, "uniform"}) > 1
    lines = dict.fromkeys((r["sampler"], r.get("spacing")) for r in rows)
    for sampler, spacing in lines:
        mine = [r for r in rows if (r["sampler"], r.get("spacing")) == (sampler, spacing)]
        mine.sort(key=lambda r: r["nfe"])
        label = f"{sampler}, {spacing}" if several and spacing else sampler
        ax.plot([r["nfe"] for r in mine], [r["fld"] for r in mine], "o-", label=label)
    for n in sorted({r["n"] for r in rows}):
        floor = np.mean([r["fld_train_test"] for r in rows if r["n"] == n])
        ax.axhline(floor, color="k", lw=0.8, ls="--")
        ax.text(0.01, floor, f" floor, N = {n}", transform=ax.get_yaxis_transform(), fontsize=7, va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # 20, not 2 × 10¹; between the powers of ten only 2… and 5…, so that labels do not crowd
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    few = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "25" else "")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(few)
    ax.tick_params(which="minor", labelsize=7)
    ax.set_xlabel("network evaluations per sample (steps)")
    ax.set_ylabel("FLD against the test set")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


class LearningCurve(NamedTuple):
    """One recipe's learning curve: measured FLD at ``images``, its ``floor`` and the fitted power law
    ``floor + a · images^(−b)`` (``law = (a, b)``), which reaches the target ratio at ``needed`` images;
    ``held_images`` / ``held_fld``: runs the fit did not see, drawn hollow."""

    label: str
    images: Sequence[float]
    fld: Sequence[float]
    floor: float
    law: tuple[float, float]
    needed: float
    held_images: Sequence[float] = ()
    held_fld: Sequence[float] = ()


def fld_vs_images(
    path: Path,
    curves: Sequence[LearningCurve],
    ratio: float,
    budget: tuple[float, str] | None = None,
    title: str | None = None,
) -> Path:
    """Learning curves on the same log axes, a colour each: measured FLD against training images and the
    power law drawn on to where it reaches ``ratio × floor`` (dotted); the floor dashed,
    ``budget = (images, label)`` grey."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, c in enumerate(curves):
        color, (a, b) = f"C{i}", c.law
        images = np.asarray(c.images, dtype=float)
        name = f"{c.label}: " if len(curves) > 1 else ""
        ax.plot(images, c.fld, "o", color=color, label=f"{name}measured FLD")
        if len(c.held_images):
            ax.plot(c.held_images, c.held_fld, "o", mfc="none", color=color, label=f"{name}held out")
        span = np.geomspace(images.min() / 1.5, max([c.needed, *c.held_images]) * 1.5, 100)
        ax.plot(
            span,
            c.floor + a * span ** (-b),
            "-",
            color=color,
            lw=1,
            label=f"floor + {a:.3g} · images^(−{b:.2f})",
        )
        ax.axhline(c.floor, color=color, lw=0.8, ls="--", label=f"{name}floor {c.floor:.3f}")
        ax.axhline(
            ratio * c.floor, color=color, lw=0.8, ls=":", label=f"{name}ratio {ratio:g} at {c.needed:.2g}"
        )
        ax.axvline(c.needed, color=color, lw=0.8, ls=":")
    if budget is not None:
        ax.axvline(budget[0], color="0.5", lw=0.8, label=budget[1])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training images (steps × batch)")
    ax.set_ylabel("FLD against the test set")
    ax.legend(fontsize=8 if len(curves) == 1 else 6)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Lay out, write and close a figure; returns its path."""
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return Path(path)
