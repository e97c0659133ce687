"""The domain metric: an evaluation classifier trained once per dataset version, cached real features,
and FD/KID on its features that separate real images from wrong ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gan_models.data.prepared import PreparedDataset, sha256_file, write_prepared
from gan_models.data.sources import RawDataset
from gan_models.metrics.distribution import distribution_metrics
from gan_models.metrics.domain import ClassifierSpec, DomainClassifier, load_or_train
from gan_models.metrics.feature_cache import dataset_version, real_features
from gan_models.metrics.frechet import MetricError

# A budget that learns the blobs below in a second or two.
SMALL = ClassifierSpec(width=8, steps=80, batch_size=32)


def blobs(
    path: Path, *, n_train: int = 600, n_test: int = 300, seed: int = 0, labelled: bool = True
) -> PreparedDataset:
    """28x28 images whose bright square's position encodes the class (jittered), with a disjoint test split."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, size=n)
        images = rng.integers(0, 40, size=(n, 28, 28, 1), dtype=np.uint8)
        for i, c in enumerate(labels):
            x, y = 2 + c * 2 + rng.integers(0, 2), 8 + rng.integers(0, 3)
            images[i, y : y + 6, x : x + 6] = 230
        return images, labels if labelled else np.full(n, -1)

    splits = {"train": draw(n_train), "test": draw(n_test)}
    names = [str(c) for c in range(10)] if labelled else []
    return write_prepared(
        RawDataset(splits, names), path, name="blobs", labels_per_class=None, label_seed=0, params={}
    )


class Progress:
    """Counts the training progress reports of `load_or_train`: zero means it did not train."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedDataset, DomainClassifier, Path]:
    base = tmp_path_factory.mktemp("domain")
    dataset = blobs(base / "data" / "blobs")
    return dataset, load_or_train(dataset, spec=SMALL, cache_root=base / "cache"), base / "cache"


def test_classifier_is_trained_once_then_read_from_the_cache(tmp_path: Path) -> None:
    dataset = blobs(tmp_path / "data")
    first, second = Progress(), Progress()
    a = load_or_train(dataset, spec=SMALL, cache_root=tmp_path / "cache", progress=first)
    weights = a.path / "weights.safetensors"
    written = weights.stat().st_mtime_ns
    b = load_or_train(dataset, spec=SMALL, cache_root=tmp_path / "cache", progress=second)
    assert first.calls > 0 and second.calls == 0
    assert b.extractor_id == a.extractor_id and b.path == a.path
    assert weights.stat().st_mtime_ns == written
    # Stored under the dataset version, named by the weights' hash, with its accuracy beside it.
    assert a.path.parent == tmp_path / "cache" / "eval-classifiers"
    assert a.path.name.startswith(dataset_version(dataset) + "-")
    assert a.extractor_id == sha256_file(weights)[:16]
    info = json.loads((a.path / "spec.json").read_text())
    assert info["test_accuracy"] == a.test_accuracy and info["accuracy_split"] == "test"
    assert info["spec"]["steps"] == SMALL.steps and info["test_count"] == 300


def test_same_data_gives_the_same_classifier_and_changed_data_a_new_one(
    tmp_path: Path, trained: tuple[PreparedDataset, DomainClassifier, Path]
) -> None:
    dataset, classifier, _ = trained
    # The same bytes prepared elsewhere, trained from scratch in another cache: bit-identical weights.
    again = blobs(tmp_path / "again")
    assert dataset_version(again) == dataset_version(dataset)
    assert (
        load_or_train(again, spec=SMALL, cache_root=tmp_path / "cache").extractor_id
        == classifier.extractor_id
    )
    changed = blobs(tmp_path / "changed", seed=1)
    assert dataset_version(changed) != dataset_version(dataset)
    assert (
        load_or_train(changed, spec=SMALL, cache_root=tmp_path / "cache").extractor_id
        != classifier.extractor_id
    )


def test_classifier_is_accurate_on_held_out_images(
    trained: tuple[PreparedDataset, DomainClassifier, Path],
) -> None:
    _, classifier, _ = trained
    assert classifier.test_accuracy > 0.9


def test_domain_fd_and_kid_separate_real_images_from_noise(
    trained: tuple[PreparedDataset, DomainClassifier, Path],
) -> None:
    dataset, classifier, cache = trained
    real = real_features(dataset, "test", classifier, 300, cache_root=cache)
    other_real = classifier.features(np.asarray(dataset.images("train")[:300]))
    noise = np.random.default_rng(0).integers(0, 256, size=(300, 1, 28, 28), dtype=np.uint8)
    same = distribution_metrics(real, other_real, classifier)
    wrong = distribution_metrics(real, classifier.features(noise), classifier)
    assert wrong.metrics["domain_fd"] > 10 * same.metrics["domain_fd"]
    assert wrong.metrics["domain_kid"] > 10 * abs(same.metrics["domain_kid"])
    assert same.metadata == {
        "domain_implementation": same.metadata["domain_implementation"],
        "domain_extractor": "domain-classifier",
        "domain_extractor_id": classifier.extractor_id,
        "domain_n_real": 300,
        "domain_n_fake": 300,
        "domain_kid_subset_size": 300,
    }


def test_fd_with_fewer_images_than_feature_dimensions_is_refused(
    trained: tuple[PreparedDataset, DomainClassifier, Path],
) -> None:
    dataset, classifier, _ = trained
    few = classifier.features(np.asarray(dataset.images("test")[:100]))
    with pytest.raises(MetricError, match=r"100 images give a singular 128x128 covariance.*at least 129"):
        distribution_metrics(few, few, classifier)


def test_real_features_are_cached_and_a_hit_does_not_run_the_extractor(
    tmp_path: Path, trained: tuple[PreparedDataset, DomainClassifier, Path]
) -> None:
    dataset, classifier, _ = trained

    class Counting:
        """The trained classifier, counting how often it is run."""

        name, extractor_id, dim = classifier.name, classifier.extractor_id, classifier.dim
        runs = 0

        def features(self, images: np.ndarray, batch_size: int = 200) -> np.ndarray:
            Counting.runs += 1
            return classifier.features(images, batch_size)

    extractor = Counting()
    first = real_features(dataset, "test", extractor, 150, cache_root=tmp_path, seed=3)
    second = real_features(dataset, "test", extractor, 150, cache_root=tmp_path, seed=3)
    assert Counting.runs == 1 and np.array_equal(first, second) and first.shape == (150, 128)
    key = f"domain-classifier-{classifier.extractor_id}"
    assert (tmp_path / "features" / dataset_version(dataset) / key / "test-150-3.npy").is_file()
    # Another seed is another fixed subset of the split.
    assert not np.array_equal(
        real_features(dataset, "test", extractor, 150, cache_root=tmp_path, seed=4), first
    )


def test_bad_requests_raise_clear_errors(
    tmp_path: Path, trained: tuple[PreparedDataset, DomainClassifier, Path]
) -> None:
    dataset, classifier, _ = trained
    with pytest.raises(MetricError, match=r"asked for 301 real images from the 'test' split .* holds 300"):
        real_features(dataset, "test", classifier, 301, cache_root=tmp_path)
    with pytest.raises(MetricError, match=r"no 'valid' split"):
        real_features(dataset, "valid", classifier, 10, cache_root=tmp_path)
    with pytest.raises(MetricError, match=r"uint8 images of shape \(N, 1, 28, 28\)"):
        classifier.features(np.zeros((4, 3, 32, 32), dtype=np.uint8))
    unlabelled = blobs(tmp_path / "faces", n_train=50, n_test=10, labelled=False)
    with pytest.raises(MetricError, match="no class labels.*use FID"):
        load_or_train(unlabelled, spec=SMALL, cache_root=tmp_path)


def test_unlabelled_data_is_measured_by_inception_fid_or_refused_before_training(tmp_path: Path) -> None:
    # The domain metric's classifier trains on labels; for unlabelled data `auto` turns to Inception FID
    # (even on a CPU), and what cannot be measured is refused by the check the flow runs before training:
    # Inception FID off, or too few images for a 2048-d (Inception) or 128-d (domain) covariance.
    from gan_models.config import EvaluateConfig
    from gan_models.errors import GanOpsError
    from gan_models.metrics.evaluation import check_evaluation, evaluate, wants_inception

    cpu = torch.device("cpu")
    faces = blobs(tmp_path / "faces", n_train=50, n_test=2100, labelled=False)
    digits = blobs(tmp_path / "digits", n_train=50, n_test=300)
    enough = EvaluateConfig(num_real=2049, num_generated=2049)
    assert wants_inception(enough, faces, cpu) and not wants_inception(enough, digits, cpu)
    check_evaluation(faces, enough)
    with pytest.raises(
        GanOpsError, match=r"Inception Fréchet distance has 2048 feature dimensions.*at least 2049"
    ):
        check_evaluation(faces, EvaluateConfig(num_real=2048, num_generated=2049))
    with pytest.raises(GanOpsError, match="no class labels, so the domain metric cannot measure"):
        check_evaluation(faces, EvaluateConfig(num_real=2049, num_generated=2049, inception_fid=False))
    check_evaluation(digits, EvaluateConfig(num_real=129, num_generated=129))
    with pytest.raises(
        GanOpsError, match=r"domain Fréchet distance has 128 feature dimensions.*at least 129"
    ):
        check_evaluation(digits, EvaluateConfig(num_real=300, num_generated=128))
    with pytest.raises(GanOpsError, match="nothing can measure its generator"):
        evaluate(faces, enough, generate=lambda s: np.zeros((len(s), 28, 28, 1), np.uint8), classify=None)


def test_a_dataset_without_a_test_split_is_measured_on_held_out_train_images(tmp_path: Path) -> None:
    full = blobs(tmp_path / "full", n_train=400)
    raw = RawDataset(
        {"train": (full.images("train").transpose(0, 2, 3, 1), full.labels("train"))}, full.class_names
    )
    train_only = write_prepared(
        raw, tmp_path / "train-only", name="blobs", labels_per_class=None, label_seed=0, params={}
    )
    classifier = load_or_train(train_only, spec=SMALL, cache_root=tmp_path / "cache")
    assert classifier.info["accuracy_split"] == "train (held-out 10%)"
    assert classifier.info["train_count"] == 360 and classifier.info["test_count"] == 40
    assert classifier.test_accuracy > 0.8


@pytest.mark.slow
def test_on_real_mnist_the_default_classifier_is_accurate_and_the_metric_separates_real_from_noise(
    shared_datasets: Path, tmp_path: Path
) -> None:
    from gan_models.config import DataConfig
    from gan_models.data.prepare import prepare_dataset

    dataset = prepare_dataset(
        DataConfig(dataset="mnist", root=tmp_path / "data", source=shared_datasets, channels=1)
    )
    classifier = load_or_train(dataset, cache_root=tmp_path / "cache")
    assert classifier.test_accuracy > 0.97
    real = real_features(dataset, "test", classifier, 5000, cache_root=tmp_path / "cache")
    train = classifier.features(np.asarray(dataset.images("train")[:5000]))
    noise = np.random.default_rng(0).integers(0, 256, size=(5000, 1, 28, 28), dtype=np.uint8)
    same = distribution_metrics(real, train, classifier).metrics
    wrong = distribution_metrics(real, classifier.features(noise), classifier).metrics
    assert wrong["domain_fd"] > 50 * same["domain_fd"]
    assert wrong["domain_kid"] > 50 * abs(same["domain_kid"])
