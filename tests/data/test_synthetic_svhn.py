"""synthetic-svhn renders deterministic, SVHN-shaped house-number crops whatever the process layout."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gan_models.data import svhn_glyphs
from gan_models.data.synthetic_svhn import CHUNK, GENERATOR_VERSION, render_digits, render_split

N = 3000  # spans three chunks, so chunk seeding and chunk boundaries are exercised


def _md5(*arrays: np.ndarray) -> str:
    h = hashlib.md5()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray]:
    return render_split(N, 3, workers=1)


def test_shapes_dtypes_and_range(split: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = split
    assert images.shape == (N, 32, 32, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
    assert labels.shape == (N,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= 9
    # Real pictures, not blank or saturated ones: each image varies, and the set uses the whole range.
    assert images.reshape(N, -1).std(axis=1).min() > 2
    assert images.min() < 10 and images.max() > 245
    assert GENERATOR_VERSION == "synthetic-svhn/2"


def test_same_seed_is_byte_identical_for_any_number_of_workers(split: tuple[np.ndarray, np.ndarray]) -> None:
    done: list[int] = []
    parallel = render_split(N, 3, workers=2, progress=done.append)
    assert _md5(*parallel) == _md5(*split)
    assert _md5(*render_digits(N, 3)) == _md5(*split)
    assert sorted(done) == [N - 2 * CHUNK, CHUNK, CHUNK]


def test_different_seeds_differ() -> None:
    a_images, a_labels = render_digits(200, 4)
    b_images, b_labels = render_digits(200, 5)
    assert not np.array_equal(a_labels, b_labels)
    # Not even one image in common.
    assert (a_images != b_images).reshape(200, -1).any(axis=1).all()


def test_start_gives_the_same_examples_as_a_longer_render(split: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = split
    start, n = CHUNK - 100, 300  # crosses a chunk boundary and starts mid-chunk
    part_images, part_labels = render_digits(n, 3, start=start)
    np.testing.assert_array_equal(part_images, images[start : start + n])
    np.testing.assert_array_equal(part_labels, labels[start : start + n])
    one_image, one_label = render_digits(1, 3, start=N - 1)
    np.testing.assert_array_equal(one_image[0], images[-1])
    assert one_label[0] == labels[-1]


def test_labels_cover_all_classes_with_svhn_like_frequencies(split: tuple[np.ndarray, np.ndarray]) -> None:
    counts = np.bincount(split[1], minlength=10)
    assert (counts > 100).all()
    assert counts.argmax() == 1  # as in real SVHN, house numbers hold most 1s


def test_labelled_digit_is_centred(split: tuple[np.ndarray, np.ndarray]) -> None:
    # Ink is where a pixel departs from its image's background (the median grey); averaged over the
    # split, the centre columns hold the labelled digit every time, the edges only cut-off neighbours.
    grey = split[0].astype(np.float32).mean(axis=3)
    ink = np.abs(grey - np.median(grey.reshape(N, -1), axis=1)[:, None, None]).mean(axis=(0, 1))
    centre, edges = ink[10:22].mean(), np.concatenate([ink[:4], ink[-4:]]).mean()
    # About 1.39 for synthetic-svhn/2 (1.8 for /1: its backgrounds were flat); textures, stripes, plate
    # edges, occluders and glare depart from the median everywhere. A digit placed at random gives about 1.
    assert centre > 1.25 * edges


def test_difficulty_scales_the_nuisances_of_the_same_examples() -> None:
    # The same labels and layout at every difficulty (the same numbers are drawn), and an easier render
    # is a clearer one: the digit stands out more from its background (the centre's departure from the
    # image's median grey, as above, grows), and 1 is the full setting, byte for byte.
    def ink_contrast(images: np.ndarray) -> float:
        grey = images.astype(np.float32).mean(axis=3)
        ink = np.abs(grey - np.median(grey.reshape(len(grey), -1), axis=1)[:, None, None])
        return float(ink[:, 10:22, 10:22].mean())

    full = render_digits(400, 5)
    assert _md5(*render_digits(400, 5, difficulty=1.0)) == _md5(*full)
    easy, half = render_digits(400, 5, difficulty=0.0), render_digits(400, 5, difficulty=0.5)
    np.testing.assert_array_equal(easy[1], full[1])
    np.testing.assert_array_equal(half[1], full[1])
    assert ink_contrast(easy[0]) > ink_contrast(half[0]) > ink_contrast(full[0])
    with pytest.raises(ValueError, match="difficulty"):
        render_digits(1, 0, difficulty=1.5)


def test_no_global_random_state_is_used_or_changed() -> None:
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(1)
    first = render_digits(20, 0)
    np.random.seed(2)
    second = render_digits(20, 0)
    assert _md5(*first) == _md5(*second)
    np.random.set_state(np_state)
    assert random.getstate() == py_state


def test_empty_and_invalid_requests() -> None:
    images, labels = render_digits(0, 0)
    assert images.shape == (0, 32, 32, 3) and labels.shape == (0,)
    assert render_split(0, 0, workers=2)[0].shape == (0, 32, 32, 3)
    with pytest.raises(ValueError, match="n and start"):
        render_digits(-1, 0)
    with pytest.raises(ValueError, match="n and start"):
        render_digits(1, 0, start=-1)
    with pytest.raises(ValueError, match="seed"):
        render_digits(1, -1)
    with pytest.raises(ValueError, match="workers"):
        render_split(1, 0, workers=0)


def test_import_does_no_work() -> None:
    code = (
        "import sys, gan_models.data.synthetic_svhn; "
        "print(sorted(m for m in ('PIL', 'matplotlib', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_face_draws_ten_distinct_digits() -> None:
    # No tofu and no symbol fonts: each face's ten digits differ from each other and are not blank.
    for face, name in enumerate(svhn_glyphs.FACES):
        glyphs = [svhn_glyphs.font_glyph(face, 24, False, d)[0] for d in range(10)]
        assert all(g.shape[0] >= 12 and g.max() > 200 for g in glyphs), name
        assert len({(g.shape, g.tobytes()) for g in glyphs}) == 10, name


def test_stroke_digits_are_deterministic_and_follow_the_pen() -> None:
    jitter = np.random.default_rng(0).normal(0, 0.02, (svhn_glyphs.JITTER_POINTS, 2))
    thin, top = svhn_glyphs.stroke_glyph(4, 24, 1.5, 1.0, jitter)
    again, _ = svhn_glyphs.stroke_glyph(4, 24, 1.5, 1.0, jitter)
    thick, _ = svhn_glyphs.stroke_glyph(4, 24, 4.0, 1.0, jitter)
    assert np.array_equal(thin, again) and -28 <= top <= -20
    assert thick.astype(np.int64).sum() > 1.8 * thin.astype(np.int64).sum()
    digits = [svhn_glyphs.stroke_glyph(d, 24, 2.0, 1.0, jitter)[0] for d in range(10)]
    assert len({(g.shape, g.tobytes()) for g in digits}) == 10


def test_prepared_synthetic_svhn_reads_back_with_its_generator_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through the real path: rendered, written as SVHN .mat files, read back by the SVHN reader, and
    # prepared; the images are the renders' bytes and the manifest names the generator.
    from gan_models.config import load_config
    from gan_models.data.prepare import prepare_dataset

    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    cfg = load_config(
        None,
        [
            f"data.root={tmp_path / 'data'}",
            "data.synthetic.train_size=300",
            "data.synthetic.test_size=120",
            "data.synthetic.workers=1",
            "data.labels_per_class=5",
        ],
    )
    ds = prepare_dataset(cfg.data)
    source = ds.manifest["source"]
    assert source["generator_version"] == GENERATOR_VERSION and source["difficulty"] == 1.0
    assert source["seeds"] == {"train": 0, "test": 1} and set(source["md5"]) == {
        "train_32x32.mat",
        "test_32x32.mat",
    }
    for split, seed, n in (("train", 0, 300), ("test", 1, 120)):
        images, labels = render_digits(n, seed)
        np.testing.assert_array_equal(ds.images(split), images.transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(ds.labels(split), labels)
