"""Distribution metrics between real and generated features: the Fréchet distance and KID, with metadata.

A caller computes both feature sets with one extractor (for the domain metric: `load_or_train`, then
`real_features` for the cached real side and `extractor.features` for generated images), and logs
`result.metrics` as metrics and `result.metadata` as parameters, so every number says which
implementation, which extractor (name and weights hash) and how many images on each side produced it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gan_models.metrics.features import FeatureExtractor
from gan_models.metrics.frechet import FeatureStats, MetricError, stats_distance
from gan_models.metrics.kid import kernel_inception_distance

IMPLEMENTATION = "ganops-fd-eigh+kid-poly3-unbiased/v1"
"""Fréchet distance: pytorch-fid's formula (eigen-decomposition square root); KID: torch-fidelity's."""


@dataclass(frozen=True)
class DistributionResult:
    metrics: dict[str, float]  # {prefix}_fd, {prefix}_kid, {prefix}_kid_std
    metadata: dict[str, str | int]  # implementation, extractor name and id, n_real, n_fake


def distribution_metrics(
    real: np.ndarray,
    fake: np.ndarray,
    extractor: FeatureExtractor,
    *,
    prefix: str = "domain",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> DistributionResult:
    """FD and KID between real and generated features (N, D), (M, D) made by `extractor`.

    The Fréchet distance needs more images than feature dimensions on each side (a full covariance);
    fewer raise a `MetricError` saying how many are needed.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    for what, features in (("real features", real), ("generated features", fake)):
        if features.ndim != 2 or features.shape[1] != extractor.dim:
            raise MetricError(
                f"{what}: expected shape (N, {extractor.dim}) from {extractor.name}, got {features.shape}"
            )
    fd = stats_distance(
        FeatureStats.from_features(real, f"{prefix} real"),
        FeatureStats.from_features(fake, f"{prefix} generated"),
    )
    kid, kid_std = kernel_inception_distance(
        real, fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    return DistributionResult(
        metrics={f"{prefix}_fd": fd, f"{prefix}_kid": kid, f"{prefix}_kid_std": kid_std},
        metadata={
            f"{prefix}_implementation": IMPLEMENTATION,
            f"{prefix}_extractor": extractor.name,
            f"{prefix}_extractor_id": extractor.extractor_id,
            f"{prefix}_n_real": len(real),
            f"{prefix}_n_fake": len(fake),
            f"{prefix}_kid_subset_size": min(kid_subset_size, len(real), len(fake)),
        },
    )
