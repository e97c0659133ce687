"""The prepared format: label split, manifest, atomic writes, verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gan_models.data.prepared import PreparedDataset, label_split, verify_prepared, write_prepared
from gan_models.data.sources import RawDataset
from gan_models.errors import DatasetError


def _raw(n: int = 200, seed: int = 0) -> RawDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 10
    test = (images[:20].copy(), labels[:20].copy())
    return RawDataset(
        {"train": (images, labels), "test": test}, [str(i) for i in range(10)], {"src.bin": "abc"}
    )


def _write(out: Path, raw: RawDataset | None = None, per_class: int | None = 3) -> PreparedDataset:
    return write_prepared(
        raw or _raw(), out, name="toy", labels_per_class=per_class, label_seed=7, params={"k": 1}
    )


def test_label_split_is_balanced_and_reproducible() -> None:
    labels = np.random.default_rng(1).integers(0, 10, size=5000)
    a = label_split(labels, 10, 100, seed=3)
    assert a.tolist() == label_split(labels, 10, 100, seed=3).tolist()
    assert a.tolist() != label_split(labels, 10, 100, seed=4).tolist()
    assert np.bincount(labels[a], minlength=10).tolist() == [100] * 10
    assert len(set(a.tolist())) == 1000 and (np.diff(a) > 0).all()


def test_label_budget_larger_than_a_class_fails_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"labels_per_class=21 is larger than class 0, which holds 20"):
        _write(tmp_path / "toy", per_class=21)
    assert list(tmp_path.iterdir()) == []


def test_prepared_round_trip_and_manifest(tmp_path: Path) -> None:
    raw = _raw()
    ds = _write(tmp_path / "toy", raw)
    assert ds.image_shape == (3, 8, 8) and ds.num_classes == 10 and ds.splits == ["train", "test"]
    np.testing.assert_array_equal(ds.images("train"), raw.splits["train"][0].transpose(0, 3, 1, 2))
    assert ds.labels("test").tolist() == raw.splits["test"][1].tolist()
    assert len(ds.labeled_indices()) == 30
    m = ds.manifest
    assert m["splits"]["train"]["class_counts"]["3"] == 20 and m["splits"]["train"]["count"] == 200
    assert m["label_split"] == {"labels_per_class": 3, "seed": 7, "count": 30}
    assert m["source"]["md5"] == {"src.bin": "abc"}
    assert set(m["files"]) == {
        "train_images.npy",
        "train_labels.npy",
        "test_images.npy",
        "test_labels.npy",
        "train_labeled_idx.npy",
    }


def test_same_input_gives_byte_identical_directories(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a"), _write(tmp_path / "b")
    for f in sorted(p.name for p in a.path.iterdir()):
        assert (a.path / f).read_bytes() == (b.path / f).read_bytes(), f


def test_failed_rewrite_keeps_the_previous_version(tmp_path: Path) -> None:
    good = _write(tmp_path / "toy")
    before = json.loads((good.path / "manifest.json").read_text())
    with pytest.raises(DatasetError):
        _write(tmp_path / "toy", per_class=10_000)
    assert json.loads((tmp_path / "toy" / "manifest.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temporary leftovers


def test_verify_names_changed_missing_and_unexpected_files(tmp_path: Path) -> None:
    ds = _write(tmp_path / "toy")
    assert verify_prepared(ds.path) == []
    labels = ds.path / "train_labels.npy"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 1  # same size, one bit flipped: DVC's mtime/size check would miss it
    labels.write_bytes(bytes(data))
    (ds.path / "test_images.npy").unlink()
    (ds.path / "stray.txt").write_text("x")
    problems = verify_prepared(ds.path)
    assert len(problems) == 3
    assert "train_labels.npy: sha256 differs" in problems[2] or any(
        "train_labels.npy: sha256" in p for p in problems
    )
    assert any("test_images.npy: missing" in p for p in problems)
    assert any("stray.txt: not listed" in p for p in problems)


def test_a_hand_edited_manifest_fails_verification(tmp_path: Path) -> None:
    ds = _write(tmp_path / "toy")
    manifest_path = ds.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["class_names"][0] = "zero"  # the arrays still match their hashes
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (problem,) = verify_prepared(ds.path)
    assert "manifest.json: edited after it was written" in problem


def test_unlabeled_dataset_has_no_label_split(tmp_path: Path) -> None:
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    raw = RawDataset({"train": (images, np.full(4, -1))}, [])
    ds = write_prepared(raw, tmp_path / "faces", name="faces", labels_per_class=10, label_seed=0, params={})
    assert ds.manifest["label_split"] is None and ds.manifest["splits"]["train"]["unlabeled"] == 4
    with pytest.raises(DatasetError, match="no train_labeled_idx.npy"):
        ds.labeled_indices()


def test_opening_an_unprepared_directory_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"manifest.json: missing; prepare the dataset first"):
        PreparedDataset.open(tmp_path)
