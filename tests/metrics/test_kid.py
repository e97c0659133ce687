"""KID equals the estimator of the KID paper / torch-fidelity / clean-fid, and behaves like a distance."""

from __future__ import annotations

import numpy as np
import pytest

from gan_models.metrics.frechet import MetricError
from gan_models.metrics.kid import kernel_inception_distance, polynomial_mmd2


def naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 of Bińkowski et al. (2018), eq. (2) with the cubic kernel, as plain loops."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def clean_fid_kid(x: np.ndarray, y: np.ndarray) -> float:
    """clean-fid's `kernel_distance` for one subset: a different arrangement of the same estimator."""
    m, n = x.shape
    a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
    b = (x @ y.T / n + 1) ** 3
    return float(((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m)


def test_mmd2_equals_the_papers_estimator_written_out() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.2, size=(12, 5))
    assert polynomial_mmd2(x, y) == pytest.approx(naive_mmd2(x, y), rel=1e-12, abs=1e-12)
    assert polynomial_mmd2(x, y) == pytest.approx(clean_fid_kid(x, y), rel=1e-12, abs=1e-12)


def test_kid_averages_subsets_drawn_as_torch_fidelity_draws_them() -> None:
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(20, 4)), rng.normal(0.5, 1.0, size=(15, 4))
    mean, std = kernel_inception_distance(real, fake, subsets=3, subset_size=8, seed=7)
    draw = np.random.RandomState(7)
    estimates = []
    for _ in range(3):
        x = real[draw.choice(20, 8, replace=False)]
        y = fake[draw.choice(15, 8, replace=False)]
        estimates.append(naive_mmd2(x, y))
    assert mean == pytest.approx(np.mean(estimates), rel=1e-10)
    assert std == pytest.approx(np.std(estimates), rel=1e-10)


def test_kid_is_near_zero_for_samples_of_one_distribution_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(2)
    real = rng.normal(size=(2000, 64))
    same = rng.normal(size=(2000, 64))
    shifted = rng.normal(0.5, 1.0, size=(2000, 64))
    kid_same, std_same = kernel_inception_distance(real, same, subsets=20, subset_size=500)
    kid_shifted, _ = kernel_inception_distance(real, shifted, subsets=20, subset_size=500)
    # Unbiased: the same distribution scatters around 0 (it can be slightly negative).
    assert abs(kid_same) < 3 * std_same + 1e-3
    assert kid_shifted > 100 * max(abs(kid_same), std_same)


def test_kid_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    first = kernel_inception_distance(real, fake, subsets=5, subset_size=100, seed=1)
    assert kernel_inception_distance(real, fake, subsets=5, subset_size=100, seed=1) == first
    assert kernel_inception_distance(real, fake, subsets=5, subset_size=100, seed=2) != first


def test_subset_size_is_capped_at_the_smaller_sample() -> None:
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(50, 6)), rng.normal(size=(30, 6))
    capped = kernel_inception_distance(real, fake, subsets=4, subset_size=1000)
    assert capped == kernel_inception_distance(real, fake, subsets=4, subset_size=30)


def test_bad_inputs_raise_clear_errors() -> None:
    ok = np.zeros((10, 4))
    with pytest.raises(MetricError, match="at least 2 real and 2 generated"):
        kernel_inception_distance(ok, np.zeros((1, 4)))
    with pytest.raises(MetricError, match="differ in dimension"):
        kernel_inception_distance(ok, np.zeros((10, 5)))
    with pytest.raises(MetricError, match="NaN or infinity"):
        kernel_inception_distance(ok, np.full((10, 4), np.nan))
    with pytest.raises(MetricError, match=r"\(N, D\)"):
        kernel_inception_distance(np.zeros(10), ok)
