"""The Fréchet distance: closed forms, agreement with scipy's general ``sqrtm``, and stability."""

import numpy as np
import pytest
import scipy.linalg
import torch

from ddpm.metrics.frechet import (
    frechet_distance,
    frechet_distance_from_features,
    gaussian_statistics,
    sqrtm_psd,
    trace_sqrt_product,
)


def random_spd(rng, d, condition=10.0):
    """A dense SPD matrix with eigenvalues spread over ``[1, condition]`` in a random basis."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, condition, d)) @ q.T


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    """Independent reference: the general (Schur) matrix square root of the non-symmetric product."""
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root).real)


def elementwise_sqrt_frechet(mu1, sigma1, mu2, sigma2):
    """The bug of a public port: an element-wise square root of Sigma1 Sigma2 instead of a matrix root."""
    product = sigma1 @ sigma2
    with np.errstate(invalid="ignore"):
        root = np.sqrt(product)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def property_failures(distance, seed=0, d=6):
    """Run the key identities against an implementation ``distance(mu1, s1, mu2, s2)``; list the failures."""
    rng = np.random.default_rng(seed)
    failures = []
    mu, sigma = rng.standard_normal(d), random_spd(rng, d)
    same = distance(mu, sigma, mu, sigma)
    if not abs(same) <= 1e-9 * np.trace(sigma):
        failures.append(f"d(P, P) = {same} for a non-diagonal covariance")
    for _ in range(3):
        args = (rng.standard_normal(d), random_spd(rng, d), rng.standard_normal(d), random_spd(rng, d))
        got, want = distance(*args), scipy_frechet(*args)
        if not np.isclose(got, want, rtol=1e-8, atol=0):
            failures.append(f"disagrees with scipy: {got} vs {want}")
    return failures


def test_property_check_passes_for_ours_and_catches_elementwise_sqrt():
    assert property_failures(frechet_distance) == []
    failures = property_failures(elementwise_sqrt_frechet)
    assert failures, "the property check must be able to fail"
    assert any("d(P, P)" in f for f in failures) and any("scipy" in f for f in failures)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    lam1, lam2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(lam1) - np.sqrt(lam2)) ** 2)
    got = frechet_distance(mu1, np.diag(lam1), mu2, np.diag(lam2))
    assert got == pytest.approx(want, rel=1e-12)


def test_codiagonalisable_covariances_closed_form():
    """Same eigenvectors, different eigenvalues: the matrices commute and d^2 has a closed form."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    lam1, lam2 = rng.uniform(0.01, 5, 8), rng.uniform(0.01, 5, 8)
    s1, s2 = (q * lam1) @ q.T, (q * lam2) @ q.T
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(lam1) - np.sqrt(lam2)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_scipy_on_non_commuting_spd(seed):
    rng = np.random.default_rng(seed)
    d = 12
    s1, s2 = random_spd(rng, d, 100.0), random_spd(rng, d, 100.0)
    assert np.abs(s1 @ s2 - s2 @ s1).max() > 1.0  # genuinely non-commuting
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-8)


def test_symmetric_in_its_arguments():
    rng = np.random.default_rng(3)
    a = (rng.standard_normal(7), random_spd(rng, 7, 50.0))
    b = (rng.standard_normal(7), random_spd(rng, 7, 50.0))
    assert frechet_distance(*a, *b) == pytest.approx(frechet_distance(*b, *a), rel=1e-10)


def test_zero_for_identical_non_diagonal_gaussians():
    rng = np.random.default_rng(4)
    mu, sigma = rng.standard_normal(10), random_spd(rng, 10, 1e3)
    assert abs(sigma - np.diag(np.diag(sigma))).max() > 0.1
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_sqrtm_psd_squares_back_and_matches_scipy():
    rng = np.random.default_rng(5)
    sigma = random_spd(rng, 9, 1e4)
    root = sqrtm_psd(sigma)
    np.testing.assert_allclose(root @ root, sigma, rtol=0, atol=1e-10 * np.abs(sigma).max())
    np.testing.assert_allclose(root, root.T, atol=0)
    np.testing.assert_allclose(root, scipy.linalg.sqrtm(sigma).real, atol=1e-10)
    with pytest.raises(ValueError, match="not positive semidefinite"):
        sqrtm_psd(np.diag([1.0, -1.0]))


def test_rank_deficient_features_with_fewer_samples_than_dimensions():
    """Rank-5 features in 20 dims, N = 12 < D: both covariances are singular."""
    rng = np.random.default_rng(6)
    basis = rng.standard_normal((5, 20))
    f1 = rng.standard_normal((12, 5)) @ basis
    f2 = rng.standard_normal((12, 5)) @ basis + 0.5
    mu1, s1 = gaussian_statistics(f1)
    mu2, s2 = gaussian_statistics(f2)
    assert np.linalg.matrix_rank(s1) == 5
    assert 0.0 <= frechet_distance(mu1, s1, mu1, s1) < 1e-7
    got = frechet_distance(mu1, s1, mu2, s2)
    # Near-singular square roots are ill-conditioned for any method (error ~ sqrt(eps)), so 1e-6.
    assert np.isfinite(got) and got > 0
    assert got == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)


def test_tiny_eigenvalues_are_finite_and_follow_the_closed_form():
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    lam1 = np.array([1.0, 0.5, 1e-12, 3e-12, 0.0, 0.0])
    lam2 = np.array([2.0, 1e-12, 0.3, 0.0, 5e-12, 0.0])
    s1, s2 = (q * lam1) @ q.T, (q * lam2) @ q.T
    got = frechet_distance(np.zeros(6), s1, np.zeros(6), s2)
    want = np.sum((np.sqrt(lam1) - np.sqrt(lam2)) ** 2)
    assert np.isfinite(got) and got >= 0
    assert got == pytest.approx(want, rel=1e-6)
    assert trace_sqrt_product(s1, s1) == pytest.approx(lam1.sum(), rel=1e-6)
    assert frechet_distance(np.zeros(6), s1, np.zeros(6), s1) < 1e-7  # clamped, never negative


def test_samples_of_the_same_gaussian_are_close_and_a_mean_shift_is_recovered():
    rng = np.random.default_rng(8)
    d, n = 4, 200_000
    chol = np.linalg.cholesky(random_spd(rng, d, 5.0))
    f1 = rng.standard_normal((n, d)) @ chol.T
    f2 = rng.standard_normal((n, d)) @ chol.T
    same = frechet_distance_from_features(f1, f2)
    assert 0 <= same < 2e-3
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    # The same samples, translated: exactly ||shift||^2.
    exact = frechet_distance_from_features(torch.from_numpy(f1), f1 + shift)
    assert exact == pytest.approx(np.sum(shift**2), rel=1e-9)
    # Independent samples: the cross term 2 shift.(mean error) has std <= 0.035 here; 0.15 is ~4 std.
    assert frechet_distance_from_features(f1, f2 + shift) == pytest.approx(np.sum(shift**2), abs=0.15)


@pytest.mark.parametrize("shape1, shape2", [((12, 30), (9, 30)), ((3, 40), (25, 40)), ((40, 6), (50, 6))])
def test_features_route_matches_covariance_route(shape1, shape2):
    """Few vectors (N1 N2 <= D^2) use the N1 x N2 cross-product's singular values; many, the covariances."""
    rng = np.random.default_rng(9)
    mix = rng.standard_normal((shape1[1], shape1[1]))
    f1 = rng.standard_normal(shape1) @ mix
    f2 = rng.standard_normal(shape2) @ mix + 0.3
    via_covariances = frechet_distance(*gaussian_statistics(f1), *gaussian_statistics(f2))
    # The covariance route carries the sqrt(eps) error of rank-deficient square roots: compare at 1e-6.
    assert frechet_distance_from_features(f1, f2) == pytest.approx(via_covariances, rel=1e-6)
    assert frechet_distance_from_features(f1, f2) == pytest.approx(frechet_distance_from_features(f2, f1))
    trace = np.trace(np.cov(f1, rowvar=False))
    assert 0.0 <= frechet_distance_from_features(f1, f1) <= 1e-12 * trace
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance_from_features(f1, f2[:, :-1])


def test_gaussian_statistics_matches_numpy_and_refuses_bad_input():
    x = torch.randn(30, 3, dtype=torch.float32)
    mu, sigma = gaussian_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (3, 3)
    np.testing.assert_allclose(sigma, np.cov(x.double().numpy(), rowvar=False), rtol=1e-12)
    for bad in (np.zeros((1, 3)), np.zeros(5), np.zeros((2, 2, 2))):
        with pytest.raises(ValueError):
            gaussian_statistics(bad)


def test_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="expected mu"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="expected mu"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="square"):
        frechet_distance(np.zeros(3), np.ones((3, 2)), np.zeros(3), np.eye(3))
