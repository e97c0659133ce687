"""The prepared-dataset format: `data/<name>/` with `.npy` arrays per split and a `manifest.json`.

Layout (images are uint8 NCHW, labels int64 with -1 for unlabelled examples):

    <split>_images.npy, <split>_labels.npy   for each split (train, test, ...)
    train_labeled_idx.npy                     the semi-supervised label split (sorted indices)
    manifest.json                             shapes, class names, counts, sha256 of every file, source md5s

The manifest holds no timestamps or absolute paths, so preparing the same source with the same
parameters gives byte-identical directories and therefore the same DVC data version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gan_models.data.sources import RawDataset
from gan_models.errors import DatasetError
from gan_models.io import atomic_dir, atomic_write, write_text

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELED_IDX = "train_labeled_idx.npy"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def label_split(labels: np.ndarray, num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """Pick `per_class` labelled examples of every class, reproducibly; returns sorted indices.

    Each class draws from its own stream (seed, class), so the choice for one class does not depend on
    how many examples other classes have.
    """
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if per_class > len(members):
            raise DatasetError(
                f"label budget data.labels_per_class={per_class} is larger than class {c}, "
                f"which holds {len(members)} training examples"
            )
        rng = np.random.default_rng([seed, c])
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def write_prepared(
    raw: RawDataset,
    out_dir: Path,
    *,
    name: str,
    labels_per_class: int | None,
    label_seed: int,
    params: dict[str, Any],
    progress: Callable[[str, int, int], None] | None = None,
) -> PreparedDataset:
    """Write `raw` as a prepared dataset at `out_dir`, atomically: a reader sees the old or the new one.

    The split is computed first, so a label budget that a class cannot meet fails before anything is
    written.
    """
    num_classes = len(raw.class_names)
    labeled_idx = None
    if num_classes and labels_per_class is not None and "train" in raw.splits:
        labeled_idx = label_split(raw.splits["train"][1], num_classes, labels_per_class, label_seed)

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        splits: dict[str, Any] = {}
        for i, (split, (images, labels)) in enumerate(raw.splits.items()):
            if progress:
                progress("write", i, len(raw.splits))
            chw = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW, the layout the networks take
            _save_npy(tmp / f"{split}_images.npy", chw)
            _save_npy(tmp / f"{split}_labels.npy", labels.astype(np.int64))
            counts = np.bincount(labels[labels >= 0], minlength=num_classes) if num_classes else []
            splits[split] = {
                "count": int(len(labels)),
                "shape": list(chw.shape),
                "class_counts": {raw.class_names[c]: int(n) for c, n in enumerate(counts)},
                "unlabeled": int((labels < 0).sum()),
            }
        if labeled_idx is not None:
            _save_npy(tmp / LABELED_IDX, labeled_idx)
        files = {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.glob("*.npy"))
        }
        first = next(iter(splits.values()))
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "image_shape": first["shape"][1:],
            "dtype": "uint8",
            "layout": "NCHW",
            "class_names": raw.class_names,
            "splits": splits,
            "label_split": None
            if labeled_idx is None
            else {"labels_per_class": labels_per_class, "seed": label_seed, "count": int(len(labeled_idx))},
            "source": {"md5": dict(sorted(raw.source_md5.items())), **raw.source_info},
            "params": params,
            "files": files,
        }
        manifest["digest"] = manifest_digest(manifest)
        write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return PreparedDataset.open(out_dir)


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The sha256 of a manifest's content without its own `digest` field (canonical JSON): the files'
    hashes cover the arrays, this covers what the manifest says of them (classes, label split, ...)."""
    content = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def verify_prepared(path: Path) -> list[str]:
    """Re-hash every file against the manifest; return one line per problem (empty: all intact)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path}: missing (not a prepared dataset; run `ganops data prepare`)"]
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return [f"{manifest_path}: unreadable manifest ({e})"]
    problems = []
    # Manifests written before the digest existed have none; every one written since is checked.
    if "digest" in manifest and manifest["digest"] != manifest_digest(manifest):
        problems.append(
            f"{manifest_path}: edited after it was written (its digest no longer matches its content): "
            "restore it (`ganops data pull`) or prepare the data again"
        )
    for name, info in sorted(expected.items()):
        file = path / name
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif file.stat().st_size != info["bytes"]:
            problems.append(f"{file}: size {file.stat().st_size} bytes, manifest says {info['bytes']}")
        elif sha256_file(file) != info["sha256"]:
            problems.append(f"{file}: sha256 differs from the manifest (content changed)")
    extra = sorted(p.name for p in path.iterdir() if p.name not in expected and p.name != MANIFEST)
    problems += [f"{path / n}: not listed in the manifest" for n in extra]
    return problems


@dataclass(frozen=True)
class PreparedDataset:
    """Read access to a prepared dataset; arrays are memory-mapped, so opening is cheap."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> PreparedDataset:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise DatasetError(f"{manifest_path}: missing; prepare the dataset first (`ganops data prepare`)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DatasetError(
                f"{manifest_path}: format version {manifest.get('format_version')} is not {FORMAT_VERSION}; "
                "prepare the dataset again"
            )
        return cls(path, manifest)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.manifest["image_shape"]
        return c, h, w

    @property
    def splits(self) -> list[str]:
        """Split names, train first."""
        return sorted(self.manifest["splits"], key=lambda s: (s != "train", s))

    def _load(self, file: str) -> np.ndarray:
        if file not in self.manifest["files"]:
            raise DatasetError(f"{self.path}: no {file} in this prepared dataset (splits: {self.splits})")
        return np.load(self.path / file, mmap_mode="r", allow_pickle=False)

    def images(self, split: str) -> np.ndarray:
        """uint8 (N, C, H, W), memory-mapped."""
        return self._load(f"{split}_images.npy")

    def labels(self, split: str) -> np.ndarray:
        """int64 (N,), -1 where unlabelled."""
        return self._load(f"{split}_labels.npy")

    def labeled_indices(self) -> np.ndarray:
        """Indices into the train split whose labels the semi-supervised model may use."""
        return self._load(LABELED_IDX)
