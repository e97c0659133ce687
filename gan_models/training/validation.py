"""Validation while training: the EMA networks scored on the `val` split, to keep the best epoch.

Rank 0 scores every `train.eval_every` epochs with the fast metrics: the classifier's accuracy on every
validation image (families with a classifier) and the domain Fréchet distance of `train.eval_images`
generated images against as many validation images, on the features of the fixed evaluation
classifier (`gan_models.metrics.domain`). The test split is never looked at: choosing an epoch here is
not test-set selection. Scoring touches no RNG the training uses (each epoch reseeds its own), so a run
with validation ends with the same weights as one without.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gan_models.config import Config
from gan_models.data.prepared import PreparedDataset
from gan_models.errors import ConfigError
from gan_models.nets import family, sample_latent
from gan_models.training.batches import to_float, to_uint8

VAL_SPLIT = "val"
ACCURACY, FD = "val_accuracy", "val_domain_fd"


@dataclass(frozen=True)
class Score:
    """The number that ranks epochs: accuracy (higher wins) when the family classifies, else FD."""

    metric: str
    value: float

    def beats(self, other: Score | None) -> bool:
        if other is None:
            return True
        return self.value > other.value if self.metric == ACCURACY else self.value < other.value


def check_validation(cfg: Config, dataset: PreparedDataset) -> None:
    """Fail before training if `train.eval_every` asks for a validation split the data does not have."""
    if cfg.train.eval_every and VAL_SPLIT not in dataset.splits:
        raise ConfigError(
            f"train.eval_every={cfg.train.eval_every} needs a {VAL_SPLIT!r} split, and {dataset.path} has "
            f"{', '.join(dataset.splits)}: prepare it with --set data.val_size=N"
        )
    if cfg.train.eval_every and dataset.num_classes >= 2:
        from gan_models.metrics.domain import ClassifierSpec

        count, dim = (
            min(cfg.train.eval_images, dataset.manifest["splits"][VAL_SPLIT]["count"]),
            ClassifierSpec.feature_dim,
        )
        if count <= dim:
            raise ConfigError(
                f"val_domain_fd from {count} images (min of train.eval_images and data.val_size): the Fréchet "
                f"distance on {dim}-d features needs more than {dim}"
            )
    if cfg.train.patience and not cfg.train.eval_every:
        raise ConfigError("train.patience needs train.eval_every > 0 (it counts evaluations)")


@torch.no_grad()
def validate(
    cfg: Config, dataset: PreparedDataset, averaged: Callable[[str], nn.Module], device: torch.device
) -> dict[str, float]:
    """`val_accuracy` (if the family classifies) and `val_domain_fd` (if the dataset has labels)."""
    spec = family(cfg.model)
    images = np.asarray(dataset.images(VAL_SPLIT))
    labels = np.asarray(dataset.labels(VAL_SPLIT))
    metrics: dict[str, float] = {}
    if spec.classify is not None and (labels >= 0).any():
        nets = {name: averaged(name).to(device).eval() for name in spec.classifier}
        keep = np.flatnonzero(labels >= 0)
        correct = 0
        for start in range(0, len(keep), 500):
            batch = torch.from_numpy(images[keep[start : start + 500]]).to(device)
            predicted = spec.classify(nets, to_float(batch)).argmax(1).cpu().numpy()
            correct += int((predicted == labels[keep[start : start + 500]]).sum())
        metrics[ACCURACY] = correct / len(keep)
    if dataset.num_classes >= 2:
        metrics[FD] = _domain_fd(cfg, dataset, averaged("generator").to(device).eval(), device)
    return metrics


def _domain_fd(cfg: Config, dataset: PreparedDataset, generator: nn.Module, device: torch.device) -> float:
    from gan_models.metrics.domain import ClassifierSpec, load_or_train
    from gan_models.metrics.feature_cache import real_features
    from gan_models.metrics.frechet import FeatureStats, stats_distance

    count = min(cfg.train.eval_images, len(dataset.labels(VAL_SPLIT)))
    with torch.enable_grad():  # trained on first use (then cached): it needs gradients
        extractor = load_or_train(dataset, spec=ClassifierSpec(steps=cfg.evaluate.domain_classifier_steps))
    real = real_features(dataset, VAL_SPLIT, extractor, count, seed=cfg.evaluate.seed)
    # A fixed latent batch of its own stream: every evaluation scores the same inputs.
    rng = torch.Generator().manual_seed(cfg.seed + 2**30)
    chunks = []
    for start in range(0, count, 500):
        n = min(500, count - start)
        latent = sample_latent(cfg.model, n, dataset.num_classes, generator=rng, device=device)
        chunks.append(to_uint8(generator(latent.z).float()).cpu().numpy())
    fake = extractor.features(np.concatenate(chunks))
    return stats_distance(
        FeatureStats.from_features(real, "validation"), FeatureStats.from_features(fake, "generated")
    )


def score(metrics: dict[str, float]) -> Score | None:
    """The epoch's ranking number from its validation metrics (None if it was not validated)."""
    if ACCURACY in metrics:
        return Score(ACCURACY, metrics[ACCURACY])
    if FD in metrics:
        return Score(FD, metrics[FD])
    return None
