"""StackedGAN (Huang et al. 2017), compact, as in Atienza's "Advanced Deep Learning with Keras", ch. 6.

A supervised encoder splits image -> label into two stages, E0: image -> feature f1 and E1: f1 -> class
logits. Two generator stages invert them, G1: (one-hot label, z1) -> f1 and G0: (f1, z0) -> image, each
with its own discriminator (D1 on features, D0 on images) and a Q head that recovers its noise
(the "entropy" loss). Conditional losses ask E1(G1(y, z1)) to classify as y and E0(G0(f1, z0)) to
give back f1. The generator input z is [one-hot label, z1, z0], with z1 and z0 of latent_dim each.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gan_models.nets.dcgan import DCGANGenerator, discriminator_trunk
from gan_models.nets.layers import ImageShape, init_dcgan_weights


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
