"""The registry of dataset sources: each name maps to a loader returning a `RawDataset`.

A loader resolves every file it needs before reading any (so a missing file fails at once), reads the
source in its real format, and returns uint8 NHWC images with int64 labels (-1 where unlabelled).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gan_models.errors import DatasetError
from gan_models.io import Progress, cache_root

if TYPE_CHECKING:
    from gan_models.config import DataConfig


SOURCE_ROOT_ENV = "GANOPS_SOURCE_ROOT"


@dataclass
class RawDataset:
    """A dataset as read from its source: splits of (images uint8 NHWC, labels int64)."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    class_names: list[str]
    source_md5: dict[str, str] = field(default_factory=dict)
    """md5 of each source file by name (recorded in the manifest: which exact source bytes were read)."""
    source_info: dict[str, object] = field(default_factory=dict)


def md5_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_dir(name: str) -> Path:
    """Where downloads land: outside `data/`, so raw sources are never versioned with prepared data."""
    return cache_root() / "sources" / name


def source_dir(cfg: DataConfig, name: str, candidates: list[str]) -> Path:
    """The directory holding `name`'s files: `data.source`, else $GANOPS_SOURCE_ROOT, else the cache.

    `candidates` are sub-folders tried in order (for example `MNIST/raw` under a torchvision root);
    the first that exists wins, else the folder itself.
    """
    if cfg.source is not None:
        base = Path(cfg.source)
    elif os.environ.get(SOURCE_ROOT_ENV):
        base = Path(os.environ[SOURCE_ROOT_ENV])
    else:
        base = cache_dir(name)
    if not base.exists() and not cfg.download:
        raise DatasetError(
            f"source directory {base} for dataset {name!r} does not exist; pass --source DIR, "
            f"set ${SOURCE_ROOT_ENV}, or allow a download with --set data.download=true"
        )
    for sub in candidates:
        if (base / sub).is_dir():
            return base / sub
    return base


def require_files(folder: Path, names: list[str], dataset: str) -> list[Path]:
    """Return `folder/name` for each name, or fail naming every missing file."""
    paths = [folder / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"dataset {dataset!r}: missing source file(s): {', '.join(missing)}")
    return paths


def _load_svhn(cfg: DataConfig, progress: Progress | None) -> RawDataset:
    from gan_models.data.svhn import load_svhn

    return load_svhn(cfg, progress)


def _load_synthetic_svhn(cfg: DataConfig, progress: Progress | None) -> RawDataset:
    from gan_models.data.svhn import load_synthetic_svhn

    return load_synthetic_svhn(cfg, progress)


def _load_mnist(cfg: DataConfig, progress: Progress | None) -> RawDataset:
    from gan_models.data.mnist import load_mnist

    return load_mnist(cfg, progress)


def _load_cifar10(cfg: DataConfig, progress: Progress | None) -> RawDataset:
    from gan_models.data.cifar import load_cifar10

    return load_cifar10(cfg, progress)


def _load_celeba(cfg: DataConfig, progress: Progress | None) -> RawDataset:
    from gan_models.data.images import load_celeba

    return load_celeba(cfg, progress)


def _load_image_folder(cfg: DataConfig, progress: Progress | None) -> RawDataset:
    from gan_models.data.images import load_image_folder

    return load_image_folder(cfg, progress)


# Loaders import their format modules lazily: naming a dataset in a config must not import scipy or PIL.
SOURCES: dict[str, Callable[[DataConfig, Progress | None], RawDataset]] = {
    "synthetic-svhn": _load_synthetic_svhn,
    "svhn": _load_svhn,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "celeba": _load_celeba,
    "image-folder": _load_image_folder,
}


def load_source(cfg: DataConfig, progress: Progress | None = None) -> RawDataset:
    """Read the configured dataset from its source."""
    try:
        loader = SOURCES[cfg.dataset]
    except KeyError:
        raise DatasetError(f"unknown dataset {cfg.dataset!r}; known: {', '.join(sorted(SOURCES))}") from None
    return loader(cfg, progress)
