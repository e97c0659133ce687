"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD^2 under a cubic polynomial kernel.

Matches torch-fidelity's `kid_features_to_metric` (and clean-fid's `kernel_distance`, which computes the
same estimator): k(x, y) = (x·y / d + 1)^3, the mean and (population) standard deviation of the
unbiased MMD^2 over `subsets` random subsets of `subset_size` rows drawn without replacement, first
argument then second, from `np.random.RandomState(seed)`. So `kernel_inception_distance(a, b, seed=s)` gives
torch-fidelity's numbers for input1=a, input2=b, rng_seed=s on the same features.
Unlike the Fréchet distance it needs no covariance, so it is unbiased and usable with few images.
"""

from __future__ import annotations

import numpy as np

from gan_models.metrics.frechet import MetricError


def _check_features(features: np.ndarray, what: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise MetricError(f"{what}: expected a (N, D) array of features, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise MetricError(f"{what}: features hold NaN or infinity")
    return features


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-sized samples x, y (m, d) under k(a, b) = (a·b / d + 1)^3.

    The within-sample sums leave out the diagonal (k(x_i, x_i)), the cross term keeps it: that is the
    estimator of the KID paper and of torch-fidelity's `mmd_est="unbiased"`.
    """
    m, d = x.shape
    k_xx, k_yy, k_xy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def _cubic_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a b^T / d + 1)^3, in place: ** 3 goes through the slow general `pow`, products do not."""
    gram = a @ b.T
    gram /= a.shape[1]
    gram += 1
    cube = gram * gram
    cube *= gram
    return cube


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID between real and fake features (N, D) and (M, D): (mean, std) of the subset MMD^2 estimates.

    `subset_size` is capped at min(N, M), so small evaluations still work (torch-fidelity refuses them
    instead); the estimate needs at least two images on each side.
    """
    real = _check_features(real, "real features")
    fake = _check_features(fake, "generated features")
    if real.shape[1] != fake.shape[1]:
        raise MetricError(
            f"real and generated features differ in dimension ({real.shape[1]} vs {fake.shape[1]}); "
            "were they made by the same feature extractor?"
        )
    if subsets < 1:
        raise MetricError(f"KID needs at least one subset, got subsets={subsets}")
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise MetricError(
            f"KID needs at least 2 real and 2 generated images, got {len(real)} real and {len(fake)} generated"
        )
    rng = np.random.RandomState(seed)  # torch-fidelity's generator and draw order, for identical subsets
    estimates = np.empty(subsets)
    for i in range(subsets):
        x = real[rng.choice(len(real), size, replace=False)]
        y = fake[rng.choice(len(fake), size, replace=False)]
        estimates[i] = polynomial_mmd2(x, y)
    return float(estimates.mean()), float(estimates.std())
