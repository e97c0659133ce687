"""The vanilla fully-connected GAN (Goodfellow et al. 2014 in spirit); works for any small image shape."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from gan_models.nets import dcgan
from gan_models.nets.family import Family, ModelOptions, Models, unsupported
from gan_models.nets.layers import ImageShape, MinibatchDiscrimination, image_numel, init_dcgan_weights

MAX_NUMEL = 3 * 64 * 64  # dense layers on larger images grow past what this family is for


class MLPGenerator(nn.Module):
    """z -> 4g -> 8g -> 16g (LeakyReLU, BN on the wider layers) -> image, tanh; g = g_features."""

    def __init__(self, latent_dim: int, image_shape: ImageShape, g_features: int) -> None:
        super().__init__()
        g = g_features
        self.input_dim = latent_dim
        self.image_shape = image_shape
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 4 * g),
            nn.LeakyReLU(0.2, True),
            nn.Linear(4 * g, 8 * g, bias=False),
            nn.BatchNorm1d(8 * g),
            nn.LeakyReLU(0.2, True),
            nn.Linear(8 * g, 16 * g, bias=False),
            nn.BatchNorm1d(16 * g),
            nn.LeakyReLU(0.2, True),
            nn.Linear(16 * g, image_numel(image_shape)),
            nn.Tanh(),
            nn.Unflatten(1, image_shape),
        )
        self.apply(init_dcgan_weights)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """image -> 8d -> 4d (LeakyReLU) -> one logit; returns (logit (n,), features (n, 4d)); d = d_features."""

    def __init__(
        self, image_shape: ImageShape, d_features: int, minibatch: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        d = d_features
        self.image_shape = image_shape
        self.trunk = nn.Sequential(
            nn.Flatten(),
            nn.Linear(image_numel(image_shape), 8 * d),
            nn.LeakyReLU(0.2, True),
            nn.Linear(8 * d, 4 * d),
            nn.LeakyReLU(0.2, True),
        )
        self.feature_dim = 4 * d
        self.apply(init_dcgan_weights)
        self.minibatch = MinibatchDiscrimination(4 * d, *minibatch) if minibatch else nn.Identity()
        self.head = nn.Linear(self.minibatch.out_features if minibatch else 4 * d, 1)
        init_dcgan_weights(self.head)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        return self.head(self.minibatch(features)).squeeze(1), features


class MLPGANOptions(ModelOptions):
    name: Literal["mlp-gan"] = "mlp-gan"


def build(options: MLPGANOptions, image_shape: ImageShape, num_classes: int) -> Models:
    if image_numel(image_shape) > MAX_NUMEL:
        raise unsupported(options.name, image_shape, f"any shape with at most {MAX_NUMEL} values")
    return {
        "generator": MLPGenerator(options.latent_dim, image_shape, options.g_features),
        "discriminator": MLPDiscriminator(image_shape, options.d_features, options.minibatch),
    }


# The DCGAN objectives: they only need a generator and a single-logit discriminator.
FAMILY = Family("mlp-gan", MLPGANOptions, build, dcgan.discriminator_objective, dcgan.generator_objective)
