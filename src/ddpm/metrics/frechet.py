"""The Fréchet distance between two Gaussians, from first principles, in float64.

For ``N(mu1, Sigma1)`` and ``N(mu2, Sigma2)`` the squared Fréchet (2-Wasserstein) distance is

    d^2 = ||mu1 - mu2||^2 + Tr(Sigma1) + Tr(Sigma2) - 2 Tr((Sigma1 Sigma2)^{1/2})

(Fréchet 1957; Dowson & Landau 1982). Fitted to Inception features it is the FID of Heusel et al. 2017
("GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium").

The only delicate term is ``Tr((Sigma1 Sigma2)^{1/2})``: ``(Sigma1 Sigma2)^{1/2}`` is a *matrix* square
root of a non-symmetric product, not an element-wise one. We never form it: from covariances we take the
eigenvalues of a similar symmetric matrix (:func:`trace_sqrt_product`); from few feature vectors, the
singular values of their cross-product (:func:`frechet_distance_from_features`).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "gaussian_statistics",
    "sqrtm_psd",
    "trace_sqrt_product",
    "frechet_distance",
    "frechet_distance_from_features",
]

# Eigenvalues down to -PSD_RTOL * (largest |eigenvalue|) are taken as round-off and clamped to 0; below
# that a matrix is refused as not positive semidefinite. Generous enough for covariances that passed
# through float32 (entry-wise relative error ~6e-8, i.e. a spectral error of a few 1e-6 in 2048 dims).
PSD_RTOL = 1e-5

# A negative d^2 down to -DISTANCE_RTOL * (||mu1 - mu2||^2 + Tr Sigma1 + Tr Sigma2) is round-off and
# returned as 0.0. The square root of a (near-)singular matrix is ill-conditioned: an eigenvalue that is
# 0 up to eps * lambda_max becomes sqrt(eps * lambda_max) ~ 1.5e-8 sqrt(lambda_max) after the root, so
# each of D null directions may shift the trace term by ~1e-8 of the scale; 1e-5 covers D in the
# thousands. Anything more negative is a bug or invalid input, and raises.
DISTANCE_RTOL = 1e-5


def _as_float64(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().to(torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), both float64, of ``features`` (N, D), N >= 2."""
    x = _features(features)
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _features(features) -> np.ndarray:
    x = _as_float64(features)
    if x.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    return x


def _psd_eigh(matrix: np.ndarray, name: str, vectors: bool = True):
    """Eigenvalues (and vectors) of the symmetric part of ``matrix``, round-off negatives clamped to 0."""
    sym = 0.5 * (matrix + matrix.T)
    eigenvalues, eigenvectors = np.linalg.eigh(sym) if vectors else (np.linalg.eigvalsh(sym), None)
    scale = np.abs(eigenvalues).max(initial=0.0)
    if eigenvalues.size and eigenvalues.min() < -PSD_RTOL * scale:
        raise ValueError(f"{name} is not positive semidefinite (eigenvalue {eigenvalues.min():.3g})")
    return np.clip(eigenvalues, 0.0, None), eigenvectors


def _square(matrix, name: str) -> np.ndarray:
    m = _as_float64(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} has non-finite entries")
    return m


def sqrtm_psd(matrix) -> np.ndarray:
    """Principal square root of a symmetric PSD matrix: ``V diag(sqrt(lambda)) V^T`` from ``eigh``.

    The input is symmetrised first; eigenvalues that are negative by round-off are clamped to 0.
    """
    eigenvalues, v = _psd_eigh(_square(matrix, "matrix"), "matrix")
    return (v * np.sqrt(eigenvalues)) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
    """``Tr((Sigma1 Sigma2)^{1/2})`` for symmetric PSD ``Sigma1``, ``Sigma2``, without complex arithmetic.

    With ``S = Sigma1^{1/2}`` we have ``Sigma1 Sigma2 = S (S Sigma2 S) S^{-1}`` (for singular ``S``, AB and
    BA still share their eigenvalues with A = S, B = S Sigma2), so ``Sigma1 Sigma2`` is similar to
    ``S Sigma2 S``. The latter is symmetric PSD, hence its eigenvalues are real and >= 0, and the trace of
    the principal root is the sum of their square roots. This avoids the general ``scipy.linalg.sqrtm``
    of a non-symmetric matrix, whose Schur form can leave spurious imaginary parts and loses accuracy
    when the covariances are near-singular (few samples, N < D).
    """
    s1 = _square(sigma1, "sigma1")
    s2 = _square(sigma2, "sigma2")
    if s1.shape != s2.shape:
        raise ValueError(f"sigma1 and sigma2 differ in shape: {s1.shape} vs {s2.shape}")
    root = sqrtm_psd(s1)
    # An indefinite sigma2 shows up here (where sigma1 is non-singular) as a negative eigenvalue.
    eigenvalues, _ = _psd_eigh(root @ s2 @ root, "sigma1^(1/2) sigma2 sigma1^(1/2)", vectors=False)
    return float(np.sqrt(eigenvalues).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance ``d^2`` between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (module docstring).

    A negative result within :data:`DISTANCE_RTOL` of the scale is round-off and returned as 0.0.
    """
    m1, m2 = _as_float64(mu1), _as_float64(mu2)
    s1, s2 = _square(sigma1, "sigma1"), _square(sigma2, "sigma2")
    if m1.ndim != 1 or m1.shape != m2.shape or s1.shape != (m1.size, m1.size) or s2.shape != s1.shape:
        raise ValueError(
            f"expected mu (D,) and sigma (D, D); got mu1 {m1.shape}, sigma1 {s1.shape}, "
            f"mu2 {m2.shape}, sigma2 {s2.shape}"
        )
    mean_term = float(np.sum((m1 - m2) ** 2))
    trace1, trace2 = float(np.trace(s1)), float(np.trace(s2))
    return _combine(mean_term, trace1, trace2, trace_sqrt_product(s1, s2))


def _combine(mean_term: float, trace1: float, trace2: float, trace_sqrt: float) -> float:
    """``d^2`` from its four terms, a round-off negative (see :data:`DISTANCE_RTOL`) returned as 0.0."""
    d2 = mean_term + trace1 + trace2 - 2.0 * trace_sqrt
    if d2 < 0.0:
        if d2 < -DISTANCE_RTOL * (mean_term + abs(trace1) + abs(trace2)):
            raise ValueError(f"Fréchet distance came out negative ({d2:.3g}): are the covariances PSD?")
        d2 = 0.0
    return d2


def frechet_distance_from_features(features1, features2) -> float:
    """Squared Fréchet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D).

    When ``N1 N2 <= D^2`` (few samples, as in a quick FID) the trace term is taken from the centred
    features ``X1``, ``X2`` instead of the D x D covariances: with ``Sigma_i = X_i^T X_i / (N_i - 1)``,
    the non-zero eigenvalues of ``Sigma1 Sigma2`` are those of ``M M^T``, ``M = X1 X2^T / sqrt((N1 - 1)
    (N2 - 1))`` (AB and BA share them), so ``Tr((Sigma1 Sigma2)^{1/2})`` is the sum of the singular
    values of the N1 x N2 matrix ``M``. Exact, far cheaper than two D x D eigen-decompositions, and
    free of the square-root ill-conditioning of rank-deficient covariances.
    """
    x1, x2 = _features(features1), _features(features2)
    (n1, d), (n2, d2) = x1.shape, x2.shape
    if d != d2:
        raise ValueError(f"feature sets differ in dimension: {d} vs {d2}")
    if n1 * n2 > d * d:
        return frechet_distance(*gaussian_statistics(x1), *gaussian_statistics(x2))
    mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
    c1, c2 = x1 - mu1, x2 - mu2
    trace_sqrt = float(np.linalg.svd(c1 @ c2.T / np.sqrt((n1 - 1) * (n2 - 1)), compute_uv=False).sum())
    trace1, trace2 = float(np.sum(c1**2)) / (n1 - 1), float(np.sum(c2**2)) / (n2 - 1)
    return _combine(float(np.sum((mu1 - mu2) ** 2)), trace1, trace2, trace_sqrt)
