"""Image files: CelebA aligned faces (folder or official zip) and any folder of images.

Every image is centre-cropped to a square (the largest, or `data.center_crop` pixels) and resized to
`data.image_size` with an antialiasing filter, the DCGAN preprocessing for faces.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gan_models.data.sources import RawDataset, md5_file, source_dir
from gan_models.errors import DatasetError
from gan_models.io import Progress

if TYPE_CHECKING:
    from PIL import Image

    from gan_models.config import DataConfig

# Far above any training image (CelebA's are 178 x 218): a file that claims more is a decompression bomb
# or not meant for this, and is refused before it is decoded.
MAX_PIXELS = 50_000_000
MAX_MEMBER_BYTES = 64 * 2**20  # one image inside a zip archive, uncompressed
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CELEBA_ZIP = "img_align_celeba.zip"
CELEBA_DIR = "img_align_celeba"


def to_array(image: Image.Image, size: int, channels: int, crop: int | None) -> np.ndarray:
    """Centre-crop to a square, resize to `size` x `size`, return uint8 (size, size, channels)."""
    from PIL import Image

    image = image.convert("RGB" if channels == 3 else "L")
    w, h = image.size
    side = min(w, h, crop) if crop else min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def decode(data: bytes, name: str) -> Image.Image:
    """Decode image bytes fully, or fail naming the file; an image claiming more than `MAX_PIXELS`
    pixels (a decompression bomb) is refused from its header, before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise DatasetError(
                    f"{name}: {width} x {height} pixels, over the {MAX_PIXELS:,} an image may have "
                    "(a decompression bomb?); remove it from the source"
                )
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, Warning) as e:
        raise DatasetError(f"{name}: image does not decode ({e})") from e
    return image


def _member(zf: zipfile.ZipFile, name: str, archive: Path) -> bytes:
    """Archive member `name`, refused from its header if it unpacks to more than `MAX_MEMBER_BYTES`."""
    size = zf.getinfo(name).file_size
    if size > MAX_MEMBER_BYTES:
        raise DatasetError(
            f"{archive}:{name}: unpacks to {size:,} bytes, over the {MAX_MEMBER_BYTES:,} an image may take "
            "(a zip bomb?)"
        )
    return zf.read(name)


def _convert_all(
    items: Iterator[tuple[str, bytes]], total: int, cfg: DataConfig, progress: Progress | None
) -> np.ndarray:
    out = np.empty((total, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.uint8)
    for i, (name, data) in enumerate(items):
        out[i] = to_array(decode(data, name), cfg.image_size, cfg.channels, cfg.center_crop)
        if progress and (i % 500 == 0 or i == total - 1):
            progress("decode images", i + 1, total)
    return out


def load_celeba(cfg: DataConfig, progress: Progress | None = None) -> RawDataset:
    """CelebA aligned faces, unlabelled, from `img_align_celeba.zip` or an `img_align_celeba/` folder."""
    folder = source_dir(cfg, "celeba", ["celeba"])
    if cfg.download and not ((folder / CELEBA_ZIP).exists() or (folder / CELEBA_DIR).is_dir()):
        from torchvision.datasets import CelebA  # md5-checked download (Google Drive; often rate-limited)

        CelebA(str(folder.parent if folder.name == "celeba" else folder), download=True)
    if (folder / CELEBA_ZIP).is_file():
        archive = folder / CELEBA_ZIP
        try:
            with zipfile.ZipFile(archive) as zf:
                names = sorted(n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
                if not names:
                    raise DatasetError(f"{archive}: the archive holds no images")
                items = ((f"{archive}:{n}", _member(zf, n, archive)) for n in names)
                images = _convert_all(items, len(names), cfg, progress)
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetError(f"{archive}: not a readable zip archive ({e})") from e
        md5s = {archive.name: md5_file(archive)}
    elif (folder / CELEBA_DIR).is_dir():
        paths = _image_files(folder / CELEBA_DIR)
        images = _convert_all(((str(p), p.read_bytes()) for p in paths), len(paths), cfg, progress)
        md5s = {}  # a folder of 200k files has no single checksum worth the time; the manifest hashes the output
    else:
        raise DatasetError(
            f"dataset 'celeba': neither {folder / CELEBA_ZIP} nor {folder / CELEBA_DIR}/ exists"
        )
    labels = np.full(len(images), -1, dtype=np.int64)
    return RawDataset({"train": (images, labels)}, [], source_md5=md5s)


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{folder}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


SPLIT_FOLDERS = ("train", "val", "test")


def load_image_folder(cfg: DataConfig, progress: Progress | None = None) -> RawDataset:
    """Any folder of images: class sub-folders give labels (sorted names); a flat folder is unlabelled.

    The common split layout `train/<class>/...` with `test/<class>/...` and/or `val/<class>/...` (or flat
    split folders) is read as those splits, with the class names of `train`.
    """
    if cfg.source is None:
        raise DatasetError("dataset 'image-folder' needs --source DIR (the folder of images)")
    folder = source_dir(cfg, "image-folder", [])
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a directory")
    subfolders = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if "train" in subfolders and subfolders <= set(SPLIT_FOLDERS):
        train = _one_folder(folder / "train", cfg, progress, None)
        splits = {"train": train.splits["train"]}
        for split in SPLIT_FOLDERS[1:]:
            if split in subfolders:
                splits[split] = _one_folder(folder / split, cfg, progress, train.class_names).splits["train"]
        return RawDataset(splits, train.class_names)
    return _one_folder(folder, cfg, progress, None)


def _one_folder(
    folder: Path, cfg: DataConfig, progress: Progress | None, known: list[str] | None
) -> RawDataset:
    """One folder as a train split: class sub-folders (named in `known`, if given) or flat, unlabelled."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if known is not None and classes and not set(classes) <= set(known):
        extra = sorted(set(classes) - set(known))
        raise DatasetError(f"{folder}: class folders {', '.join(extra)} are not classes of the train split")
    if known and classes:
        classes = known  # labels index the train split's classes; a class may be absent here
    if classes:
        loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            raise DatasetError(f"{folder}: holds both class folders and loose images ({loose[0]}, ...)")
        per_class = [_image_files(folder / c) if (folder / c).is_dir() else [] for c in classes]
        if not any(per_class):
            raise DatasetError(f"{folder}: its class folders hold no images")
        paths = [p for files in per_class for p in files]
        labels = np.concatenate([np.full(len(f), i, dtype=np.int64) for i, f in enumerate(per_class)])
    else:
        paths = _image_files(folder)
        labels = np.full(len(paths), -1, dtype=np.int64)
    images = _convert_all(((str(p), p.read_bytes()) for p in paths), len(paths), cfg, progress)
    return RawDataset({"train": (images, labels)}, classes)
