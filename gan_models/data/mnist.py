"""MNIST from its idx files in torchvision's layout (`<root>/MNIST/raw/`), plain or gzipped."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gan_models.data.sources import RawDataset, cache_dir, md5_file, source_dir
from gan_models.errors import DatasetError
from gan_models.io import Progress, write_bytes

if TYPE_CHECKING:
    from gan_models.config import DataConfig

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASS_NAMES = [str(d) for d in range(10)]


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file of unsigned bytes (magic 0x0000 08 NDIM, big-endian dims, then the data)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: not an idx file (bad magic number)")
    if raw[2] != 0x08:
        raise DatasetError(f"{path}: idx element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: header promises {expected} bytes of data for shape {dims}, file holds {len(raw) - header} "
            "(truncated or damaged)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file (used to build test fixtures in the real format)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    write_bytes(path, header + array.tobytes())


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"dataset 'mnist': missing source file {folder / name} (or {name}.gz)")


def load_mnist(cfg: DataConfig, progress: Progress | None = None) -> RawDataset:
    """MNIST train (60,000) and test (10,000), 28x28 grayscale, labels 0..9."""
    folder = source_dir(cfg, "mnist", ["MNIST/raw", "mnist/MNIST/raw"])
    if cfg.download and not (folder / FILES["train"][0]).exists():
        from torchvision.datasets import MNIST  # md5-checked download into <root>/MNIST/raw

        root = cache_dir("mnist")
        MNIST(str(root), train=True, download=True)
        folder = root / "MNIST" / "raw"
    paths = {split: [_find(folder, n) for n in names] for split, names in FILES.items()}
    data, md5s = {}, {}
    for i, (split, (img_path, lbl_path)) in enumerate(paths.items()):
        if progress:
            progress(f"read {img_path.name}", i, len(paths))
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{img_path} / {lbl_path}: expected (N, 28, 28) images and N labels, got {images.shape} and {labels.shape}"
            )
        if labels.max(initial=0) > 9:
            raise DatasetError(f"{lbl_path}: labels must be 0..9, found {int(labels.max())}")
        data[split] = (images[..., None].copy(), labels.astype(np.int64))
        md5s.update({p.name: md5_file(p) for p in (img_path, lbl_path)})
    return RawDataset(data, CLASS_NAMES, source_md5=md5s)
