"""The domain metric's feature extractor: a small classifier trained once per dataset version.

Inception features (FID) are slow on a CPU and were learned on photographs, not on digits. The domain
metric instead measures distributions in the 128-d penultimate layer of a small CNN trained on the
dataset's own labels. It is fixed: trained with a fixed seed and budget on all labels of the train split
(it is a measuring instrument, not the semi-supervised model under test, and never the discriminator
being evaluated), then stored and identified by the sha256 of its weights. Layout under the cache root:

    eval-classifiers/<dataset version>-<spec digest>/weights.safetensors   the network
    eval-classifiers/<dataset version>-<spec digest>/spec.json             spec, data, test accuracy

The dataset version is the sha256 of the prepared dataset's manifest, so re-preparing the same bytes
reuses the classifier, and any change to the data or to the spec trains a new one.

Unlabelled datasets (CelebA, flat image folders) are refused with a clear error rather than given a
weaker stand-in (random or self-supervised features): use FID for them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from gan_models import io
from gan_models.data.prepared import PreparedDataset
from gan_models.io import Progress, atomic_dir, write_text, write_with
from gan_models.metrics.accuracy import classifier_accuracy
from gan_models.metrics.feature_cache import dataset_version
from gan_models.metrics.frechet import MetricError
from gan_models.training.batches import to_float

"""progress(stage, done, total), as the data loaders report it."""

# Bump when the network or the training procedure changes in a way the spec does not capture: cached
# classifiers of the old version then stop matching instead of being silently reused.
ARCH_VERSION = 1
WEIGHTS = "weights.safetensors"
SPEC = "spec.json"
HELD_OUT_FRACTION = 0.1  # of the train split, measured on when a dataset has no test split


@dataclass(frozen=True)
class ClassifierSpec:
    """Architecture and training budget of the evaluation classifier; its digest names the cache entry.

    The default budget (1,000 steps of 128: about 2 epochs of MNIST, 1.7 of SVHN) took 43 s on MNIST
    (99.25% test accuracy) and 59 s on 73k 32x32x3 images, on two CPU cores shared with other work.
    """

    width: int = 32  # channels of the first conv block; each later block doubles them
    feature_dim: int = 128
    steps: int = 1000
    batch_size: int = 128
    lr: float = 3e-3  # the peak of a one-cycle schedule
    weight_decay: float = 5e-4
    seed: int = 0

    def digest(self) -> str:
        text = json.dumps({"arch_version": ARCH_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch CPU ops on one thread, restoring the caller's setting afterwards.

    Why: a CPU convolution's bits depend on the thread count, so one thread makes the weights (and the
    extractor id) and the cached features the same on every machine whatever its core count; and these
    small convolutions gain little from a second thread but lose a lot when the cores are shared
    (measured: training took 6x the CPU time with 2 threads than with 1 on a loaded 2-core machine).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class EvalClassifier(nn.Module):
    """Three stride-2 conv blocks, a dense feature layer, a linear K-way head; any (C, H, W).

    With w = width, for a 32x32 image:
      nc x 32 x 32 -> w x 16 x 16 -> 2w x 8 x 8 -> 4w x 4 x 4 -> feature_dim -> K logits
    28x28 reaches 4 x 4 too (14, 7, 4); larger images are average-pooled to 4 x 4 so the dense layer
    stays small. The features (the dense layer, batch-normalised) have zero mean and unit variance on
    the training data.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, width: int, feature_dim: int
    ) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            # (c_in) x s x s -> (c_out) x s/2 x s/2
            return [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        side = image_shape[1]
        for _ in range(3):
            side = (side + 1) // 2  # what a 3x3 stride-2 conv with padding 1 leaves
        self.body = nn.Sequential(
            *block(image_shape[0], width),  # w x H/2 x W/2
            *block(width, 2 * width),  # 2w x H/4 x W/4
            *block(2 * width, 4 * width),  # 4w x H/8 x W/8
            nn.Identity() if side == 4 else nn.AdaptiveAvgPool2d(4),  # 4w x 4 x 4
            nn.Flatten(),
            nn.Linear(4 * width * 16, feature_dim, bias=False),
            # Standardises every feature (running statistics in eval mode), so the features are O(1)
            # like Inception's: KID's cubic kernel (x·y/d + 1)^3 is then neither dominated by a few
            # large units nor hugely noisy, and no unit's scale outweighs the others in the Fréchet
            # distance.
            nn.BatchNorm1d(feature_dim, affine=False),
        )
        # The features are taken before this ReLU: rectified features would lose information and can hold
        # dead (constant zero) units, which make the covariance of the Fréchet distance rank-deficient.
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, num_classes))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [-1, 1] -> (logits, features), the interface `classifier_accuracy` takes."""
        features = self.body(x)
        return self.head(features), features


class DomainClassifier:
    """A trained `EvalClassifier` as a `FeatureExtractor`: features are its penultimate layer."""

    name = "domain-classifier"

    def __init__(
        self, network: EvalClassifier, path: Path, info: dict[str, Any], device: torch.device
    ) -> None:
        self.network = network.to(device).eval()
        self.path = path
        self.info = info  # the stored spec.json
        self.device = device
        self.dim: int = info["spec"]["feature_dim"]
        channels, height, width = info["image_shape"]
        self.image_shape = (channels, height, width)
        self.extractor_id: str = info["weights_sha256"][:16]
        self.test_accuracy: float = info["test_accuracy"]

    @torch.inference_mode()
    def features(self, images: np.ndarray, batch_size: int = 200) -> np.ndarray:
        """Penultimate-layer features (N, dim), float64, of uint8 images (N, C, H, W)."""
        if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise MetricError(
                f"the domain classifier takes uint8 images of shape (N, {', '.join(map(str, self.image_shape))}), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        out = np.empty((len(images), self.dim), dtype=np.float64)
        with _one_cpu_thread(self.device):
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(self.device)
                out[start : start + len(batch)] = self.network.body(to_float(batch)).double().cpu().numpy()
        return out


def has_class_labels(dataset: PreparedDataset) -> bool:
    """Whether the domain metric can run on `dataset`: its evaluation classifier trains on class labels."""
    return dataset.num_classes >= 2 and bool((np.asarray(dataset.labels("train")) >= 0).any())


def _labelled_splits(dataset: PreparedDataset, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train-split indices to train on, train-split indices to measure on, name of the measured split).

    All labelled train examples are trained on when a labelled test split exists (measured on instead).
    """
    if not has_class_labels(dataset):
        raise MetricError(
            f"dataset {dataset.name!r} has no class labels, and the domain metric's evaluation classifier "
            "is trained on them; use FID (Inception features) for unlabelled datasets"
        )
    labelled = np.flatnonzero(np.asarray(dataset.labels("train")) >= 0)
    test = "test" in dataset.splits and (np.asarray(dataset.labels("test")) >= 0).any()
    if test:
        return labelled, np.empty(0, dtype=np.int64), "test"
    # No test split (e.g. an image folder): hold out a fixed share of the train split to measure on.
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(labelled)
    held = max(1, int(len(labelled) * HELD_OUT_FRACTION))
    return np.sort(shuffled[held:]), np.sort(shuffled[:held]), f"train (held-out {HELD_OUT_FRACTION:.0%})"


def train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    spec: ClassifierSpec,
    *,
    progress: Progress | None = None,
) -> EvalClassifier:
    """Train an `EvalClassifier` on uint8 images (N, C, H, W) and int64 labels, on their device.

    Deterministic for a spec: the initialisation draws from a forked RNG seeded with `spec.seed` (the
    caller's RNG is untouched), the batch order from its own seeded generator, and on the CPU it runs on
    one thread, so the bits do not depend on the machine's core count.
    """
    with _one_cpu_thread(images.device):
        return _train(images, labels, num_classes, spec, progress)


def _train(
    images: Tensor, labels: Tensor, num_classes: int, spec: ClassifierSpec, progress: Progress | None
) -> EvalClassifier:
    device = images.device
    _, channels, height, width = images.shape
    # Layers initialise on the CPU: seed only the CPU generator (torch.manual_seed would reseed CUDA too).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(spec.seed)
        network = EvalClassifier((channels, height, width), num_classes, spec.width, spec.feature_dim)
    network.to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    # One-cycle: a short warm-up then annealing to ~0 makes a small fixed budget go a long way.
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=spec.steps)
    generator = torch.Generator().manual_seed(spec.seed)
    batch = min(spec.batch_size, len(images))
    order, position = torch.randperm(len(images), generator=generator), 0
    for step in range(spec.steps):
        if position + batch > len(images):
            order, position = torch.randperm(len(images), generator=generator), 0
        idx = order[position : position + batch].to(device)
        position += batch
        logits, _ = network(to_float(images[idx]))
        loss = nn.functional.cross_entropy(logits, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress and (step % 50 == 0 or step == spec.steps - 1):
            progress("train evaluation classifier", step + 1, spec.steps)
    return network.eval()


def classifier_dir(dataset: PreparedDataset, spec: ClassifierSpec, cache_root: Path | None = None) -> Path:
    root = cache_root or io.cache_root()
    return root / "eval-classifiers" / f"{dataset_version(dataset)}-{spec.digest()}"


def _train_and_store(
    dataset: PreparedDataset,
    spec: ClassifierSpec,
    target: Path,
    device: torch.device,
    progress: Progress | None,
) -> None:
    """Train on the dataset, measure the accuracy, and write weights + spec.json to `target` atomically."""
    # Load data.
    train_idx, held_idx, accuracy_split = _labelled_splits(dataset, spec.seed)
    train_images = np.asarray(dataset.images("train"))
    train_labels = np.asarray(dataset.labels("train"))
    images = torch.from_numpy(np.ascontiguousarray(train_images[train_idx])).to(device)
    labels = torch.from_numpy(np.ascontiguousarray(train_labels[train_idx])).to(device)

    # Train.
    started = time.perf_counter()
    network = train_classifier(images, labels, dataset.num_classes, spec, progress=progress)
    seconds = time.perf_counter() - started
    del images, labels

    # Measure on the test split (or the held-out share of train).
    if accuracy_split == "test":
        test_labels = np.asarray(dataset.labels("test"))
        keep = np.flatnonzero(test_labels >= 0)
        eval_images, eval_labels = np.asarray(dataset.images("test"))[keep], test_labels[keep]
    else:
        eval_images, eval_labels = train_images[held_idx], train_labels[held_idx]
    with _one_cpu_thread(device):
        report = classifier_accuracy(network, eval_images, eval_labels, dataset.class_names, device=device)

    # Store: a temporary directory renamed into place, so a reader never sees half an entry.
    with atomic_dir(target) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        metadata = {"arch_version": str(ARCH_VERSION)}
        write_with(tmp / WEIGHTS, lambda path: save_file(state, str(path), metadata=metadata))
        info = {
            "arch_version": ARCH_VERSION,
            "spec": asdict(spec),
            "spec_digest": spec.digest(),
            "dataset": dataset.name,
            "dataset_version": dataset_version(dataset),
            "image_shape": list(dataset.image_shape),
            "class_names": dataset.class_names,
            "train_count": int(len(train_idx)),
            "accuracy_split": accuracy_split,
            "test_count": report.count,
            "test_accuracy": report.accuracy,
            "per_class_accuracy": report.per_class,
            "train_seconds": round(seconds, 2),
            "device": str(device),
            "torch": torch.__version__,
            "weights_sha256": hashlib.sha256((tmp / WEIGHTS).read_bytes()).hexdigest(),
        }
        write_text(tmp / SPEC, json.dumps(info, indent=2, sort_keys=True) + "\n")


def _load(path: Path, device: torch.device) -> DomainClassifier:
    info = json.loads((path / SPEC).read_text())
    weights = (path / WEIGHTS).read_bytes()
    if hashlib.sha256(weights).hexdigest() != info["weights_sha256"]:
        raise MetricError(
            f"{path / WEIGHTS}: sha256 differs from {path / SPEC} (corrupted cache entry); "
            "delete the directory to train the evaluation classifier again"
        )
    spec = ClassifierSpec(**info["spec"])
    channels, height, width = info["image_shape"]
    network = EvalClassifier(
        (channels, height, width), len(info["class_names"]), spec.width, spec.feature_dim
    )
    network.load_state_dict(load_file(str(path / WEIGHTS)))
    return DomainClassifier(network, path, info, device)


def load_or_train(
    dataset: PreparedDataset,
    *,
    spec: ClassifierSpec | None = None,
    cache_root: Path | None = None,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> DomainClassifier:
    """The evaluation classifier of `dataset` under `spec`: read from the cache, or trained once and stored.

    A file lock serialises concurrent callers (parallel evaluations), so the classifier is trained once.
    Runs on the CPU unless `device` says otherwise; weights trained on a GPU (or another CPU
    architecture) differ in their bits, and so in their `extractor_id`: whichever is stored first is used.
    """
    spec = spec or ClassifierSpec()
    device = device or torch.device("cpu")
    target = classifier_dir(dataset, spec, cache_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.with_name(target.name + ".lock"))):
        if not (target / SPEC).is_file():
            shutil.rmtree(target, ignore_errors=True)  # not ours to keep: entries only appear complete
            _train_and_store(dataset, spec, target, device, progress)
    return _load(target, device)
