"""StackedGAN (Huang et al. 2017), compact, as in Atienza's "Advanced Deep Learning with Keras", ch. 6.

A supervised encoder splits image -> label into two stages, E0: image -> feature f1 and E1: f1 -> class
logits. Two generator stages invert them, G1: (one-hot label, z1) -> f1 and G0: (f1, z0) -> image, each
with its own discriminator (D1 on features, D0 on images) and a Q head that recovers its noise
(the "entropy" loss). Conditional losses ask E1(G1(y, z1)) to classify as y and E0(G0(f1, z0)) to
give back f1. The generator input z is [one-hot label, z1, z0], with z1 and z0 of latent_dim each.

The encoder is pre-trained on the labelled pool before the GAN starts (`encoder_pretrain_steps`), as
in the StackedGAN paper and Atienza's code: the conditional losses lean on it from the first step,
and the few labelled images that land in ordinary batches (about 1.4 per batch of 100 with 1,000
labels among 73,257) would train it barely at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gan_models.losses import dcgan_discriminator_loss, dcgan_generator_loss, masked_cross_entropy
from gan_models.nets.dcgan import DCGANDiscriminator, DCGANGenerator, check_conv_shape, discriminator_trunk
from gan_models.nets.family import (
    Draws,
    Family,
    Latent,
    ModelOptions,
    Models,
    Terms,
    TrainingData,
    require_classes,
    terms,
)
from gan_models.nets.infogan import QHead
from gan_models.nets.layers import ImageShape, init_dcgan_weights

if TYPE_CHECKING:
    from gan_models.config import TrainConfig


def split_stacked_latent(z: Tensor, latent_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split a StackedGAN input [one-hot label, z1, z0] into its three parts."""
    return z[:, : -2 * latent_dim], z[:, -2 * latent_dim : -latent_dim], z[:, -latent_dim:]


class FeatureEncoder(nn.Module):
    """E0: image -> feature f1 (ReLU, so non-negative); the conv trunk has no BN.

    BN would make E0(fake) depend on the fake batch's statistics inside the conditional loss.
    """

    def __init__(self, image_shape: ImageShape, d_features: int, feature_dim: int) -> None:
        super().__init__()
        trunk, width = discriminator_trunk(image_shape, d_features, batch_norm=False)
        self.net = nn.Sequential(trunk, nn.Linear(width, feature_dim), nn.ReLU(True))
        self.apply(init_dcgan_weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class FeatureClassifier(nn.Module):
    """E1: feature f1 -> class logits (Atienza's enc1 is this single dense layer)."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Linear(feature_dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


class FeatureGenerator(nn.Module):
    """G1: [one-hot label, z1] -> hidden -> hidden (BN, ReLU) -> feature f1 (ReLU, like E0's output)."""

    def __init__(self, input_dim: int, feature_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(True),
            nn.Linear(hidden, feature_dim),
            nn.ReLU(True),
        )
        self.apply(init_dcgan_weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class StackedGenerator(nn.Module):
    """G0 after G1: z = [one-hot label, z1, z0] -> image, with hooks for stage-wise training.

    `forward(z)` runs the whole stack. `forward(z, features=f)` conditions G0 on `f` (e.g. E0 of real
    images, as in Atienza's independent stage training) instead of G1's output; with
    `return_features=True` it returns (image, G1's features). Both stages run in every call, so under
    DistributedDataParallel every parameter takes part in each backward pass.
    """

    def __init__(
        self, num_classes: int, latent_dim: int, image_shape: ImageShape, g_features: int, feature_dim: int
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.input_dim = num_classes + 2 * latent_dim
        self.image_shape = image_shape
        self.g1 = FeatureGenerator(num_classes + latent_dim, feature_dim, hidden=8 * g_features)
        self.g0 = DCGANGenerator(feature_dim + latent_dim, image_shape, g_features)

    def forward(
        self, z: Tensor, features: Tensor | None = None, return_features: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        onehot, z1, z0 = split_stacked_latent(z, self.latent_dim)
        fake_features = self.g1(torch.cat([onehot, z1], dim=1))
        image = self.g0(torch.cat([fake_features if features is None else features, z0], dim=1))
        return (image, fake_features) if return_features else image


class FeatureDiscriminator(nn.Module):
    """D1: feature f1 -> hidden -> hidden (LeakyReLU) -> one logit; returns (logit (n,), features)."""

    def __init__(self, feature_dim: int, hidden: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.LeakyReLU(0.2, True),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2, True),
        )
        self.feature_dim = hidden
        self.head = nn.Linear(hidden, 1)
        self.apply(init_dcgan_weights)

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(f)
        return self.head(h).squeeze(1), h


# The family.


class StackedGANOptions(ModelOptions):
    name: Literal["stackedgan"] = "stackedgan"
    stacked_feature_dim: int = Field(256, gt=0, description="the intermediate feature f1 between the stages")
    encoder_pretrain_steps: int = Field(
        500, ge=0, description="Adam steps of the encoder on the labelled pool before the GAN; 0: none"
    )
    encoder_pretrain_lr: float = Field(1e-3, gt=0)


def pretrain_encoder(
    models: Models, data: TrainingData, options: StackedGANOptions, cfg: TrainConfig, rng: torch.Generator
) -> None:
    """Train E0 and E1 as a classifier on batches of the labelled pool (cross-entropy, Adam)."""
    if options.encoder_pretrain_steps == 0 or len(data.labeled) == 0:
        return
    encoder, classifier = models["encoder"], models["classifier"]
    encoder.train()
    classifier.train()
    params = [*encoder.parameters(), *classifier.parameters()]
    optimizer = torch.optim.Adam(params, lr=options.encoder_pretrain_lr, betas=(cfg.beta1, cfg.beta2))
    batch = min(cfg.batch_size, len(data.labeled))
    for _ in range(options.encoder_pretrain_steps):
        picked = data.labeled[
            torch.randperm(len(data.labeled), generator=rng)[:batch].to(data.labeled.device)
        ]
        loss = F.cross_entropy(classifier(encoder(data.real(picked))), data.labels[picked])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def input_dim(options: StackedGANOptions, num_classes: int) -> int:
    return num_classes + 2 * options.latent_dim


def sample_latent(options: StackedGANOptions, draws: Draws, num_classes: int) -> Latent:
    """[one-hot class, z1, z0], the noise N(0, I)."""
    classes = draws.labels(num_classes)
    z = torch.cat([F.one_hot(classes, num_classes).float(), draws.normal(2 * options.latent_dim)], dim=1)
    return Latent(z, classes)


def build(options: StackedGANOptions, image_shape: ImageShape, num_classes: int) -> Models:
    check_conv_shape(options.name, image_shape)
    require_classes(options.name, num_classes)
    fdim, hidden = options.stacked_feature_dim, 8 * options.d_features
    discriminator = DCGANDiscriminator(image_shape, options.d_features, options.minibatch)
    feature_discriminator = FeatureDiscriminator(fdim, hidden)
    return {
        "generator": StackedGenerator(num_classes, options.latent_dim, image_shape, options.g_features, fdim),
        "discriminator": discriminator,
        "feature_discriminator": feature_discriminator,
        "q_head": QHead(discriminator.feature_dim, 0, options.latent_dim, learn_std=False),
        "feature_q_head": QHead(feature_discriminator.feature_dim, 0, options.latent_dim, learn_std=False),
        "encoder": FeatureEncoder(image_shape, options.d_features, fdim),
        "classifier": FeatureClassifier(fdim, num_classes),
    }


def _entropy_loss(q_head: nn.Module, features: Tensor, noise: Tensor) -> Tensor:
    # Atienza's entropy loss: mean squared error of the recovered noise (a unit-std Gaussian NLL up to
    # scale and constant), averaged over dims so its size does not grow with latent_dim.
    return F.mse_loss(q_head(features).mean, noise)


def discriminator_objective(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, options: StackedGANOptions, cfg: TrainConfig
) -> Terms:
    _, z1, z0 = split_stacked_latent(latent.z, options.latent_dim)
    real_features = models["encoder"](real)
    encoder = masked_cross_entropy(models["classifier"](real_features), labels)
    real_features = real_features.detach()
    with torch.no_grad():
        # G0 draws on E0's real features, G1 on labels: the stages train independently (Atienza).
        fake, fake_features = models["generator"](latent.z, features=real_features, return_features=True)
    d1_real, _ = models["feature_discriminator"](real_features)
    d1_fake, h1 = models["feature_discriminator"](fake_features)
    d0_real, _ = models["discriminator"](real)
    d0_fake, h0 = models["discriminator"](fake)
    adversarial_features = dcgan_discriminator_loss(d1_real, d1_fake, cfg.label_smoothing)
    adversarial = adversarial_features + dcgan_discriminator_loss(d0_real, d0_fake, cfg.label_smoothing)
    entropy = _entropy_loss(models["feature_q_head"], h1, z1) + _entropy_loss(models["q_head"], h0, z0)
    loss = adversarial + cfg.info_weight * entropy + encoder
    return terms(loss, adversarial=adversarial, entropy=entropy, encoder=encoder)


def generator_objective(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, options: StackedGANOptions, cfg: TrainConfig
) -> Terms:
    _, z1, z0 = split_stacked_latent(latent.z, options.latent_dim)
    with torch.no_grad():
        real_features = models["encoder"](real)
    fake, fake_features = models["generator"](latent.z, features=real_features, return_features=True)
    d1_fake, h1 = models["feature_discriminator"](fake_features)
    d0_fake, h0 = models["discriminator"](fake)
    adversarial = dcgan_generator_loss(d1_fake) + dcgan_generator_loss(d0_fake)
    entropy = _entropy_loss(models["feature_q_head"], h1, z1) + _entropy_loss(models["q_head"], h0, z0)
    # Conditional losses: G1's features must classify as the asked-for label, and G0's image must
    # encode back to the features it was drawn from.
    conditional_labels = F.cross_entropy(models["classifier"](fake_features), latent.labels)
    conditional = conditional_labels + F.mse_loss(models["encoder"](fake), real_features)
    loss = adversarial + cfg.info_weight * entropy + cfg.conditional_weight * conditional
    return terms(loss, adversarial=adversarial, entropy=entropy, conditional=conditional)


def classify(models: Models, images: Tensor) -> Tensor:
    return models["classifier"](models["encoder"](images))


FAMILY = Family(
    "stackedgan",
    StackedGANOptions,
    build,
    discriminator_objective,
    generator_objective,
    sample_latent=sample_latent,
    input_dim=input_dim,
    classifier=("encoder", "classifier"),
    classify=classify,
    grid_classes=lambda options, num_classes: num_classes,
    initialize=pretrain_encoder,
)
