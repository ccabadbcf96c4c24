"""Sample-quality metrics for 2-D point clouds (numpy arrays or torch tensors).

* ``distance_to_spiral``: the exact distance of each point to the continuous normalised spiral of
  :mod:`ddpm.data.toy` (its closest point, endpoints included), by a dense grid search followed by a
  safeguarded Newton refinement of every local minimum of the squared distance.
* ``energy_distance``: the squared energy distance of Szekely & Rizzo as a V-statistic,
  ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with all pairs (``i = j`` included), which is always ``>= 0``.
* ``energy_distance_with_floor`` / ``points_metrics``: the energy distance of generated points to a
  fresh draw of the data, next to the floor given by two independent draws of the same size (what a
  perfect sampler would score with that many points).
* ``points_report``: what ``ddpm train`` measures at the end of a 2-D run: those metrics and the
  variational bound on held-out points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ddpm.config import Config
from ddpm.data import load_dataset
from ddpm.data.toy import (
    SPIRAL_BOUNDS,
    THETA_MAX,
    THETA_MIN,
    make_toy,
    spiral_curve,
    spiral_curve_derivative,
    spiral_curve_second_derivative,
)
from ddpm.diffusion import bits_per_dim

__all__ = [
    "CURVES",
    "spiral_projection",
    "distance_to_spiral",
    "mean_distance_to_curve",
    "energy_distance",
    "energy_distance_with_floor",
    "points_metrics",
    "points_report",
]

# Coarse search grid over theta. Its cell (~0.005 rad, <0.007 in normalised arc length) is far below
# the curve's radius of curvature (>0.43), so every local minimum of |c(theta) - p|^2 is bracketed by
# the two grid neighbours of a grid local minimum.
_GRID_SIZE = 2049
_GRID = np.linspace(THETA_MIN, THETA_MAX, _GRID_SIZE)
_GRID_X, _GRID_Y = spiral_curve(_GRID)
# Upper bound on the arc length of one grid cell: with the normalising scales s_x, s_y,
# |c'(theta)| <= max(s_x, s_y) sqrt(1 + theta^2) <= max(s_x, s_y) sqrt(1 + THETA_MAX^2).
_MAX_SCALE = max(2.0 / (hi - lo) for lo, hi in SPIRAL_BOUNDS.values())
_CELL_ARC = _MAX_SCALE * np.sqrt(1.0 + THETA_MAX**2) * (_GRID[1] - _GRID[0]) * (1.0 + 1e-9)
_MAX_ITERATIONS = 100
_BLOCK_ELEMENTS = 1 << 21  # entries of one (block x grid) or (block x n) distance matrix


def _as_points(points, name: str = "points", dim: int | None = None) -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, d)"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    return arr


def _slope(px, py, theta):
    """g(theta) = (c(theta) - p) . c'(theta), half the derivative of |c(theta) - p|^2."""
    cx, cy = spiral_curve(theta)
    dx, dy = spiral_curve_derivative(theta)
    return (cx - px) * dx + (cy - py) * dy


def _refine(px, py, theta, lo, hi):
    """Minimiser of |c(theta) - p|^2 over [lo, hi], vectorised over candidates.

    Where the slope does not change sign over the bracket the answer is an end; otherwise a
    safeguarded Newton iteration (bisection whenever a step leaves the bracket) finds the stationary point.
    """
    g_lo, g_hi = _slope(px, py, lo), _slope(px, py, hi)
    theta = np.where(g_lo >= 0, lo, np.where(g_hi <= 0, hi, theta))
    idx = np.flatnonzero((g_lo < 0) & (g_hi > 0))
    t, lo, hi, px, py = theta[idx], lo[idx], hi[idx], px[idx], py[idx]
    for _ in range(_MAX_ITERATIONS):
        if len(idx) == 0:
            break
        cx, cy = spiral_curve(t)
        dx, dy = spiral_curve_derivative(t)
        ddx, ddy = spiral_curve_second_derivative(t)
        ex, ey = cx - px, cy - py
        g = ex * dx + ey * dy
        h = dx * dx + dy * dy + ex * ddx + ey * ddy
        neg = g < 0
        lo = np.where(neg, t, lo)
        hi = np.where(neg, hi, t)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = t - g / h
        bad = ~((h > 0) & (new >= lo) & (new <= hi))
        new = np.where(g == 0, t, np.where(bad, 0.5 * (lo + hi), new))
        done = np.abs(new - t) <= 4e-16 * np.abs(t)
        theta[idx] = new
        keep = ~done
        idx, t, lo, hi, px, py = idx[keep], new[keep], lo[keep], hi[keep], px[keep], py[keep]
    return theta


def spiral_projection(points) -> tuple[np.ndarray, np.ndarray]:
    """Closest point of the normalised spiral to each point: ``(distance, theta)``, both shape ``(N,)``.

    ``theta`` lies in ``[THETA_MIN, THETA_MAX]``; non-finite points give NaN for both.
    """
    p = _as_points(points, dim=2)
    n = len(p)
    dist = np.full(n, np.inf)
    theta_best = np.full(n, np.nan)
    block = max(1, _BLOCK_ELEMENTS // _GRID_SIZE)
    for start in range(0, n, block):
        px, py = p[start : start + block, 0], p[start : start + block, 1]
        d2 = _GRID_X[None, :] - px[:, None]
        d2 *= d2
        dy = _GRID_Y[None, :] - py[:, None]
        dy *= dy
        d2 += dy
        del dy
        # A bracket [theta_{k-1}, theta_{k+1}] holding a point at distance D* lies within arc length
        # _CELL_ARC of theta_k, so |c(theta_k) - p| <= D* + _CELL_ARC; as D* <= the grid minimum, only
        # grid points within _CELL_ARC of the grid minimum can bracket the global minimum.
        thr = (np.sqrt(d2.min(axis=1)) + _CELL_ARC) ** 2
        rows, ks = np.nonzero(d2 <= thr[:, None])
        v = d2[rows, ks]
        lv = np.where(ks > 0, d2[rows, np.maximum(ks - 1, 0)], np.inf)
        rv = np.where(ks < _GRID_SIZE - 1, d2[rows, np.minimum(ks + 1, _GRID_SIZE - 1)], np.inf)
        keep = (v <= lv) & (v <= rv)
        rows, ks = rows[keep], ks[keep]
        if len(rows) == 0:
            continue
        a = _GRID[np.maximum(ks - 1, 0)]
        b = _GRID[np.minimum(ks + 1, _GRID_SIZE - 1)]
        cpx, cpy = px[rows], py[rows]
        root = _refine(cpx, cpy, _GRID[ks].copy(), a, b)
        # The minimum over the bracket is at the stationary point or at one of its ends.
        cand_t = np.concatenate([root, a, b])
        cand_r = np.concatenate([rows, rows, rows])
        cx, cy = spiral_curve(cand_t)
        cand_d = np.hypot(cx - np.tile(cpx, 3), cy - np.tile(cpy, 3))
        order = np.lexsort((cand_d, cand_r))
        first = order[np.r_[True, cand_r[order][1:] != cand_r[order][:-1]]]
        dist[start + cand_r[first]] = cand_d[first]
        theta_best[start + cand_r[first]] = cand_t[first]
    bad = ~np.isfinite(p).all(axis=1)
    dist[bad] = np.nan
    theta_best[bad] = np.nan
    return dist, theta_best


def distance_to_spiral(points) -> np.ndarray:
    """Exact Euclidean distance from each 2-D point to the continuous normalised spiral, shape ``(N,)``."""
    return spiral_projection(points)[0]


#: Datasets whose support is a curve, with the distance function to it. The swiss roll lies on the
#: same curve as the spiral (only the density along it differs).
CURVES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "spiral": distance_to_spiral,
    "swiss_roll": distance_to_spiral,
}


def mean_distance_to_curve(points, name: str = "spiral") -> float:
    """Mean exact distance of the points to the curve of dataset ``name`` (see ``CURVES``)."""
    if name not in CURVES:
        raise ValueError(f"no curve known for {name!r}; choose one of {sorted(CURVES)}")
    return float(np.mean(CURVES[name](points)))


def _sum_distances(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of |a_i - b_j| over all pairs, in row blocks of at most _BLOCK_ELEMENTS distances."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    block = max(1, _BLOCK_ELEMENTS // len(b))
    total = 0.0
    for start in range(0, len(a), block):
        rows = a[start : start + block]
        d2 = np.zeros((len(rows), len(b)))
        for k in range(a.shape[1]):
            diff = rows[:, k, None] - b[None, :, k]
            diff *= diff
            d2 += diff
        np.sqrt(d2, out=d2)
        total += float(d2.sum())
    return total


def _mean_self_distance(a: np.ndarray) -> float:
    """Mean of |a_i - a_j| over all ordered pairs (i = j included), using the symmetry."""
    n = len(a)
    block = max(1, _BLOCK_ELEMENTS // max(1, n))
    total = 0.0
    for start in range(0, n, block):
        end = min(n, start + block)
        total += _sum_distances(a[start:end], a[start:end]) + 2.0 * _sum_distances(a[start:end], a[end:])
    return total / (n * n)


def energy_distance(x, y) -> float:
    """Squared energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic, float64, >= 0)."""
    x = _as_points(x, "x")
    y = _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} vs {y.shape[1]}")
    if len(x) == 0 or len(y) == 0:
        raise ValueError("energy distance needs at least one point in each set")
    value = 2.0 * _sum_distances(x, y) / (len(x) * len(y)) - _mean_self_distance(x) - _mean_self_distance(y)
    # The V-statistic is a squared MMD, hence >= 0; only rounding can push it below.
    return max(value, 0.0)


def energy_distance_with_floor(
    generated, sample_fn: Callable[[int, torch.Generator], object], n: int, seed: int
) -> dict[str, float]:
    """Energy distance of ``generated`` to a fresh draw of ``n`` points, and the floor between that
    draw and a second independent one of the same size; both drawn by ``sample_fn(n, generator)`` from
    one generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    reference = sample_fn(n, gen)
    second = sample_fn(n, gen)
    return {
        "energy_distance": energy_distance(generated, reference),
        "energy_distance_floor": energy_distance(second, reference),
    }


def points_metrics(generated, dataset_name: str, seed: int = 0, noise: float = 0.0) -> dict[str, float]:
    """Metrics of generated 2-D points against toy dataset ``dataset_name`` (drawn with ``noise``).

    Returns ``energy_distance`` and ``energy_distance_floor`` (reference draws of the same size as
    ``generated``), plus ``mean_distance_to_curve`` when the dataset is the spiral.
    """
    pts = _as_points(generated, "generated", dim=2)
    make_toy(dataset_name, 0)  # validate the name before doing any work
    out: dict[str, float] = {}
    if dataset_name == "spiral":
        out["mean_distance_to_curve"] = mean_distance_to_curve(pts, "spiral")
    out.update(
        energy_distance_with_floor(
            pts, lambda m, g: make_toy(dataset_name, m, generator=g, noise=noise), len(pts), seed
        )
    )
    return out


def points_report(cfg: Config, model: nn.Module, schedule, samples: torch.Tensor) -> dict[str, float]:
    """The end-of-training metrics of a 2-D run: :func:`points_metrics` of ``samples`` and the negative
    log-likelihood bound in bits per dimension on held-out points (Ho et al. 2020, eq. 5)."""
    metrics = points_metrics(samples.cpu(), cfg.data.name, seed=cfg.seed + 2)
    device = next(model.parameters()).device
    held_out = load_dataset(
        dataclasses.replace(cfg.data, n_samples=cfg.sample.eval_n, data_seed=cfg.seed + 3)
    ).x
    generator = torch.Generator(device).manual_seed(cfg.seed + 4)
    nll = bits_per_dim(
        model,
        held_out.to(device),
        schedule,
        cfg.diffusion.prediction,
        cfg.diffusion.variance,
        discrete=False,
        generator=generator,
    )
    metrics["nll_bits_per_dim"] = nll["total"].mean().item()
    return metrics
