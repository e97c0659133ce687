from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gan_models.config import Config, load_config
from gan_models.data.prepared import PreparedDataset, write_prepared
from gan_models.data.sources import RawDataset


def tiny_dataset(
    path: Path, shape: tuple[int, int, int] = (28, 28, 1), n: int = 120, seed: int = 0
) -> PreparedDataset:
    """Blobs whose position encodes the class: learnable, and cheap to train on."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, size=(n, *shape), dtype=np.uint8)
    side = shape[0]
    for i, c in enumerate(labels):
        x = 2 + (c * (side - 8)) // 9
        images[i, side // 3 : side // 3 + 6, x : x + 6] = 230
    raw = RawDataset(
        {"train": (images, labels), "test": (images[:20], labels[:20])}, [str(i) for i in range(10)]
    )
    return write_prepared(raw, path, name="tiny", labels_per_class=2, label_seed=0, params={})


def tiny_config(*overrides: str) -> Config:
    return load_config(
        None,
        [
            "model.g_features=8",
            "model.d_features=8",
            "model.latent_dim=16",
            *(["model.stacked_feature_dim=16"] if "model.name=stackedgan" in overrides else []),
            "train.batch_size=20",
            "train.epochs=2",
            "train.device=cpu",
            "train.ema_decay=0.9",
            *overrides,
        ],
    )


@pytest.fixture
def mnist_like(tmp_path: Path) -> PreparedDataset:
    return tiny_dataset(tmp_path / "data" / "tiny")
