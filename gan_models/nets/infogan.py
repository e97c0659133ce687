"""InfoGAN (Chen et al. 2016): DCGAN networks plus a Q head that recovers the latent codes.

The generator input is [noise, one-hot categorical code, continuous codes in U(-1, 1)]; G and D are
`DCGANGenerator` / `DCGANDiscriminator` (the paper's MNIST nets are this shape), and `QHead` sits on
D's features, sharing its trunk. `gan_models.losses.mutual_information_loss` scores the prediction.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from gan_models.nets.layers import init_dcgan_weights

# Bounds on the predicted log-std: without them a confident Q drives the Gaussian NLL to -infinity.
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class CodePrediction(NamedTuple):
    """What a Q head predicts; a field is None when the model has no such code."""

    logits: Tensor | None  # (n, categories) categorical-code logits
    mean: Tensor | None  # (n, continuous) means of the continuous codes
    log_std: Tensor | None  # (n, continuous), None for a fixed unit std


class QHead(nn.Module):
    """features -> hidden (BN, LeakyReLU) -> categorical logits, continuous means and log-stds."""

    def __init__(
        self, in_features: int, categories: int, continuous: int, learn_std: bool = True, hidden: int = 128
    ) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(in_features, hidden, bias=False), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2, True)
        )
        self.logits = nn.Linear(hidden, categories) if categories > 0 else None
        self.mean = nn.Linear(hidden, continuous) if continuous > 0 else None
        self.log_std = nn.Linear(hidden, continuous) if continuous > 0 and learn_std else None
        self.apply(init_dcgan_weights)

    def forward(self, features: Tensor) -> CodePrediction:
        h = self.trunk(features)
        return CodePrediction(
            logits=self.logits(h) if self.logits is not None else None,
            mean=self.mean(h) if self.mean is not None else None,
            log_std=self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX) if self.log_std is not None else None,
        )
