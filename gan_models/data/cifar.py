"""CIFAR-10 from its python pickle batches (`cifar-10-batches-py/`), read without arbitrary unpickling."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gan_models.data.sources import RawDataset, cache_dir, md5_file, require_files, source_dir
from gan_models.errors import DatasetError
from gan_models.io import Progress, atomic_write

if TYPE_CHECKING:
    from gan_models.config import DataConfig

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
META = "batches.meta"


class _ArrayUnpickler(pickle.Unpickler):
    """Allows only what the official batches contain: numpy arrays, dtypes, lists, dicts, bytes."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 carry bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict[bytes, Any]:
    """Read one pickled batch (Python 2 pickles: keys come back as bytes)."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise DatasetError(
            f"{path}: not a readable CIFAR-10 pickle batch (truncated or damaged?): {e}"
        ) from e
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a dict, found {type(batch).__name__}")
    return batch


def _images_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = read_batch(path)
    if b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{path}: expected keys b'data' and b'labels', found {sorted(batch)}")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}"
        )
    # Rows hold the red plane, then green, then blue, each 32x32 row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def load_cifar10(cfg: DataConfig, progress: Progress | None = None) -> RawDataset:
    """CIFAR-10 train (5 batches, 50,000) and test (10,000), 32x32 RGB, 10 classes."""
    folder = source_dir(cfg, "cifar10", ["cifar-10-batches-py"])
    if cfg.download and not (folder / META).exists():
        from torchvision.datasets import CIFAR10  # md5-checked download

        CIFAR10(str(cache_dir("cifar10")), download=True)
        folder = cache_dir("cifar10") / "cifar-10-batches-py"
    paths = require_files(folder, TRAIN_BATCHES + TEST_BATCHES + [META], "cifar10")
    meta = read_batch(paths[-1])
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", [])]
    if len(names) != 10:
        raise DatasetError(f"{paths[-1]}: expected 10 label_names, found {len(names)}")
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for i, path in enumerate(paths[:-1]):
        if progress:
            progress(f"read {path.name}", i, len(paths) - 1)
        parts["train" if path.name in TRAIN_BATCHES else "test"].append(_images_labels(path))
    data = {
        split: (np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps]))
        for split, ps in parts.items()
    }
    for split, (_, labels) in data.items():
        if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
            raise DatasetError(f"cifar10 {split}: labels must be 0..9")
    return RawDataset(data, names, source_md5={p.name: md5_file(p) for p in paths})


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images uint8 (N, 32, 32, 3) as an official-format batch (used to build test fixtures)."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": data,
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
    }
    with atomic_write(path) as f:
        pickle.dump(batch, f, protocol=2)
