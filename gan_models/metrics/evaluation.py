"""Evaluate a trained generator (and classifier) against a prepared dataset: one function, no tracking.

Metrics, each named after what it measures:
- `test_accuracy` and `test_accuracy/<class>`: the classifier (the EMA discriminator of the SSGAN) on
  every image of the evaluation split.
- `domain_fd`, `domain_kid`, `domain_kid_std`: Fréchet distance and KID on the features of a fixed
  evaluation classifier trained once per dataset version (`domain.py`); seconds on a CPU.
- `inception_fid`: pytorch-fid's FID (2048-d pool3 features of the FID Inception network), when asked.

`info` says how the numbers were made (implementation version, extractors, image counts, dataset
version); two evaluations are comparable only when their `signature` is equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gan_models.config import EvaluateConfig
from gan_models.data.prepared import PreparedDataset
from gan_models.errors import GanOpsError
from gan_models.io import Progress
from gan_models.metrics.distribution import distribution_metrics
from gan_models.metrics.domain import ClassifierSpec, has_class_labels
from gan_models.metrics.features import FeatureExtractor

# Bump when a change alters the numbers, so old and new evaluations are never compared.
EVAL_VERSION = "1"

Generate = Callable[[np.ndarray], np.ndarray]  # int64 seeds (N,) -> uint8 images (N, H, W, C)
Classify = Callable[[np.ndarray], np.ndarray]  # uint8 images (N, H, W, C) -> class probabilities (N, K)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    info: dict[str, str]
    per_class: dict[str, float] = field(default_factory=dict)

    @property
    def signature(self) -> str:
        """A hash of everything that must match for two evaluations to be compared."""
        keys = sorted(k for k in self.info if k not in _NOT_IN_SIGNATURE and not k.startswith("inception_"))
        blob = json.dumps({k: self.info[k] for k in keys}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, object]:
        return {
            "metrics": self.metrics,
            "per_class": self.per_class,
            "info": self.info,
            "signature": self.signature,
        }


# Not part of the signature: where it ran, the optional Inception FID (the policy checks that the metric
# it compares exists on both sides), and what the evaluation classifier's accuracy was.
_NOT_IN_SIGNATURE = {"device", "domain_extractor_test_accuracy"}


def nchw(images_nhwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(images_nhwc).transpose(0, 3, 1, 2))


def batched(fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([fn(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def classifier_metrics(
    classify: Classify, dataset: PreparedDataset, split: str, batch_size: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Accuracy on every labelled image of `split`, overall and per class."""
    images, labels = dataset.images(split), dataset.labels(split)
    keep = labels >= 0
    if not keep.any():
        raise GanOpsError(f"split {split!r} of {dataset.path} has no labels; accuracy needs a labelled split")
    images, labels = images[keep], labels[keep]
    hwc = lambda b: classify(np.ascontiguousarray(b.transpose(0, 2, 3, 1)))  # noqa: E731
    predicted = batched(hwc, images, batch_size).argmax(1)
    correct = predicted == labels
    per_class = {
        name: float(correct[labels == c].mean())
        for c, name in enumerate(dataset.class_names)
        if (labels == c).any()
    }
    return {"test_accuracy": float(correct.mean())}, per_class


INCEPTION_DIMS = 2048  # FID's pool3 features


def check_evaluation(dataset: PreparedDataset, cfg: EvaluateConfig) -> None:
    """Refuse an evaluation `dataset` cannot hold (a missing split, too few images, no metric for an
    unlabelled generator): the retrain flow checks this before training, so a bad `evaluate.*` fails in
    seconds, not after the training."""
    if cfg.split not in dataset.splits:
        raise GanOpsError(
            f"evaluate.split={cfg.split!r}: {dataset.path} has splits {', '.join(dataset.splits)}"
        )
    available = len(dataset.labels(cfg.split))
    if cfg.num_real > available:
        raise GanOpsError(
            f"evaluate.num_real={cfg.num_real} is more than the {available} images of split {cfg.split!r}"
        )
    labelled = has_class_labels(dataset)
    if cfg.inception_fid is False and not labelled:
        raise GanOpsError(
            f"dataset {dataset.name!r} has no class labels, so the domain metric cannot measure its "
            "generator; leave evaluate.inception_fid at auto (Inception FID then runs) or set it to true"
        )
    # A Fréchet distance needs more images than feature dimensions on each side (a full covariance).
    dims = INCEPTION_DIMS if cfg.inception_fid is True or not labelled else ClassifierSpec().feature_dim
    fewest = min(cfg.num_real, cfg.num_generated)
    if fewest <= dims:
        raise GanOpsError(
            f"evaluate.num_real={cfg.num_real} and evaluate.num_generated={cfg.num_generated}: the "
            f"{'Inception' if dims == INCEPTION_DIMS else 'domain'} Fréchet distance has {dims} feature "
            f"dimensions and needs more images than that on each side (at least {dims + 1})"
        )


def wants_inception(cfg: EvaluateConfig, dataset: PreparedDataset, device: torch.device) -> bool:
    """`evaluate.inception_fid`; auto: on a GPU, and wherever the domain metric cannot run (no labels)."""
    if cfg.inception_fid != "auto":
        return bool(cfg.inception_fid)
    return device.type == "cuda" or not has_class_labels(dataset)


def evaluate(
    dataset: PreparedDataset,
    cfg: EvaluateConfig,
    *,
    generate: Generate | None,
    classify: Classify | None,
    device: torch.device | None = None,
    cache_root: Path | None = None,
    inception: bool = False,
    progress: Progress | None = None,
) -> Evaluation:
    """Measure the classifier on `cfg.split` and the generator's images against real ones."""
    from gan_models.metrics.domain import load_or_train
    from gan_models.metrics.feature_cache import dataset_version, real_features

    device = device or torch.device("cpu")
    step = progress or (lambda stage, done, total: None)
    check_evaluation(dataset, cfg)
    metrics: dict[str, float] = {}
    per_class: dict[str, float] = {}
    info = {
        "eval_version": EVAL_VERSION,
        "dataset": dataset.name,
        "dataset_version": dataset_version(dataset),
        "split": cfg.split,
        "num_real": str(cfg.num_real),
        "num_generated": str(cfg.num_generated),
        "seed": str(cfg.seed),
        "device": device.type,
    }

    # Classifier accuracy.
    if classify is not None:
        step("accuracy", 0, 1)
        accuracy, per_class = classifier_metrics(classify, dataset, cfg.split, cfg.batch_size)
        metrics |= accuracy
        info["accuracy_count"] = str(int((dataset.labels(cfg.split) >= 0).sum()))
        step("accuracy", 1, 1)
    if generate is None:
        return Evaluation(metrics, info, per_class)

    # Generate.
    seeds = np.arange(cfg.seed, cfg.seed + cfg.num_generated, dtype=np.int64)
    chunks = []
    for start in range(0, len(seeds), cfg.batch_size):
        chunks.append(nchw(generate(seeds[start : start + cfg.batch_size])))
        step("generate", min(start + cfg.batch_size, len(seeds)), len(seeds))
    fake = np.concatenate(chunks)

    # Domain metric: features of the fixed evaluation classifier, which needs class labels to train.
    extractors: list[tuple[str, FeatureExtractor]] = []
    if has_class_labels(dataset):
        domain = load_or_train(
            dataset,
            spec=ClassifierSpec(steps=cfg.domain_classifier_steps),
            cache_root=cache_root,
            device=device,
            progress=progress,
        )
        extractors.append(("domain", domain))
        info["domain_extractor_test_accuracy"] = f"{domain.test_accuracy:.4f}"
    else:
        info["domain_metric"] = "not measured: the dataset has no class labels"
        if not inception:
            raise GanOpsError(
                f"dataset {dataset.name!r} has no class labels and Inception FID is off: nothing can "
                "measure its generator"
            )
    if inception:
        from gan_models.metrics.inception import InceptionFeatures

        extractors.append(("inception", InceptionFeatures(cfg.inception_weights, device=device)))
    for prefix, extractor in extractors:
        step(f"{prefix} features", 0, 2)
        real = real_features(
            dataset, cfg.split, extractor, cfg.num_real, cache_root=cache_root, seed=cfg.seed
        )
        step(f"{prefix} features", 1, 2)
        generated = extractor.features(fake, batch_size=cfg.batch_size)
        step(f"{prefix} features", 2, 2)
        result = distribution_metrics(
            real,
            generated,
            extractor,
            prefix=prefix,
            kid_subsets=cfg.kid_subsets,
            kid_subset_size=cfg.kid_subset_size,
            seed=cfg.seed,
        )
        metrics |= result.metrics
        info |= {k: str(v) for k, v in result.metadata.items()}
    if "inception_fd" in metrics:
        metrics["inception_fid"] = metrics.pop("inception_fd")  # the name everyone knows it by
    return Evaluation(metrics, info, per_class)
