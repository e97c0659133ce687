"""SVHN cropped digits in the official MATLAB v5 format, and the offline `synthetic-svhn` built on it.

Official files: `X` uint8 of shape (32, 32, 3, N), `y` of shape (N, 1) with labels 1..10, where 10
means the digit 0. `synthetic-svhn` writes the same files and reads them back through `read_svhn_mat`,
so the real and the synthetic data share one code path.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gan_models.data.sources import (
    RawDataset,
    cache_dir,
    md5_file,
    require_files,
    source_dir,
)
from gan_models.errors import DatasetError
from gan_models.io import Progress, atomic_write

if TYPE_CHECKING:
    from gan_models.config import DataConfig

CLASS_NAMES = [str(d) for d in range(10)]
OFFICIAL = {  # split: (file name, md5, number of images)
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", 73_257),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", 26_032),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7", 531_131),
}
# scipy stamps the creation time into the 116-byte header text; a fixed text keeps files byte-identical.
_HEADER_TEXT = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: ganops"


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN `.mat` file: images uint8 (N, 32, 32, 3) and labels int64 0..9 (10 -> 0)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # scipy raises many types for damaged files; all mean the same to a user
        raise DatasetError(f"{path}: not a readable MATLAB v5 file (truncated or damaged?): {e}") from e
    if "X" not in mat or "y" not in mat:
        raise DatasetError(
            f"{path}: expected variables 'X' and 'y', found {sorted(k for k in mat if not k.startswith('__'))}"
        )
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{path}: 'X' must be uint8 of shape (32, 32, 3, N), got {x.dtype} {x.shape}")
    labels = np.asarray(y).reshape(-1).astype(np.int64)
    if labels.shape[0] != x.shape[3]:
        raise DatasetError(f"{path}: 'y' holds {labels.shape[0]} labels for {x.shape[3]} images")
    bad = (labels < 1) | (labels > 10)
    if bad.any():
        raise DatasetError(f"{path}: labels must be 1..10, found {np.unique(labels[bad])[:5].tolist()}")
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels


def write_svhn_mat(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images uint8 (N, 32, 32, 3) and labels 0..9 as an official-format SVHN file, atomically."""
    from scipy.io import savemat

    y = labels.astype(np.uint8).reshape(-1, 1)
    y[y == 0] = 10
    with atomic_write(path) as f:
        savemat(f, {"X": images.transpose(1, 2, 3, 0), "y": y}, format="5", do_compression=False)
        f.seek(0)
        f.write(_HEADER_TEXT.ljust(116, b" "))


def _download_svhn(folder: Path, splits: list[str]) -> None:
    from torchvision.datasets import SVHN  # md5-checked download

    for split in splits:
        SVHN(str(folder), split=split, download=True)


def load_svhn(cfg: DataConfig, progress: Progress | None = None) -> RawDataset:
    """Real SVHN from `data.source` (or a download): train, test and, if asked, extra."""
    splits = ["train", "test"] + (["extra"] if cfg.svhn_extra else [])
    folder = source_dir(cfg, "svhn", ["svhn", "SVHN"])
    names = [OFFICIAL[s][0] for s in splits]
    if cfg.download and not all((folder / n).is_file() for n in names):
        folder = cache_dir("svhn") if not folder.exists() else folder
        folder.mkdir(parents=True, exist_ok=True)
        _download_svhn(folder, splits)
    paths = require_files(folder, names, "svhn")
    md5s = {}
    for i, (split, path) in enumerate(zip(splits, paths, strict=True)):
        if progress:
            progress(f"md5 {path.name}", i, len(paths))
        digest = md5s[path.name] = md5_file(path)
        if cfg.verify_source_md5 and digest != OFFICIAL[split][1]:
            raise DatasetError(
                f"{path}: md5 {digest} does not match the official {OFFICIAL[split][1]}; the file is "
                "damaged or not the official one (set data.verify_source_md5=false to accept it)"
            )
    data = {}
    for i, (split, path) in enumerate(zip(splits, paths, strict=True)):
        if progress:
            progress(f"read {path.name}", i, len(paths))
        data[split] = read_svhn_mat(path)
    return RawDataset(data, CLASS_NAMES, source_md5=md5s)


def load_synthetic_svhn(cfg: DataConfig, progress: Progress | None = None) -> RawDataset:
    """Render house-number digits, write them as SVHN `.mat` files and read them back like real SVHN."""
    from gan_models.data.synthetic_svhn import GENERATOR_VERSION, render_split

    syn = cfg.synthetic
    sizes = {"train": syn.train_size, "test": syn.test_size}
    # Each split has its own stream so changing one size never changes the other split's bytes.
    seeds = {"train": syn.seed * 2, "test": syn.seed * 2 + 1}
    cache_dir("synthetic-svhn").mkdir(parents=True, exist_ok=True)
    data, md5s = {}, {}
    with tempfile.TemporaryDirectory(dir=cache_dir("synthetic-svhn")) as tmp:
        for split, n in sizes.items():
            if n == 0:
                continue
            tick = _accumulate(progress, f"render {split}", n) if progress else None
            images, labels = render_split(
                n, seeds[split], workers=syn.workers, progress=tick, difficulty=syn.difficulty
            )
            path = Path(tmp) / OFFICIAL[split][0]
            write_svhn_mat(path, images, labels)
            del images, labels
            md5s[path.name] = md5_file(path)
            data[split] = read_svhn_mat(path)
    info = {
        "generator_version": GENERATOR_VERSION,
        "difficulty": syn.difficulty,
        "seeds": seeds,
        "sizes": sizes,
    }
    return RawDataset(data, CLASS_NAMES, source_md5=md5s, source_info=info)


def _accumulate(progress: Progress, stage: str, total: int) -> Callable[[int], None]:
    """Turn per-chunk counts into `progress(stage, done, total)` calls."""
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        progress(stage, done, total)

    return tick
