"""InfoGAN (Chen et al. 2016): DCGAN networks plus a Q head that recovers the latent codes.

The generator input is [noise, one-hot categorical code, continuous codes in U(-1, 1)]; G and D are
`DCGANGenerator` / `DCGANDiscriminator` (the paper's MNIST nets are this shape), and `QHead` sits on
D's features, sharing its trunk. `gan_models.losses.mutual_information_loss` scores the prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gan_models.losses import dcgan_discriminator_loss, dcgan_generator_loss, mutual_information_loss
from gan_models.nets.dcgan import DCGANDiscriminator, DCGANGenerator, check_conv_shape
from gan_models.nets.family import Draws, Family, Latent, ModelOptions, Models, Terms, terms
from gan_models.nets.layers import ImageShape, init_dcgan_weights

if TYPE_CHECKING:
    from gan_models.config import TrainConfig

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


# The family.


class InfoGANOptions(ModelOptions):
    name: Literal["infogan"] = "infogan"
    info_categories: int = Field(10, gt=0, description="classes of the one categorical code")
    info_continuous: int = Field(2, ge=0, description="continuous codes, each U(-1, 1)")
    info_learn_std: bool = Field(True, description="the Q head predicts a log-std; False: unit std")


def input_dim(options: InfoGANOptions, num_classes: int) -> int:
    return options.latent_dim + options.info_categories + options.info_continuous


def sample_latent(options: InfoGANOptions, draws: Draws, num_classes: int) -> Latent:
    """[noise N(0, I), one-hot categorical code, continuous codes U(-1, 1)]."""
    noise, codes = draws.normal(options.latent_dim), draws.labels(options.info_categories)
    continuous = draws.uniform(options.info_continuous)
    z = torch.cat([noise, F.one_hot(codes, options.info_categories).float(), continuous], dim=1)
    return Latent(z, codes, continuous)


def build(options: InfoGANOptions, image_shape: ImageShape, num_classes: int) -> Models:
    check_conv_shape(options.name, image_shape)
    discriminator = DCGANDiscriminator(image_shape, options.d_features, options.minibatch)
    return {
        "generator": DCGANGenerator(input_dim(options, num_classes), image_shape, options.g_features),
        "discriminator": discriminator,
        "q_head": QHead(
            discriminator.feature_dim,
            options.info_categories,
            options.info_continuous,
            learn_std=options.info_learn_std,
        ),
    }


def _info_loss(models: Models, features: Tensor, latent: Latent) -> Tensor:
    q = models["q_head"](features)
    return mutual_information_loss(q.logits, latent.labels, q.mean, latent.continuous, q.log_std)


def discriminator_objective(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, options: InfoGANOptions, cfg: TrainConfig
) -> Terms:
    with torch.no_grad():
        fake = models["generator"](latent.z)
    real_logits, _ = models["discriminator"](real)
    fake_logits, fake_features = models["discriminator"](fake)
    adversarial = dcgan_discriminator_loss(real_logits, fake_logits, cfg.label_smoothing)
    # Q (and D's shared trunk) learn to recover the codes of the detached fakes.
    info = _info_loss(models, fake_features, latent)
    return terms(adversarial + cfg.info_weight * info, adversarial=adversarial, mutual_information=info)


def generator_objective(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, options: InfoGANOptions, cfg: TrainConfig
) -> Terms:
    fake_logits, fake_features = models["discriminator"](models["generator"](latent.z))
    adversarial = dcgan_generator_loss(fake_logits)
    info = _info_loss(models, fake_features, latent)
    return terms(adversarial + cfg.info_weight * info, adversarial=adversarial, mutual_information=info)


FAMILY = Family(
    "infogan",
    InfoGANOptions,
    build,
    discriminator_objective,
    generator_objective,
    sample_latent=sample_latent,
    input_dim=input_dim,
    grid_classes=lambda options, num_classes: options.info_categories,
)
