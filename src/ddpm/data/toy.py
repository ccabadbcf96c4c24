"""Two-dimensional toy datasets for diffusion experiments.

Every dataset is a function ``f(n, generator=None, *, seed=None, noise=0.0) -> Tensor`` returning
``n`` points as a float32 tensor of shape ``(n, 2)``, scaled to roughly ``[-1, 1]`` per coordinate.
Randomness comes only from ``generator`` (a ``torch.Generator``) or, if it is not given, from a fresh
generator seeded with ``seed``; with neither, torch's global RNG is used. ``noise`` is the standard
deviation of isotropic Gaussian noise added *after* scaling, i.e. in output units.

The spiral is the one of the series: ``theta ~ U[1.5 pi, 4.5 pi]`` and the point
``(theta cos theta, theta sin theta)``, normalised to ``[-1, 1]`` per coordinate by the min/max of the
*continuous* curve over that range (not of the sample), so the normalisation is a fixed affine map
that does not depend on the draw. The curve and its derivatives are exposed (``spiral_curve`` and
friends) so that metrics can project points onto it exactly.

All computations are done in float64 and cast to float32 at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import brentq

from ddpm.registry import check_name

__all__ = [
    "THETA_MIN",
    "THETA_MAX",
    "SPIRAL_BOUNDS",
    "SPIRAL_EXTREMA_THETA",
    "spiral_curve",
    "spiral_curve_derivative",
    "spiral_curve_second_derivative",
    "spiral",
    "moons",
    "s_curve",
    "swiss_roll",
    "eight_gaussians",
    "TOY_DATASETS",
    "make_toy",
    "SHAPES3_CLASSES",
    "shapes3",
    "shapes3_curves",
    "LABELLED_TOY_DATASETS",
]

THETA_MIN: float = 1.5 * math.pi
THETA_MAX: float = 4.5 * math.pi


# --------------------------------------------------------------------------- the raw spiral
def _raw_x(theta):
    return theta * np.cos(theta)


def _raw_y(theta):
    return theta * np.sin(theta)


def _raw_dx(theta):
    return np.cos(theta) - theta * np.sin(theta)


def _raw_dy(theta):
    return np.sin(theta) + theta * np.cos(theta)


def _raw_ddx(theta):
    return -2.0 * np.sin(theta) - theta * np.cos(theta)


def _raw_ddy(theta):
    return 2.0 * np.cos(theta) - theta * np.sin(theta)


def _extrema(
    f: Callable[[np.ndarray], np.ndarray], df: Callable[[np.ndarray], np.ndarray], grid_size: int = 20001
) -> tuple[float, float, float, float]:
    """Exact min and max of ``f`` on ``[THETA_MIN, THETA_MAX]``: ``(theta_min, f_min, theta_max, f_max)``.

    Candidates are both endpoints and every critical point, the latter located by sign changes of
    ``df`` on a dense grid and refined with Brent's method to machine precision.
    """
    grid = np.linspace(THETA_MIN, THETA_MAX, grid_size)
    d = df(grid)
    candidates = [THETA_MIN, THETA_MAX]
    candidates += [float(t) for t in grid[1:-1][d[1:-1] == 0.0]]
    for i in np.flatnonzero(d[:-1] * d[1:] < 0.0):
        candidates.append(brentq(lambda t: float(df(t)), grid[i], grid[i + 1], xtol=1e-15, rtol=1e-15))
    thetas = np.asarray(candidates, dtype=np.float64)
    values = f(thetas)
    lo, hi = int(np.argmin(values)), int(np.argmax(values))
    return float(thetas[lo]), float(values[lo]), float(thetas[hi]), float(values[hi])


_TX_LO, _X_LO, _TX_HI, _X_HI = _extrema(_raw_x, _raw_dx)
_TY_LO, _Y_LO, _TY_HI, _Y_HI = _extrema(_raw_y, _raw_dy)
_SX = 2.0 / (_X_HI - _X_LO)
_SY = 2.0 / (_Y_HI - _Y_LO)

#: Min/max of the raw (unnormalised) continuous curve: ``{"x": (lo, hi), "y": (lo, hi)}``.
SPIRAL_BOUNDS: dict[str, tuple[float, float]] = {"x": (_X_LO, _X_HI), "y": (_Y_LO, _Y_HI)}
#: The angles at which the raw curve attains those bounds (where the normalised curve is exactly +-1).
SPIRAL_EXTREMA_THETA: dict[str, tuple[float, float]] = {"x": (_TX_LO, _TX_HI), "y": (_TY_LO, _TY_HI)}


def spiral_curve(theta) -> tuple[np.ndarray, np.ndarray]:
    """The normalised spiral ``c(theta) = (x, y)``, float64, vectorised over ``theta``."""
    theta = np.asarray(theta, dtype=np.float64)
    x = 2.0 * (_raw_x(theta) - _X_LO) / (_X_HI - _X_LO) - 1.0
    y = 2.0 * (_raw_y(theta) - _Y_LO) / (_Y_HI - _Y_LO) - 1.0
    return x, y


def spiral_curve_derivative(theta) -> tuple[np.ndarray, np.ndarray]:
    """``c'(theta)`` of the normalised spiral, float64, vectorised."""
    theta = np.asarray(theta, dtype=np.float64)
    return _SX * _raw_dx(theta), _SY * _raw_dy(theta)


def spiral_curve_second_derivative(theta) -> tuple[np.ndarray, np.ndarray]:
    """``c''(theta)`` of the normalised spiral, float64, vectorised."""
    theta = np.asarray(theta, dtype=np.float64)
    return _SX * _raw_ddx(theta), _SY * _raw_ddy(theta)


# --------------------------------------------------------------------------- helpers
def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either a generator or a seed, not both")
        return generator
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return None


def _check_n(n: int) -> int:
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return int(n)


def _uniform(n: int, gen: torch.Generator | None) -> np.ndarray:
    return torch.rand(n, generator=gen, dtype=torch.float64).numpy()


def _finish(xy: np.ndarray, gen: torch.Generator | None, noise: float) -> torch.Tensor:
    out = torch.from_numpy(np.ascontiguousarray(xy, dtype=np.float64))
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=gen, dtype=torch.float64)
    return out.to(torch.float32)


def _shuffle(xy: np.ndarray, gen: torch.Generator | None) -> np.ndarray:
    perm = torch.randperm(len(xy), generator=gen).numpy()
    return xy[perm]


# --------------------------------------------------------------------------- datasets
def spiral(
    n: int, generator: torch.Generator | None = None, *, seed: int | None = None, noise: float = 0.0
) -> torch.Tensor:
    """The series' spiral: ``theta ~ U[THETA_MIN, THETA_MAX]``, point ``spiral_curve(theta)``."""
    n, gen = _check_n(n), _generator(generator, seed)
    theta = THETA_MIN + (THETA_MAX - THETA_MIN) * _uniform(n, gen)
    x, y = spiral_curve(theta)
    return _finish(np.stack([x, y], axis=1), gen, noise)


def _arc_length(theta):
    """Arc length of the raw spiral ``(t cos t, t sin t)`` from 0 to ``theta``."""
    return 0.5 * (theta * np.sqrt(1.0 + theta**2) + np.arcsinh(theta))


def swiss_roll(
    n: int, generator: torch.Generator | None = None, *, seed: int | None = None, noise: float = 0.0
) -> torch.Tensor:
    """2-D swiss roll: the same curve as ``spiral`` but sampled uniformly along its (raw) arc length.

    The scikit-learn swiss roll projected to 2-D is exactly the spiral (uniform in angle); sampling
    uniformly in arc length instead spreads the points evenly along the roll, so the outer turn carries
    about three times the density of the inner one. The support is the spiral curve.
    """
    n, gen = _check_n(n), _generator(generator, seed)
    s_lo, s_hi = _arc_length(THETA_MIN), _arc_length(THETA_MAX)
    target = s_lo + (s_hi - s_lo) * _uniform(n, gen)
    grid = np.linspace(THETA_MIN, THETA_MAX, 4097)
    theta = np.interp(target, _arc_length(grid), grid)
    for _ in range(6):  # Newton on s(theta) = target; s'(theta) = sqrt(1 + theta^2) > 0
        theta = np.clip(theta - (_arc_length(theta) - target) / np.sqrt(1.0 + theta**2), THETA_MIN, THETA_MAX)
    x, y = spiral_curve(theta)
    return _finish(np.stack([x, y], axis=1), gen, noise)


def moons(
    n: int, generator: torch.Generator | None = None, *, seed: int | None = None, noise: float = 0.0
) -> torch.Tensor:
    """Two interleaving half circles (scikit-learn's ``make_moons`` layout), shuffled.

    Outer moon ``(cos t, sin t)``, inner ``(1 - cos t, 0.5 - sin t)``, ``t ~ U[0, pi]``, ``n // 2`` points
    in the outer one; then mapped affinely from ``[-1, 2] x [-0.5, 1]`` onto ``[-1, 1]^2``.
    """
    n, gen = _check_n(n), _generator(generator, seed)
    n_out = n // 2
    t = math.pi * _uniform(n, gen)
    t_out, t_in = t[:n_out], t[n_out:]
    x = np.concatenate([np.cos(t_out), 1.0 - np.cos(t_in)])
    y = np.concatenate([np.sin(t_out), 0.5 - np.sin(t_in)])
    xy = np.stack([(x - 0.5) / 1.5, (y - 0.25) / 0.75], axis=1)
    return _finish(_shuffle(xy, gen), gen, noise)


def s_curve(
    n: int, generator: torch.Generator | None = None, *, seed: int | None = None, noise: float = 0.0
) -> torch.Tensor:
    """The scikit-learn S curve projected on its (x, z) plane: ``t ~ U[-1.5 pi, 1.5 pi]``,
    ``(sin t, sign(t) (cos t - 1) / 2)``, which spans exactly ``[-1, 1]^2``."""
    n, gen = _check_n(n), _generator(generator, seed)
    t = 3.0 * math.pi * (_uniform(n, gen) - 0.5)
    xy = np.stack([np.sin(t), 0.5 * np.sign(t) * (np.cos(t) - 1.0)], axis=1)
    return _finish(xy, gen, noise)


#: Radius of the circle the eight Gaussians sit on, and their (intrinsic) standard deviation.
EIGHT_GAUSSIANS_RADIUS = 0.8
EIGHT_GAUSSIANS_STD = 0.05


def eight_gaussians(
    n: int, generator: torch.Generator | None = None, *, seed: int | None = None, noise: float = 0.0
) -> torch.Tensor:
    """Mixture of 8 equal-weight isotropic Gaussians (std 0.05) centred at angles ``k pi / 4`` on the
    circle of radius 0.8. ``noise`` adds on top of the intrinsic spread."""
    n, gen = _check_n(n), _generator(generator, seed)
    k = torch.randint(0, 8, (n,), generator=gen).numpy().astype(np.float64)
    angle = k * (math.pi / 4.0)
    centres = EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    spread = torch.randn((n, 2), generator=gen, dtype=torch.float64).numpy()
    return _finish(centres + EIGHT_GAUSSIANS_STD * spread, gen, noise)


ToySampler = Callable[..., torch.Tensor]

TOY_DATASETS: dict[str, ToySampler] = {
    "spiral": spiral,
    "moons": moons,
    "s_curve": s_curve,
    "swiss_roll": swiss_roll,
    "eight_gaussians": eight_gaussians,
}


def make_toy(
    name: str, n: int, seed: int | None = None, generator: torch.Generator | None = None, noise: float = 0.0
) -> torch.Tensor:
    """Draw ``n`` points of the toy dataset ``name`` as a float32 tensor of shape ``(n, 2)``."""
    fn = TOY_DATASETS[check_name("toy dataset", name, TOY_DATASETS)]
    return fn(n, generator, seed=seed, noise=noise)


# --------------------------------------------------------------------------- a labelled set
#: The classes of ``shapes3``, in label order.
SHAPES3_CLASSES: tuple[str, ...] = ("spiral", "s-curve", "moons")
_SHAPES3_PARTS: tuple[ToySampler, ...] = (spiral, s_curve, moons)


def shapes3(
    n: int, generator: torch.Generator | None = None, *, seed: int | None = None, noise: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Three toy sets as three classes on top of one another: ``(points (n, 2) float32, labels (n,) long)``.

    Label 0 is the spiral, 1 the s-curve, 2 the moons (``SHAPES3_CLASSES``), each drawn as by its own
    function and left as it is: all three already span ``[-1, 1]^2``, so the classes overlap in one square
    and only the label tells them apart (the setting in which classifier-free guidance has work to do).
    The classes get ``n // 3`` points each, the first ``n % 3`` of them one more; the points are shuffled,
    and ``noise`` is drawn last, so the same seed gives the same points and labels with or without it.
    """
    n, gen = _check_n(n), _generator(generator, seed)
    counts = [n // 3 + (k < n % 3) for k in range(3)]
    x = torch.cat([part(m, gen) for part, m in zip(_SHAPES3_PARTS, counts)])
    y = torch.cat([torch.full((m,), k, dtype=torch.long) for k, m in enumerate(counts)])
    perm = torch.randperm(n, generator=gen)
    return _finish(x[perm].double().numpy(), gen, noise), y[perm]


def shapes3_curves(grid_size: int = 20001) -> list[np.ndarray]:
    """Dense float64 points ``(M, 2)`` along the continuous curve of each ``shapes3`` class, in label order.

    The moons are their two arcs, stacked. Along each curve or arc neighbouring points are less than 1e-3
    apart for the default ``grid_size``, so the distance to the nearest of them is the distance to the curve
    to within 5e-4.
    """
    spiral_xy = np.stack(spiral_curve(np.linspace(THETA_MIN, THETA_MAX, grid_size)), axis=1)
    t = np.linspace(-1.5 * math.pi, 1.5 * math.pi, grid_size)
    s_xy = np.stack([np.sin(t), 0.5 * np.sign(t) * (np.cos(t) - 1.0)], axis=1)
    t = np.linspace(0.0, math.pi, grid_size // 2 + 1)
    x = np.concatenate([np.cos(t), 1.0 - np.cos(t)])
    y = np.concatenate([np.sin(t), 0.5 - np.sin(t)])
    moons_xy = np.stack([(x - 0.5) / 1.5, (y - 0.25) / 0.75], axis=1)
    return [spiral_xy, s_xy, moons_xy]


#: Labelled 2-D sets: ``f(n, generator=None, *, seed=None, noise=0.0) -> (points, labels)``, with their
#: class names.
LABELLED_TOY_DATASETS: dict[str, tuple[Callable[..., tuple[torch.Tensor, torch.Tensor]], tuple[str, ...]]] = {
    "shapes3": (shapes3, SHAPES3_CLASSES),
}
