"""Classifier accuracy of a K-class discriminator (the semi-supervised GAN) on a labelled split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gan_models.training.batches import to_float


@dataclass
class AccuracyReport:
    accuracy: float
    per_class: dict[str, float]
    count: int

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy


@torch.no_grad()
def classifier_accuracy(
    classifier: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    *,
    batch_size: int = 1000,
    device: torch.device | None = None,
) -> AccuracyReport:
    """Top-1 accuracy, overall and per class, of `classifier(x) -> (logits, features)` in eval mode."""
    device = device or next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    predictions = []
    try:
        for start in range(0, len(images), batch_size):
            batch = to_float(torch.from_numpy(np.array(images[start : start + batch_size])).to(device))
            logits, _ = classifier(batch)
            predictions.append(logits.argmax(1).cpu())
    finally:
        classifier.train(was_training)
    predicted = torch.cat(predictions).numpy()
    labels = np.asarray(labels)
    correct = predicted == labels
    per_class = {
        name: float(correct[labels == c].mean()) for c, name in enumerate(class_names) if (labels == c).any()
    }
    return AccuracyReport(float(correct.mean()), per_class, int(len(labels)))
