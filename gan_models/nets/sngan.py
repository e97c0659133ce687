"""SNGAN (Miyato et al. 2018, "Spectral Normalization for GANs"): the paper's standard CNN, hinge loss.

Every layer of the discriminator is spectrally normalised (its weight divided by its largest singular
value, estimated by one power iteration per forward pass), which bounds D's Lipschitz constant without
a gradient penalty; the losses are the hinge loss of the paper's best runs. The networks are Table 3's
"standard CNN", one stage per doubling of the side so 28x28, 32x32 and 64x64 read the same:

  G (ngf = g_features, n = doublings: 28: 2, 32: 3, 64: 4):
    z -> (ngf*2^n) x b x b -> ... stride-2 4x4 transposed convs, BN, ReLU ... -> ngf x side x side
      -> 3x3 conv to nc, tanh                                        (32x32, ngf 64: 512-256-128-64)
  D (ndf = d_features), every conv and the linear layer spectrally normalised, LeakyReLU 0.1:
    per stage: 3x3 conv (w) then stride-2 4x4 conv (w), w = ndf, 2 ndf, ...; then 3x3 conv
      (ndf*2^n) and a linear logit                                   (32x32, ndf 64: 64-128-256-512)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from gan_models.losses import hinge_discriminator_loss, hinge_generator_loss
from gan_models.nets.dcgan import BASE_SIDE, check_conv_shape, num_doublings, single_logit_objectives
from gan_models.nets.family import Family, ModelOptions, Models
from gan_models.nets.layers import ImageShape

if TYPE_CHECKING:
    pass

LEAK = 0.1  # the paper's LeakyReLU slope


def _xavier(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases (Mimicry's SNGAN init), for `Module.apply`."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SNGANGenerator(nn.Module):
    """Dense to a b x b map, stride-2 transposed convs with BN + ReLU, a 3x3 conv to the image, tanh."""

    def __init__(self, latent_dim: int, image_shape: ImageShape, g_features: int) -> None:
        super().__init__()
        nc, side, _ = image_shape
        base, n = BASE_SIDE[side], num_doublings(side)
        width = g_features * 2**n
        self.input_dim = latent_dim
        self.image_shape = image_shape
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, width * base * base),
            nn.Unflatten(1, (width, base, base)),  # (ngf*2^n) x b x b
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(n):
            # (w) x s x s -> (w/2) x 2s x 2s
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.Conv2d(width, nc, 3, 1, 1), nn.Tanh()]  # nc x side x side
        self.net = nn.Sequential(*layers)
        self.apply(_xavier)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class SNGANDiscriminator(nn.Module):
    """Spectrally normalised conv stages, then one linear logit; returns (logit (n,), features)."""

    def __init__(self, image_shape: ImageShape, d_features: int) -> None:
        super().__init__()
        nc, side, _ = image_shape
        base, n = BASE_SIDE[side], num_doublings(side)
        self.image_shape = image_shape

        def conv(cin: int, cout: int, k: int, stride: int) -> list[nn.Module]:
            layer = nn.Conv2d(cin, cout, k, stride, 1)
            _xavier(layer)
            return [spectral_norm(layer), nn.LeakyReLU(LEAK, True)]

        layers: list[nn.Module] = []
        cin, width = nc, d_features
        for _ in range(n):
            # (cin) x s x s -> (w) x s x s -> (w) x s/2 x s/2
            layers += conv(cin, width, 3, 1) + conv(width, width, 4, 2)
            cin, width = width, width * 2
        layers += conv(cin, width, 3, 1)  # (ndf*2^n) x b x b
        layers.append(nn.Flatten())
        self.trunk = nn.Sequential(*layers)
        self.feature_dim = width * base * base
        head = nn.Linear(self.feature_dim, 1)
        _xavier(head)
        self.head = spectral_norm(head)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        return self.head(features).squeeze(1), features


# The family.


class SNGANOptions(ModelOptions):
    """SNGAN's options: the shared ones (no minibatch discrimination: it is not part of the model)."""

    name: Literal["sngan"] = "sngan"
    latent_dim: int = Field(128, gt=0, description="the paper's z dimension")

    @field_validator("minibatch_discrimination")
    @classmethod
    def _no_minibatch(cls, on: bool) -> bool:
        if on:
            raise ValueError("not supported by model.name='sngan' (spectral normalisation takes its place)")
        return on


def build(options: SNGANOptions, image_shape: ImageShape, num_classes: int) -> Models:
    check_conv_shape(options.name, image_shape)
    return {
        "generator": SNGANGenerator(options.latent_dim, image_shape, options.g_features),
        "discriminator": SNGANDiscriminator(image_shape, options.d_features),
    }


# Hinge loss: D's margin terms ignore label smoothing (a margin already caps how sure D gets).
discriminator_objective, generator_objective = single_logit_objectives(
    lambda real, fake, cfg: hinge_discriminator_loss(real, fake), hinge_generator_loss
)


FAMILY = Family("sngan", SNGANOptions, build, discriminator_objective, generator_objective)
