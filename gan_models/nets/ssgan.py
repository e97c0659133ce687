"""Semi-supervised GAN (Salimans et al. 2016, "Improved Techniques for Training GANs").

The discriminator is a K-class classifier; "real" is the implicit class K+1 with logit 0, so
D(x) = Z / (Z + 1) with Z = sum_k exp(l_k) (see `gan_models.losses`). It returns the K logits and its
penultimate features, which the generator matches under feature matching.

Architectures follow the official `improved-gan` code: for 32x32 (SVHN, CIFAR) a weight-normalised
conv net with dropout and global average pooling (96/192 channels there; d_features and 2*d_features
here), and for 28x28 (MNIST) an MLP with Gaussian noise on every layer's input. The 32x32 generator is
`DCGANGenerator`; the MNIST one is `SSGANMLPGenerator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from gan_models.losses import (
    feature_matching_loss,
    masked_accuracy,
    ssgan_discriminator_loss,
    ssgan_generator_loss,
)
from gan_models.nets.dcgan import DCGANGenerator
from gan_models.nets.family import (
    Family,
    Latent,
    ModelOptions,
    Models,
    Terms,
    require_classes,
    terms,
    unsupported,
)
from gan_models.nets.layers import GaussianNoise, ImageShape, MinibatchDiscrimination, image_numel, wn

if TYPE_CHECKING:
    from gan_models.config import TrainConfig

# improved-gan's MNIST discriminator widths and noise levels.
MLP_HIDDEN = (1000, 500, 250, 250, 250)
MLP_INPUT_NOISE = 0.3
MLP_HIDDEN_NOISE = 0.5


def _classifier_head(
    in_features: int, num_classes: int, minibatch: tuple[int, int] | None
) -> tuple[nn.Module, nn.Module]:
    """(optional minibatch discrimination, weight-normed linear to K logits)."""
    if minibatch is None:
        return nn.Identity(), wn(nn.Linear(in_features, num_classes))
    mbd = MinibatchDiscrimination(in_features, *minibatch)
    return mbd, wn(nn.Linear(mbd.out_features, num_classes))


class _SSGANDiscriminator(nn.Module):
    minibatch: nn.Module

    @property
    def mixes_examples(self) -> bool:
        """Whether an example's output depends on the rest of its batch (minibatch discrimination)."""
        return isinstance(self.minibatch, MinibatchDiscrimination)


class SSGANConvDiscriminator(_SSGANDiscriminator):
    """improved-gan's SVHN/CIFAR discriminator-classifier; returns (logits (n, K), features (n, 2*df)).

    No batch norm anywhere: the features feed feature matching, and BN would make each example's
    features depend on the rest of its batch. Global average pooling makes it work at 64x64 too.
    """

    # On a CPU, convolutions over more images than this fall out of cache: three chunks of 128 train
    # 30% faster than one pass of 384 in fp32 (benchmarks/RESULTS.md). The trunk treats every example
    # on its own, so chunks give the same features.
    cpu_chunk = 128

    def __init__(
        self,
        image_shape: ImageShape,
        num_classes: int,
        d_features: int,
        input_dropout: float,
        dropout: float,
        minibatch: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        nc = image_shape[0]
        df, df2 = d_features, 2 * d_features
        self.image_shape = image_shape
        self.num_classes = num_classes

        def conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 1) -> list[nn.Module]:
            return [wn(nn.Conv2d(cin, cout, k, stride, pad), relu_slope=0.2), nn.LeakyReLU(0.2, True)]

        self.trunk = nn.Sequential(
            nn.Dropout(input_dropout),
            *conv(nc, df, 3),  # df x 32 x 32
            *conv(df, df, 3),  # df x 32 x 32
            *conv(df, df, 3, stride=2),  # df x 16 x 16
            nn.Dropout(dropout),
            *conv(df, df2, 3),  # (df*2) x 16 x 16
            *conv(df2, df2, 3),  # (df*2) x 16 x 16
            *conv(df2, df2, 3, stride=2),  # (df*2) x 8 x 8
            nn.Dropout(dropout),
            *conv(df2, df2, 3, pad=0),  # (df*2) x 6 x 6
            *conv(df2, df2, 1, pad=0),  # (df*2) x 6 x 6, network-in-network
            *conv(df2, df2, 1, pad=0),  # (df*2) x 6 x 6
            nn.AdaptiveAvgPool2d(1),  # (df*2) x 1 x 1
            nn.Flatten(),  # df*2
        )
        self.feature_dim = df2
        self.minibatch, self.head = _classifier_head(df2, num_classes, minibatch)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.device.type == "cpu" and len(x) > self.cpu_chunk:
            features = torch.cat([self.trunk(chunk) for chunk in x.split(self.cpu_chunk)])
        else:
            features = self.trunk(x)
        return self.head(self.minibatch(features)), features


class SSGANMLPDiscriminator(_SSGANDiscriminator):
    """improved-gan's MNIST discriminator: dense 1000-500-250-250-250 ReLU with Gaussian input noise.

    Returns (logits (n, K), features (n, 250)); the features are the last hidden layer, before its noise.
    """

    def __init__(
        self,
        image_shape: ImageShape,
        num_classes: int,
        minibatch: tuple[int, int] | None = None,
        hidden: tuple[int, ...] = MLP_HIDDEN,
    ) -> None:
        super().__init__()
        self.image_shape = image_shape
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten(), GaussianNoise(MLP_INPUT_NOISE)]
        width = image_numel(image_shape)
        for i, out in enumerate(hidden):
            if i > 0:
                layers.append(GaussianNoise(MLP_HIDDEN_NOISE))
            layers += [wn(nn.Linear(width, out), relu_slope=0.0), nn.ReLU(True)]
            width = out
        self.trunk = nn.Sequential(*layers)
        self.feature_dim = width
        self.head_noise = GaussianNoise(MLP_HIDDEN_NOISE)
        self.minibatch, self.head = _classifier_head(width, num_classes, minibatch)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        return self.head(self.minibatch(self.head_noise(features))), features


class SSGANMLPGenerator(nn.Module):
    """improved-gan's MNIST generator: z -> 500 -> 500 (BN, softplus) -> image, tanh to [-1, 1]."""

    def __init__(self, latent_dim: int, image_shape: ImageShape, hidden: int = 500) -> None:
        super().__init__()
        self.input_dim = latent_dim
        self.image_shape = image_shape
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.Softplus(),
            # improved-gan ends in a weight-normed sigmoid layer on [0, 1] pixels; tanh is its [-1, 1] twin.
            wn(nn.Linear(hidden, image_numel(image_shape))),
            nn.Tanh(),
            nn.Unflatten(1, image_shape),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


# The family.


class SSGANOptions(ModelOptions):
    name: Literal["ssgan"] = "ssgan"
    d_input_dropout: float = Field(0.2, ge=0, lt=1, description="dropout on the conv D's input images")
    d_dropout: float = Field(0.5, ge=0, lt=1, description="dropout after each conv D's stride-2 block")


def build(options: SSGANOptions, image_shape: ImageShape, num_classes: int) -> Models:
    require_classes(options.name, num_classes)
    _, h, w = image_shape
    if (h, w) == (28, 28):
        return {
            "generator": SSGANMLPGenerator(options.latent_dim, image_shape),
            "discriminator": SSGANMLPDiscriminator(image_shape, num_classes, options.minibatch),
        }
    if h == w and h in (32, 64):
        return {
            "generator": DCGANGenerator(options.latent_dim, image_shape, options.g_features),
            "discriminator": SSGANConvDiscriminator(
                image_shape,
                num_classes,
                options.d_features,
                options.d_input_dropout,
                options.d_dropout,
                options.minibatch,
            ),
        }
    raise unsupported(options.name, image_shape, "square sides 28 (MLP nets), 32, 64")


def discriminator_objective(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, options: SSGANOptions, cfg: TrainConfig
) -> Terms:
    with torch.no_grad():
        fake = models["generator"](latent.z)
    # improved-gan scores labelled and unlabelled batches separately; here both are `real` (labels -1
    # for the unlabelled part), and every real image also counts as unlabelled data. One pass over
    # real and fake together when each example's output is its own (no batch norm, no minibatch
    # discrimination): it halves the weight-norm and cast work and gives the matmuls larger batches.
    discriminator = models["discriminator"]
    if getattr(discriminator, "module", discriminator).mixes_examples:  # `.module` under DDP
        logits_real, _ = discriminator(real)
        logits_fake, _ = discriminator(fake)
    else:
        logits, _ = discriminator(torch.cat([real, fake.to(real.dtype)]))
        logits_real, logits_fake = logits.split([len(real), len(fake)])
    supervised, unsupervised = ssgan_discriminator_loss(
        logits_real, labels, logits_real, logits_fake, cfg.label_smoothing
    )
    accuracy, _ = masked_accuracy(logits_real, labels)
    return terms(
        supervised + cfg.unlabeled_weight * unsupervised,
        supervised=supervised,
        unsupervised=unsupervised,
        accuracy=accuracy,
    )


def generator_objective(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, options: SSGANOptions, cfg: TrainConfig
) -> Terms:
    fake = models["generator"](latent.z)
    logits_fake, fake_features = models["discriminator"](fake)
    if not cfg.feature_matching:
        loss = ssgan_generator_loss(logits_fake)
        return terms(loss, adversarial=loss)
    # The target is the unlabelled real batch (labels -1), as in improved-gan: it skips a third of
    # this step's discriminator forward work. `all` adds the labelled batch, which was steadier across
    # seeds on MNIST with 100 labels (benchmarks/RESULTS.md). Fully labelled batches match all.
    unlabeled = labels < 0
    if cfg.feature_matching_target == "unlabeled" and bool(unlabeled.any()):
        target = real[unlabeled]
    else:
        target = real
    with torch.no_grad():
        _, real_features = models["discriminator"](target)
    loss = feature_matching_loss(real_features, fake_features)
    return terms(loss, feature_matching=loss)


def classify(models: Models, images: Tensor) -> Tensor:
    logits, _ = models["discriminator"](images)
    return logits


FAMILY = Family(
    "ssgan",
    SSGANOptions,
    build,
    discriminator_objective,
    generator_objective,
    classifier=("discriminator",),
    classify=classify,
    needs_labeled_batch=True,
)
