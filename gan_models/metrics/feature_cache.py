"""Features of real images, cached per dataset version, feature extractor, split, count and seed.

The cache holds features rather than Gaussian statistics because KID needs the features themselves; the
Fréchet statistics are cheap to fit from them. Layout under the cache root ($GANOPS_CACHE, default
~/.cache/ganops):

    features/<dataset version>/<extractor name>-<extractor id>/<split>-<count>-<seed>.npy

Every part of a key is content-addressed or a parameter, so an entry can never be stale: new data or new
weights get a new path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from gan_models import io
from gan_models.data.prepared import MANIFEST, PreparedDataset
from gan_models.io import atomic_write
from gan_models.metrics.features import FeatureExtractor
from gan_models.metrics.frechet import MetricError


def dataset_version(dataset: PreparedDataset) -> str:
    """sha256 of the manifest (first 16 hex digits): it lists the sha256 of every array, so equal bytes
    give an equal version wherever and whenever the dataset was prepared."""
    return hashlib.sha256((Path(dataset.path) / MANIFEST).read_bytes()).hexdigest()[:16]


def subset_indices(total: int, count: int, seed: int) -> np.ndarray:
    """A fixed, seeded choice of `count` of `total` indices, sorted (sequential reads of a memmap)."""
    if count == total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` through a temporary file and a rename: readers never see a partial file."""
    with atomic_write(path) as f:
        np.save(f, array, allow_pickle=False)


def real_features_path(
    dataset: PreparedDataset, split: str, extractor: FeatureExtractor, count: int, seed: int, cache_root: Path
) -> Path:
    key = f"{extractor.name}-{extractor.extractor_id}"
    return cache_root / "features" / dataset_version(dataset) / key / f"{split}-{count}-{seed}.npy"


def real_features(
    dataset: PreparedDataset,
    split: str,
    extractor: FeatureExtractor,
    count: int,
    *,
    cache_root: Path | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Features (count, extractor.dim) of a fixed seeded subset of `split`; computed once, then read back."""
    if split not in dataset.splits:
        raise MetricError(
            f"dataset {dataset.name!r} has no {split!r} split (splits: {', '.join(dataset.splits)})"
        )
    images = dataset.images(split)
    if not 0 < count <= len(images):
        raise MetricError(
            f"asked for {count} real images from the {split!r} split of {dataset.name!r}, which holds "
            f"{len(images)}; use a count between 1 and {len(images)}"
        )
    path = real_features_path(dataset, split, extractor, count, seed, cache_root or io.cache_root())
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            cached = None  # unreadable (e.g. a disk error): recompute and overwrite it
        if cached is not None and cached.shape == (count, extractor.dim) and cached.dtype == np.float64:
            return cached
    features = np.asarray(extractor.features(images[subset_indices(len(images), count, seed)]), np.float64)
    if features.shape != (count, extractor.dim):
        raise MetricError(
            f"extractor {extractor.name} returned features of shape {features.shape}, "
            f"expected {(count, extractor.dim)}"
        )
    save_npy_atomic(path, features)
    return features
