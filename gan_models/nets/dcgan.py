"""DCGAN (Radford et al. 2016): the conv generator and discriminator, at 28x28, 32x32 and 64x64.

Both follow one rule so every resolution reads the same: the side doubles (halves) per stride-2 layer
while the channel count halves (doubles). Other families (SSGAN's generator, InfoGAN, StackedGAN's G0
and D0) reuse these stacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from gan_models.losses import dcgan_discriminator_loss, dcgan_generator_loss
from gan_models.nets.family import Family, Latent, ModelOptions, Models, Objective, Terms, terms, unsupported
from gan_models.nets.layers import ImageShape, MinibatchDiscrimination, init_dcgan_weights

if TYPE_CHECKING:
    from gan_models.config import TrainConfig

# Image side -> side of the smallest feature map (the generator's first, the discriminator's last).
BASE_SIDE = {28: 7, 32: 4, 64: 4}
SUPPORTED_SIDES = tuple(BASE_SIDE)


def num_doublings(side: int) -> int:
    """Stride-2 layers between the base feature map and an image of `side` (28: 2, 32: 3, 64: 4)."""
    return (side // BASE_SIDE[side]).bit_length() - 1


class DCGANGenerator(nn.Module):
    """Dense projection to a small map, then stride-2 transposed convs with BN + ReLU, then tanh.

    With n = num_doublings(side) and ngf = g_features:
      64x64: z -> (ngf*16) x 4 x 4 -> (ngf*8) x 8 x 8 -> (ngf*4) x 16 x 16 -> (ngf*2) x 32 x 32
             -> nc x 64 x 64
      32x32: z -> (ngf*8) x 4 x 4 -> (ngf*4) x 8 x 8 -> (ngf*2) x 16 x 16 -> nc x 32 x 32
      28x28: z -> (ngf*4) x 7 x 7 -> (ngf*2) x 14 x 14 -> nc x 28 x 28
    """

    def __init__(self, input_dim: int, image_shape: ImageShape, g_features: int) -> None:
        super().__init__()
        nc, side, _ = image_shape
        base, n = BASE_SIDE[side], num_doublings(side)
        width = g_features * 2**n
        self.input_dim = input_dim
        self.image_shape = image_shape
        self.project = nn.Sequential(
            nn.Linear(input_dim, width * base * base, bias=False),
            nn.Unflatten(1, (width, base, base)),  # (ngf*2^n) x base x base
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        )
        blocks: list[nn.Module] = []
        for _ in range(n - 1):
            # (w) x s x s -> (w/2) x 2s x 2s
            blocks += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        # (ngf*2) x side/2 x side/2 -> nc x side x side; no BN on the output layer (Radford et al.)
        blocks += [nn.ConvTranspose2d(width, nc, 4, 2, 1), nn.Tanh()]
        self.upsample = nn.Sequential(*blocks)
        self.apply(init_dcgan_weights)

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(self.project(z))


def discriminator_trunk(
    image_shape: ImageShape, d_features: int, batch_norm: bool = True
) -> tuple[nn.Module, int]:
    """Stride-2 4x4 convs with LeakyReLU 0.2 down to the base map, flattened; returns (trunk, width).

    With ndf = d_features:
      64x64: nc x 64 x 64 -> ndf x 32 x 32 -> (ndf*2) x 16 x 16 -> (ndf*4) x 8 x 8 -> (ndf*8) x 4 x 4
      32x32: nc x 32 x 32 -> ndf x 16 x 16 -> (ndf*2) x 8 x 8 -> (ndf*4) x 4 x 4
      28x28: nc x 28 x 28 -> ndf x 14 x 14 -> (ndf*2) x 7 x 7
    """
    nc, side, _ = image_shape
    base, n = BASE_SIDE[side], num_doublings(side)
    # No BN on the first layer (Radford et al.): it would normalise away the input's statistics.
    layers: list[nn.Module] = [nn.Conv2d(nc, d_features, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    width = d_features
    for _ in range(n - 1):
        # (w) x s x s -> (2w) x s/2 x s/2
        layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=not batch_norm)]
        layers += [nn.BatchNorm2d(width * 2)] if batch_norm else []
        layers += [nn.LeakyReLU(0.2, True)]
        width *= 2
    layers.append(nn.Flatten())  # (ndf*2^(n-1)) * base * base
    return nn.Sequential(*layers), width * base * base


class DCGANDiscriminator(nn.Module):
    """The conv trunk of `discriminator_trunk`, then one linear logit. Returns (logit (n,), features)."""

    def __init__(
        self, image_shape: ImageShape, d_features: int, minibatch: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.image_shape = image_shape
        self.trunk, self.feature_dim = discriminator_trunk(image_shape, d_features)
        self.apply(init_dcgan_weights)
        # Optional minibatch discrimination (kernels, kernel dim) on the features, before the logit.
        self.minibatch = MinibatchDiscrimination(self.feature_dim, *minibatch) if minibatch else nn.Identity()
        width = self.minibatch.out_features if minibatch else self.feature_dim
        # A linear layer on the flattened base map is Radford's final valid 4x4 conv, for any base side.
        self.head = nn.Linear(width, 1)
        init_dcgan_weights(self.head)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        return self.head(self.minibatch(features)).squeeze(1), features


def check_conv_shape(name: str, image_shape: ImageShape) -> None:
    """The conv stacks above take square images of the sides in BASE_SIDE."""
    _, h, w = image_shape
    if h != w or h not in SUPPORTED_SIDES:
        raise unsupported(name, image_shape, f"square sides {', '.join(map(str, SUPPORTED_SIDES))}")


# The family: non-saturating loss on a single logit (also the MLP GAN's objectives).


class DCGANOptions(ModelOptions):
    name: Literal["dcgan"] = "dcgan"


def build(options: DCGANOptions, image_shape: ImageShape, num_classes: int) -> Models:
    check_conv_shape(options.name, image_shape)
    return {
        "generator": DCGANGenerator(options.latent_dim, image_shape, options.g_features),
        "discriminator": DCGANDiscriminator(image_shape, options.d_features, options.minibatch),
    }


def single_logit_objectives(
    d_loss: Callable[[Tensor, Tensor, TrainConfig], Tensor], g_loss: Callable[[Tensor], Tensor]
) -> tuple[Objective, Objective]:
    """The D-side and G objectives of a generator against a single-logit discriminator, for one loss pair
    (`d_loss(real_logits, fake_logits, train_cfg)`, `g_loss(fake_logits)`); DCGAN, MLP GAN and SNGAN's."""

    def discriminator_objective(
        models: Models, real: Tensor, labels: Tensor, latent: Latent, options: ModelOptions, cfg: TrainConfig
    ) -> Terms:
        with torch.no_grad():
            fake = models["generator"](latent.z)
        real_logits, _ = models["discriminator"](real)
        fake_logits, _ = models["discriminator"](fake)
        loss = d_loss(real_logits, fake_logits, cfg)
        return terms(loss, adversarial=loss)

    def generator_objective(
        models: Models, real: Tensor, labels: Tensor, latent: Latent, options: ModelOptions, cfg: TrainConfig
    ) -> Terms:
        fake_logits, _ = models["discriminator"](models["generator"](latent.z))
        loss = g_loss(fake_logits)
        return terms(loss, adversarial=loss)

    return discriminator_objective, generator_objective


# Non-saturating loss, with one-sided label smoothing on the real target.
discriminator_objective, generator_objective = single_logit_objectives(
    lambda real, fake, cfg: dcgan_discriminator_loss(real, fake, cfg.label_smoothing), dcgan_generator_loss
)


FAMILY = Family("dcgan", DCGANOptions, build, discriminator_objective, generator_objective)
