"""Loaders read small files written in each source's real format."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from gan_models.config import DataConfig
from gan_models.data.cifar import write_batch
from gan_models.data.mnist import write_idx
from gan_models.data.sources import load_source
from gan_models.data.svhn import read_svhn_mat, write_svhn_mat
from gan_models.errors import ConfigError, DatasetError

RNG = np.random.default_rng(0)


def _images(n: int, h: int = 32, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, h, h, c), dtype=np.uint8)


def _official_svhn(path: Path, images: np.ndarray, labels_1_to_10: np.ndarray) -> None:
    """Write the file the way the official ones are: X (32, 32, 3, N) uint8, y (N, 1) double."""
    savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": labels_1_to_10.reshape(-1, 1).astype(np.float64)})


def test_svhn_maps_label_10_to_digit_0_and_keeps_pixels(tmp_path: Path) -> None:
    images, y = _images(12), np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1])
    _official_svhn(tmp_path / "train_32x32.mat", images, y)
    _official_svhn(tmp_path / "test_32x32.mat", images[:4], y[:4])
    raw = load_source(DataConfig(dataset="svhn", source=tmp_path, verify_source_md5=False))
    got_images, got_labels = raw.splits["train"]
    assert got_labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    np.testing.assert_array_equal(got_images, images)
    assert raw.splits["test"][0].shape == (4, 32, 32, 3)
    assert set(raw.source_md5) == {"train_32x32.mat", "test_32x32.mat"}


def test_svhn_writer_round_trips_and_is_byte_stable(tmp_path: Path) -> None:
    images, labels = _images(5), np.array([0, 1, 9, 0, 5])
    write_svhn_mat(tmp_path / "a.mat", images, labels)
    write_svhn_mat(tmp_path / "b.mat", images, labels)
    assert (tmp_path / "a.mat").read_bytes() == (tmp_path / "b.mat").read_bytes()
    got_images, got_labels = read_svhn_mat(tmp_path / "a.mat")
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.tolist() == labels.tolist()


def test_svhn_wrong_md5_names_the_file(tmp_path: Path) -> None:
    _official_svhn(tmp_path / "train_32x32.mat", _images(2), np.array([1, 2]))
    _official_svhn(tmp_path / "test_32x32.mat", _images(2), np.array([1, 2]))
    with pytest.raises(DatasetError, match=r"train_32x32\.mat: md5 .* does not match the official e26ded"):
        load_source(DataConfig(dataset="svhn", source=tmp_path, verify_source_md5=True))


def test_svhn_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train_32x32.mat"
    write_svhn_mat(path, _images(50), np.zeros(50, dtype=np.int64))
    path.write_bytes(path.read_bytes()[:60_000])
    with pytest.raises(DatasetError, match=r"train_32x32\.mat: not a readable MATLAB v5 file"):
        read_svhn_mat(path)


def test_svhn_missing_files_are_all_named(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"missing source file\(s\): .*train_32x32\.mat, .*test_32x32\.mat"
    ):
        load_source(DataConfig(dataset="svhn", source=tmp_path, verify_source_md5=False))


def _write_mnist(raw: Path, n_train: int = 30, n_test: int = 10) -> None:
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", _images(n, 28, 1)[..., 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_mnist_idx_in_torchvision_layout(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "MNIST" / "raw")
    raw = load_source(DataConfig(dataset="mnist", source=tmp_path))
    images, labels = raw.splits["train"]
    assert images.shape == (30, 28, 28, 1) and images.dtype == np.uint8
    assert labels.tolist() == [i % 10 for i in range(30)]
    assert raw.splits["test"][0].shape == (10, 28, 28, 1)


def test_mnist_truncated_idx_names_the_file(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "MNIST" / "raw")
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(
        DatasetError, match=r"t10k-images-idx3-ubyte: header promises 7840 bytes .* holds 7833"
    ):
        load_source(DataConfig(dataset="mnist", source=tmp_path))


def test_real_mnist_from_shared_datasets(shared_datasets: Path) -> None:
    raw = load_source(DataConfig(dataset="mnist", source=shared_datasets))
    assert raw.splits["train"][0].shape == (60_000, 28, 28, 1)
    assert raw.splits["test"][0].shape == (10_000, 28, 28, 1)
    assert raw.source_md5["train-images-idx3-ubyte"] == "6bbc9ace898e44ae57da46a324031adb"
    assert np.bincount(raw.splits["test"][1]).tolist()[:2] == [980, 1135]  # MNIST's published test counts
    mean = raw.splits["train"][0].mean() / 255
    assert abs(mean - 0.1307) < 1e-3


def _write_cifar(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True)
    images, labels = _images(12), np.arange(12) % 10
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", images[:2], labels[:2] + i - 1)
    write_batch(folder / "test_batch", images, labels)
    import pickle

    names = [n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return images, labels


def test_cifar10_pickle_batches(tmp_path: Path) -> None:
    images, labels = _write_cifar(tmp_path / "cifar-10-batches-py")
    raw = load_source(DataConfig(dataset="cifar10", source=tmp_path))
    np.testing.assert_array_equal(raw.splits["test"][0], images)
    assert raw.splits["train"][1].tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert raw.class_names[0] == "airplane" and len(raw.class_names) == 10


def test_cifar10_refuses_pickles_that_run_code(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    import pickle

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DatasetError, match=r"test_batch: not a readable CIFAR-10 pickle batch.*refusing"):
        load_source(DataConfig(dataset="cifar10", source=tmp_path))


def _jpeg(image: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_celeba_zip_is_center_cropped_and_resized(tmp_path: Path) -> None:
    folder = tmp_path / "celeba"
    folder.mkdir()
    face = np.zeros((218, 178, 3), dtype=np.uint8)
    face[20:198, :, 0] = 255  # red exactly in the centred 178x178 square, black above and below
    with zipfile.ZipFile(folder / "img_align_celeba.zip", "w") as zf:
        for i in range(3):
            zf.writestr(f"img_align_celeba/{i + 1:06d}.jpg", _jpeg(face))
    raw = load_source(DataConfig(dataset="celeba", source=tmp_path, image_size=64))
    images, labels = raw.splits["train"]
    assert images.shape == (3, 64, 64, 3) and (labels == -1).all()
    assert images[..., 0].min() > 200 and images[..., 1:].max() < 40  # the crop kept only the red square


def test_image_folder_labels_from_subfolders_and_flat_is_unlabeled(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / "classes" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_images(1, 40)[0]).save(tmp_path / "classes" / cls / f"{i}.png")
    raw = load_source(DataConfig(dataset="image-folder", source=tmp_path / "classes", image_size=32))
    assert raw.class_names == ["cat", "dog"]
    assert raw.splits["train"][1].tolist() == [0, 0, 1, 1]
    assert raw.splits["train"][0].shape == (4, 32, 32, 3)
    flat = load_source(DataConfig(dataset="image-folder", source=tmp_path / "classes" / "cat", image_size=16))
    assert flat.class_names == [] and flat.splits["train"][1].tolist() == [-1, -1]


def test_image_folder_in_the_train_test_layout_is_read_as_its_splits(tmp_path: Path) -> None:
    for split, classes in (("train", ("cat", "dog")), ("test", ("dog",)), ("val", ("cat", "dog"))):
        for cls in classes:
            (tmp_path / "pets" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(_images(1, 40)[0]).save(tmp_path / "pets" / split / cls / f"{i}.png")
    raw = load_source(DataConfig(dataset="image-folder", source=tmp_path / "pets", image_size=16))
    assert raw.class_names == ["cat", "dog"] and set(raw.splits) == {"train", "test", "val"}
    assert raw.splits["test"][1].tolist() == [1, 1]  # labels index the train split's classes
    (tmp_path / "pets" / "test" / "bird").mkdir()
    with pytest.raises(DatasetError, match=r"class folders bird are not classes of the train split"):
        load_source(DataConfig(dataset="image-folder", source=tmp_path / "pets", image_size=16))


def test_a_source_without_a_test_split_gets_one_carved_seeded_and_never_labelled(tmp_path: Path) -> None:
    from gan_models.data.prepare import prepare_dataset

    for cls in ("cat", "dog"):
        (tmp_path / "one" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(_images(1, 40)[0]).save(tmp_path / "one" / cls / f"{i}.png")
    cfg = DataConfig(
        dataset="image-folder",
        source=tmp_path / "one",
        image_size=16,
        root=tmp_path / "data",
        holdout_test_size=6,
        val_size=4,
        labels_per_class=2,
    )
    ds = prepare_dataset(cfg)
    counts = {s: ds.manifest["splits"][s]["count"] for s in ds.splits}
    assert counts == {"train": 10, "test": 6, "val": 4}
    assert ds.manifest["params"]["holdout_test_size"] == 6  # part of the data version
    assert (np.asarray(ds.labeled_indices()) < 10).all()


def test_image_that_does_not_decode_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.fromarray(_images(1)[0]).save(tmp_path / "imgs" / "good.png")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match=r"broken\.jpg: image does not decode"):
        load_source(DataConfig(dataset="image-folder", source=tmp_path / "imgs"))


def _png_header_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims `width` x `height` pixels (what a decompression bomb does)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_image_is_refused_from_its_header(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.fromarray(_images(1)[0]).save(tmp_path / "imgs" / "good.png")
    bomb = tmp_path / "imgs" / "bomb.png"
    bomb.write_bytes(_png_header_claiming(8_000, 8_000))  # 64 megapixels in a few bytes
    with pytest.raises(DatasetError, match=r"bomb\.png: 8000 x 8000 pixels, over the 50,000,000"):
        load_source(DataConfig(dataset="image-folder", source=tmp_path / "imgs"))
    bomb.write_bytes(_png_header_claiming(100_000, 100_000))  # past PIL's own limit: its error, named
    with pytest.raises(DatasetError, match=r"bomb\.png: image does not decode .*decompression bomb"):
        load_source(DataConfig(dataset="image-folder", source=tmp_path / "imgs"))


def test_a_zip_member_that_unpacks_to_too_much_is_refused_before_it_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "celeba"
    folder.mkdir()
    with zipfile.ZipFile(folder / "img_align_celeba.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("img_align_celeba/000001.jpg", _jpeg(np.zeros((218, 178, 3), dtype=np.uint8)))
        zf.writestr("img_align_celeba/000002.jpg", b"\0" * (80 * 2**20))  # 80 MiB of zeros, ~80 KB packed
    with pytest.raises(DatasetError, match=r"000002\.jpg: unpacks to 83,886,080 bytes"):
        load_source(DataConfig(dataset="celeba", source=tmp_path, image_size=64))


def test_folder_without_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"empty: folder holds no images"):
        load_source(DataConfig(dataset="image-folder", source=tmp_path / "empty"))


def test_unknown_dataset_name_lists_the_known_ones() -> None:
    from gan_models.config import load_config

    with pytest.raises(ConfigError, match=r"data.dataset: .*unknown dataset 'svnh'; known: .*svhn"):
        load_config(None, ["data.dataset=svnh"])


def test_real_celeba_zip_from_shared_datasets(shared_datasets: Path) -> None:
    raw = load_source(DataConfig(dataset="celeba", source=shared_datasets, image_size=64))
    images, labels = raw.splits["train"]
    assert images.shape == (12_000, 64, 64, 3) and (labels == -1).all()
    assert raw.source_md5 == {"img_align_celeba.zip": "141377b5ea9ac8013e3938574935e51f"}
    assert 60 < images.mean() < 160  # faces, not black or blown-out frames
