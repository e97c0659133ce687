"""Prepare a dataset: read its source, write the prepared directory, return it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gan_models.config import DataConfig
from gan_models.data.prepared import PreparedDataset, verify_prepared, write_prepared
from gan_models.data.sources import RawDataset, load_source
from gan_models.errors import DatasetError
from gan_models.io import Progress

# Keys that say where things are, not what the bytes are: left out of the manifest so that the same
# data prepared on another machine hashes the same.
_LOCATION_KEYS = {"root": True, "source": True, "download": True, "synthetic": {"workers"}}


def prepared_path(cfg: DataConfig) -> Path:
    return Path(cfg.root) / cfg.dataset


def content_params(cfg: DataConfig) -> dict:
    """The data keys that decide the prepared bytes (recorded in the manifest as `params`)."""
    return cfg.model_dump(mode="json", exclude=_LOCATION_KEYS)


def prepare_dataset(cfg: DataConfig, progress: Progress | None = None) -> PreparedDataset:
    """Read `cfg.dataset` from its source and write it to `<root>/<dataset>/` atomically."""
    raw = load_source(cfg, progress)
    if cfg.holdout_test_size:
        raw = carve_split(raw, "test", cfg.holdout_test_size, cfg.label_seed)
    if cfg.val_size:
        raw = carve_split(raw, "val", cfg.val_size, cfg.label_seed)
    params = content_params(cfg)
    return write_prepared(
        raw,
        prepared_path(cfg),
        name=cfg.dataset,
        labels_per_class=cfg.labels_per_class,
        label_seed=cfg.label_seed,
        params=params,
        progress=progress,
    )


_CARVE_KEYS = {"val": "data.val_size", "test": "data.holdout_test_size"}


def carve_split(raw: RawDataset, split: str, size: int, seed: int) -> RawDataset:
    """Move a fixed, seeded choice of `size` train images into split `split` ("val" or "test") unless the
    source has its own. Done before the label split is drawn, so carved images are never in the
    labelled pool and their labels never reach training."""
    if split in raw.splits:
        return raw
    images, labels = raw.splits["train"]
    if size >= len(labels):
        raise DatasetError(
            f"{_CARVE_KEYS[split]}={size} leaves no training images (the train split holds {len(labels)})"
        )
    chosen = np.zeros(len(labels), dtype=bool)
    salt = {"val": 0x7A1, "test": 0x7E5}[split]  # each split its own stream
    chosen[np.random.default_rng([seed, salt]).choice(len(labels), size=size, replace=False)] = True
    splits = dict(raw.splits)
    splits["train"] = (images[~chosen], labels[~chosen])
    splits[split] = (images[chosen], labels[chosen])
    return RawDataset(splits, raw.class_names, raw.source_md5, raw.source_info)


def open_verified(cfg: DataConfig) -> PreparedDataset:
    """Open the prepared dataset after re-hashing it; raise naming every file that differs."""
    path = prepared_path(cfg)
    problems = verify_prepared(path)
    if problems:
        raise DatasetError(f"prepared dataset {path} failed verification:\n  " + "\n  ".join(problems))
    return PreparedDataset.open(path)
