"""Tests for the 2-D toy datasets (ddpm.data.toy) and the point-cloud metrics (ddpm.metrics.points)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import cdist

from ddpm.data import toy
from ddpm.data.toy import (
    SPIRAL_EXTREMA_THETA,
    THETA_MAX,
    THETA_MIN,
    TOY_DATASETS,
    make_toy,
    spiral_curve,
    spiral_curve_derivative,
    spiral_curve_second_derivative,
)
from ddpm.metrics import points as pts
from ddpm.metrics.points import (
    distance_to_spiral,
    energy_distance,
    energy_distance_with_floor,
    mean_distance_to_curve,
    points_metrics,
    spiral_projection,
)

NAMES = sorted(TOY_DATASETS)


def _unit_tangent_normal(theta):
    dx, dy = spiral_curve_derivative(theta)
    norm = np.hypot(dx, dy)
    return (dx / norm, dy / norm), (-dy / norm, dx / norm)


def _brute_distance(p: np.ndarray, grid_size: int = 1_000_001) -> np.ndarray:
    theta = np.linspace(THETA_MIN, THETA_MAX, grid_size)
    gx, gy = spiral_curve(theta)
    out = np.empty(len(p))
    for i in range(0, len(p), 8):
        q = p[i : i + 8]
        d2 = (gx[None, :] - q[:, 0, None]) ** 2 + (gy[None, :] - q[:, 1, None]) ** 2
        out[i : i + 8] = np.sqrt(d2.min(axis=1))
    return out


def _brute_energy(x: np.ndarray, y: np.ndarray) -> float:
    return 2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()


# ----------------------------------------------------------------------------------------- datasets
def test_registry_names():
    assert NAMES == sorted(["spiral", "moons", "s_curve", "swiss_roll", "eight_gaussians"])


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_range(name):
    x = make_toy(name, 5000, seed=0)
    assert isinstance(x, torch.Tensor)
    assert x.shape == (5000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.abs().max() <= 1.1
    # "roughly [-1, 1]": the data fill most of the box, not a corner of it
    assert (x.max(0).values - x.min(0).values).min() > 1.5
    assert make_toy(name, 0, seed=0).shape == (0, 2)
    assert make_toy(name, 1, seed=0).shape == (1, 2)


@pytest.mark.parametrize("name", NAMES)
def test_reproducible(name):
    a = make_toy(name, 777, seed=3)
    assert torch.equal(a, make_toy(name, 777, seed=3))
    assert torch.equal(a, make_toy(name, 777, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a, TOY_DATASETS[name](777, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, make_toy(name, 777, seed=4))
    # a shared generator advances, so consecutive draws differ
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(make_toy(name, 100, generator=g), make_toy(name, 100, generator=g))
    # noisy draws are reproducible too, and noise changes the points
    b = make_toy(name, 777, seed=3, noise=0.05)
    assert torch.equal(b, make_toy(name, 777, seed=3, noise=0.05))
    assert not torch.equal(a, b)


def test_noise_std():
    x = make_toy("spiral", 20000, seed=0)
    y = make_toy("spiral", 20000, seed=0, noise=0.1)
    # the noise is drawn after the curve points (same theta), so the difference is the noise itself
    assert abs((y - x).std().item() - 0.1) < 0.003
    assert abs((y - x).mean().item()) < 0.003


def test_bad_arguments():
    with pytest.raises(ValueError, match="spiral") as err:
        make_toy("circles", 10)
    for name in NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError):
        make_toy("spiral", 10, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError):
        make_toy("moons", -1)
    with pytest.raises(ValueError):
        make_toy("moons", 10, noise=-0.1)


def test_moons_and_eight_gaussians_structure():
    m = make_toy("moons", 10000, seed=1).double().numpy()
    # invert the affine map and check every point is on one of the two unit half circles
    x, y = 1.5 * m[:, 0] + 0.5, 0.75 * m[:, 1] + 0.25
    outer = np.abs(np.hypot(x, y) - 1) < 1e-5
    inner = np.abs(np.hypot(x - 1, y - 0.5) - 1) < 1e-5
    assert (outer | inner).all()
    assert abs(outer.mean() - 0.5) < 1e-3
    g = make_toy("eight_gaussians", 16000, seed=1).double().numpy()
    angle = np.mod(np.round(np.arctan2(g[:, 1], g[:, 0]) / (math.pi / 4)), 8)
    counts = np.bincount(angle.astype(int), minlength=8)
    assert counts.min() > 1700 and counts.max() < 2300
    assert abs(np.hypot(g[:, 0], g[:, 1]).mean() - toy.EIGHT_GAUSSIANS_RADIUS) < 0.01


def test_swiss_roll_is_on_the_spiral_but_arc_length_uniform():
    s = make_toy("swiss_roll", 4000, seed=0)
    assert distance_to_spiral(s).max() < 1e-6
    _, theta = spiral_projection(s)
    # density in theta is proportional to sqrt(1 + theta^2): more points on the outer turn
    mid = 0.5 * (THETA_MIN + THETA_MAX)
    assert (theta > mid).mean() > 0.6


# ----------------------------------------------------------------------------------------- spiral curve
def test_spiral_points_lie_on_curve():
    x = make_toy("spiral", 2000, seed=5)
    d = distance_to_spiral(x)
    assert d.max() < 1e-6  # float32 rounding of the coordinates only
    x64 = toy.spiral(2000, seed=5)
    theta = (
        THETA_MIN
        + (THETA_MAX - THETA_MIN)
        * torch.rand(2000, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    )
    cx, cy = spiral_curve(theta)
    np.testing.assert_allclose(x64.double().numpy(), np.stack([cx, cy], 1), atol=1e-7)


def test_spiral_normalisation_is_exactly_unit_box():
    for axis, coord in (("x", 0), ("y", 1)):
        lo, hi = SPIRAL_EXTREMA_THETA[axis]
        assert spiral_curve(lo)[coord] == -1.0
        assert spiral_curve(hi)[coord] == 1.0
    theta = np.linspace(THETA_MIN, THETA_MAX, 1_000_001)
    for c in spiral_curve(theta):
        assert c.min() >= -1 - 1e-12 and c.max() <= 1 + 1e-12
        assert c.min() < -1 + 1e-9 and c.max() > 1 - 1e-9
    # extrema are endpoints or stationary points
    for axis, coord in (("x", 0), ("y", 1)):
        for t in SPIRAL_EXTREMA_THETA[axis]:
            at_end = t in (THETA_MIN, THETA_MAX)
            assert at_end or abs(spiral_curve_derivative(t)[coord]) < 1e-12
    # the normalisation does not depend on a sample: the raw curve maps affinely
    t = np.array([5.0, 9.0, 13.0])
    (xlo, xhi), (ylo, yhi) = toy.SPIRAL_BOUNDS["x"], toy.SPIRAL_BOUNDS["y"]
    np.testing.assert_allclose(spiral_curve(t)[0], 2 * (t * np.cos(t) - xlo) / (xhi - xlo) - 1, atol=1e-15)
    np.testing.assert_allclose(spiral_curve(t)[1], 2 * (t * np.sin(t) - ylo) / (yhi - ylo) - 1, atol=1e-15)


def test_spiral_derivatives_match_finite_differences():
    theta = np.linspace(THETA_MIN, THETA_MAX, 101)
    h = 1e-6
    pairs = (
        (spiral_curve, spiral_curve_derivative),
        (spiral_curve_derivative, spiral_curve_second_derivative),
    )
    for f, df in pairs:
        (xp, yp), (xm, ym) = f(theta + h), f(theta - h)
        dx, dy = df(theta)
        np.testing.assert_allclose((xp - xm) / (2 * h), dx, atol=1e-7)
        np.testing.assert_allclose((yp - ym) / (2 * h), dy, atol=1e-7)
    x, y = spiral_curve(theta)
    assert x.dtype == np.float64 and x.shape == theta.shape


# ----------------------------------------------------------------------------------------- distance
def test_distance_zero_on_curve():
    theta = np.random.default_rng(0).uniform(THETA_MIN, THETA_MAX, 5000)
    theta = np.concatenate([theta, [THETA_MIN, THETA_MAX]])
    x, y = spiral_curve(theta)
    d, t = spiral_projection(np.stack([x, y], axis=1))
    assert d.max() < 1e-9
    np.testing.assert_allclose(t, theta, atol=1e-9)


@pytest.mark.parametrize("delta", [1e-6, 1e-3, -1e-3, 0.02, -0.02])
def test_distance_along_normal(delta):
    theta = np.random.default_rng(1).uniform(THETA_MIN + 0.1, THETA_MAX - 0.1, 2000)
    x, y = spiral_curve(theta)
    _, (nx, ny) = _unit_tangent_normal(theta)
    d, t = spiral_projection(np.stack([x + delta * nx, y + delta * ny], axis=1))
    np.testing.assert_allclose(d, abs(delta), atol=1e-12, rtol=0)
    np.testing.assert_allclose(t, theta, atol=1e-9)


@pytest.mark.parametrize("end", [THETA_MIN, THETA_MAX])
def test_distance_beyond_endpoint_is_clamped(end):
    (tx, ty), _ = _unit_tangent_normal(end)
    sign = -1.0 if end == THETA_MIN else 1.0
    x, y = spiral_curve(end)
    delta = 0.01
    d, t = spiral_projection(np.array([[x + sign * delta * tx, y + sign * delta * ty]]))
    assert abs(d[0] - delta) < 1e-12
    assert t[0] == end


def test_distance_matches_brute_force():
    rng = np.random.default_rng(2)
    p = np.concatenate(
        [rng.uniform(-1.5, 1.5, (30, 2)), rng.uniform(-0.3, 0.3, (12, 2)), rng.uniform(-4, 4, (6, 2))]
    )
    exact = distance_to_spiral(p)
    brute = _brute_distance(p)
    assert (exact <= brute + 1e-12).all()
    np.testing.assert_allclose(exact, brute, atol=1e-7, rtol=0)


def test_distance_inputs():
    p = np.random.default_rng(3).uniform(-1, 1, (50, 2))
    d = distance_to_spiral(p)
    np.testing.assert_array_equal(d, distance_to_spiral(torch.from_numpy(p)))
    np.testing.assert_allclose(d, distance_to_spiral(torch.from_numpy(p).float()), atol=1e-6)
    np.testing.assert_array_equal(d[:7], distance_to_spiral(p[:7].tolist()))
    assert distance_to_spiral(np.zeros((0, 2))).shape == (0,)
    q = p[:3].copy()
    q[1, 0] = np.nan
    dq = distance_to_spiral(q)
    assert np.isnan(dq[1]) and np.isfinite(dq[[0, 2]]).all()
    with pytest.raises(ValueError):
        distance_to_spiral(np.zeros((4, 3)))
    with pytest.raises(ValueError):
        distance_to_spiral(np.zeros(2))


def test_distance_blocks(monkeypatch):
    p = np.random.default_rng(4).uniform(-1.2, 1.2, (300, 2))
    full = distance_to_spiral(p)
    monkeypatch.setattr(pts, "_BLOCK_ELEMENTS", 7 * pts._GRID_SIZE)
    np.testing.assert_array_equal(distance_to_spiral(p), full)


def test_mean_distance_to_curve():
    p = np.random.default_rng(5).uniform(-1, 1, (100, 2))
    m = mean_distance_to_curve(p)
    assert isinstance(m, float) and m == pytest.approx(distance_to_spiral(p).mean(), abs=1e-15)
    assert mean_distance_to_curve(make_toy("spiral", 500, seed=0), "spiral") < 1e-7
    with pytest.raises(ValueError, match="spiral"):
        mean_distance_to_curve(p, "moons")


# ----------------------------------------------------------------------------------------- energy distance
def test_energy_distance_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(137, 2)), rng.normal(0.3, 1.2, size=(89, 2))
    ref = _brute_energy(x, y)
    assert energy_distance(x, y) == pytest.approx(ref, rel=1e-12, abs=1e-14)
    monkeypatch.setattr(pts, "_BLOCK_ELEMENTS", 1000)  # many uneven blocks
    assert energy_distance(x, y) == pytest.approx(ref, rel=1e-12, abs=1e-14)
    x3, y3 = rng.normal(size=(40, 3)), rng.normal(size=(50, 3))
    assert energy_distance(x3, y3) == pytest.approx(_brute_energy(x3, y3), rel=1e-12, abs=1e-14)


def test_energy_distance_properties():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(500, 2)), rng.normal(size=(400, 2))
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-12)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, y) >= 0
    near, far = energy_distance(x, y + 0.5), energy_distance(x, y + 2.0)
    assert energy_distance(x, y) < near < far
    assert isinstance(energy_distance(torch.from_numpy(x), torch.from_numpy(y).float()), float)
    with pytest.raises(ValueError):
        energy_distance(x, rng.normal(size=(10, 3)))
    with pytest.raises(ValueError):
        energy_distance(x, np.zeros((0, 2)))


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 12), st.just(2)), elements=st.floats(-5, 5)),
    arrays(np.float64, st.tuples(st.integers(1, 12), st.just(2)), elements=st.floats(-5, 5)),
)
def test_energy_distance_hypothesis(x, y):
    e = energy_distance(x, y)
    assert e >= 0
    assert e == pytest.approx(energy_distance(y, x), rel=1e-9, abs=1e-12)
    assert e == pytest.approx(max(_brute_energy(x, y), 0.0), rel=1e-9, abs=1e-12)


def test_energy_distance_speed_sized_inputs():
    a, b = make_toy("spiral", 2000, seed=0), make_toy("spiral", 2000, seed=1)
    e = energy_distance(a, b)
    assert 0 < e < 0.01


def test_energy_distance_with_floor():
    calls = []

    def sample_fn(n, generator):
        calls.append(n)
        return make_toy("moons", n, generator=generator)

    gen_pts = make_toy("moons", 800, seed=123)
    r1 = energy_distance_with_floor(gen_pts, sample_fn, 800, seed=0)
    assert set(r1) == {"energy_distance", "energy_distance_floor"}
    assert calls == [800, 800]
    assert r1 == energy_distance_with_floor(gen_pts, sample_fn, 800, seed=0)
    assert r1 != energy_distance_with_floor(gen_pts, sample_fn, 800, seed=1)
    assert r1["energy_distance_floor"] > 0
    # the floor is the energy distance between two independent fresh draws from the same generator
    g = torch.Generator().manual_seed(0)
    a, b = make_toy("moons", 800, generator=g), make_toy("moons", 800, generator=g)
    assert r1["energy_distance_floor"] == pytest.approx(energy_distance(b, a), rel=1e-12)
    assert r1["energy_distance"] == pytest.approx(energy_distance(gen_pts, a), rel=1e-12)
    # an exact sampler scores like the floor; a shifted one does much worse
    assert r1["energy_distance"] < 5 * r1["energy_distance_floor"]
    shifted = energy_distance_with_floor(gen_pts + 0.3, sample_fn, 800, seed=0)
    assert shifted["energy_distance"] > 10 * shifted["energy_distance_floor"]


def test_points_metrics():
    good = make_toy("spiral", 1000, seed=99)
    m = points_metrics(good, "spiral", seed=0)
    assert set(m) == {"mean_distance_to_curve", "energy_distance", "energy_distance_floor"}
    assert all(isinstance(v, float) for v in m.values())
    assert m["mean_distance_to_curve"] < 1e-7
    assert m["energy_distance"] < 5 * m["energy_distance_floor"]
    assert m == points_metrics(good.numpy(), "spiral", seed=0)
    noisy = good + 0.1 * torch.randn(good.shape, generator=torch.Generator().manual_seed(0))
    bad = points_metrics(noisy, "spiral")
    assert bad["mean_distance_to_curve"] > 0.03
    assert bad["energy_distance"] > m["energy_distance"]
    mo = points_metrics(make_toy("moons", 500, seed=1), "moons", seed=2)
    assert set(mo) == {"energy_distance", "energy_distance_floor"}
    # the reference draw has the same size as the generated points
    g = torch.Generator().manual_seed(2)
    ref = make_toy("moons", 500, generator=g)
    expected = energy_distance(make_toy("moons", 500, seed=1), ref)
    assert mo["energy_distance"] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="moons"):
        points_metrics(good, "circles")


# ----------------------------------------------------------------------------------------- shapes3
def _polyline_distance(p: torch.Tensor, curve: np.ndarray) -> torch.Tensor:
    return torch.cdist(p.double(), torch.from_numpy(curve)).min(1).values


def test_shapes3_labels_and_load_dataset():
    from ddpm.config import DataConfig
    from ddpm.data import load_dataset

    data = load_dataset(DataConfig(name="shapes3", n_samples=3000, data_seed=7))
    assert data.x.shape == (3000, 2) and data.x.dtype == torch.float32
    assert data.y.shape == (3000,) and data.y.dtype == torch.long
    assert data.num_classes == 3 and data.class_names == ["spiral", "s-curve", "moons"]
    assert list(toy.SHAPES3_CLASSES) == data.class_names
    x, y = toy.shapes3(3000, seed=7)
    assert torch.equal(data.x, x) and torch.equal(data.y, y)
    # the unlabelled sets are untouched and still come without labels
    assert "shapes3" not in TOY_DATASETS
    assert load_dataset(DataConfig(name="moons", n_samples=10)).y is None


def test_shapes3_classes_are_the_toy_sets():
    x, y = toy.shapes3(1500, seed=0)
    curves = toy.shapes3_curves()
    assert distance_to_spiral(x[y == 0].double().numpy()).max() < 1e-6
    assert _polyline_distance(x[y == 0], curves[0]).max() < 5e-4  # the polyline agrees with the exact curve
    assert _polyline_distance(x[y == 1], curves[1]).max() < 5e-4
    assert _polyline_distance(x[y == 2], curves[2]).max() < 5e-4
    # the s-curve and moons are not on each other's curves: the labels are not interchangeable
    assert _polyline_distance(x[y == 1], curves[2]).mean() > 0.05
    assert _polyline_distance(x[y == 2], curves[1]).mean() > 0.05


def test_shapes3_balance_and_shuffle():
    _, y = toy.shapes3(3000, seed=1)
    assert torch.bincount(y, minlength=3).tolist() == [1000, 1000, 1000]
    assert torch.bincount(toy.shapes3(10, seed=1)[1], minlength=3).tolist() == [4, 3, 3]
    assert toy.shapes3(0, seed=1)[0].shape == (0, 2)
    assert (y[1:] != y[:-1]).float().mean() > 0.5  # mixed, not in blocks of one class


def test_shapes3_classes_overlap():
    x, y = toy.shapes3(3000, seed=2)
    lo = torch.stack([x[y == c].min(0).values for c in range(3)])
    hi = torch.stack([x[y == c].max(0).values for c in range(3)])
    # every class spans nearly all of [-1, 1]^2, so the intersection of the three boxes does too
    assert lo.min() >= -1.0 - 1e-6 and hi.max() <= 1.0 + 1e-6
    assert ((hi.min(0).values - lo.max(0).values) > 1.8).all()
    # and the classes share the middle of the square: each has points within 0.5 of the centre
    for c in range(3):
        assert (x[y == c].norm(dim=1) < 0.5).sum() > 20


def test_shapes3_seeding():
    a = toy.shapes3(600, seed=3)
    assert all(torch.equal(u, v) for u, v in zip(a, toy.shapes3(600, seed=3)))
    b = toy.shapes3(600, torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], toy.shapes3(600, seed=4)[0])
    noisy = toy.shapes3(600, seed=3, noise=0.05)
    assert torch.equal(noisy[1], a[1])  # the noise is drawn last: same points, same labels, plus noise
    assert abs((noisy[0] - a[0]).std().item() - 0.05) < 0.005
    with pytest.raises(ValueError):
        toy.shapes3(10, torch.Generator(), seed=0)


def test_shapes3_curves_are_dense():
    spiral_xy, s_xy, moons_xy = toy.shapes3_curves()
    half = len(moons_xy) // 2
    for piece in (spiral_xy, s_xy, moons_xy[:half], moons_xy[half:]):
        assert np.linalg.norm(np.diff(piece, axis=0), axis=1).max() < 1e-3
