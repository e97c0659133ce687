"""The Fréchet distance between two Gaussians fitted to features (FID's formula), and KID.

`frechet_distance` equals pytorch-fid's `calculate_frechet_distance` on the same statistics; the matrix
square root comes from an eigen-decomposition instead of `scipy.linalg.sqrtm`, which is both faster and
numerically safe: tr(sqrt(S1 S2)) = sum(sqrt(eig(sqrt(S1) S2 sqrt(S1)))), and that product is symmetric
positive semi-definite, so its eigenvalues are real and clipped at 0 against round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gan_models.errors import GanOpsError


class MetricError(GanOpsError):
    """A metric cannot be computed from what it was given (too few images, mismatched features)."""


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance (N-1 normalised, as pytorch-fid) of N feature vectors."""

    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    count: int

    @classmethod
    def from_features(cls, features: np.ndarray, what: str = "features") -> FeatureStats:
        """Fit the Gaussian; a full covariance needs more vectors than dimensions, else it is singular."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2:
            raise MetricError(f"{what}: expected a (N, D) array, got shape {features.shape}")
        count, dim = features.shape
        if count <= dim:
            raise MetricError(
                f"{what}: {count} images give a singular {dim}x{dim} covariance; the Fréchet distance "
                f"needs more images than feature dimensions (at least {dim + 1})"
            )
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), count)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped to 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise MetricError(
            f"statistics do not match: means {mu1.shape} and {mu2.shape}, covariances {sigma1.shape} "
            f"and {sigma2.shape}"
        )
    root1 = _sqrt_psd(sigma1)
    # sqrt(S1) S2 sqrt(S1) is similar to S1 S2, so both have the same eigenvalues (and trace of root).
    inner = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def stats_distance(real: FeatureStats, fake: FeatureStats) -> float:
    return frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
