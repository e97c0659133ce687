"""The model zoo: SSGAN, DCGAN, MLP GAN, InfoGAN, StackedGAN, behind one interface.

One training loop drives every family through these calls (`cfg` is the whole `Config`):

    models = build_models(cfg.model, image_shape, num_classes)       # dict[str, nn.Module]
    g_side, d_side = split_modules(models)      # "generator" -> G optimiser, every other module -> D's
    latent = sample_latent(cfg.model, n, num_classes, generator=rng, device=device)
    images = models["generator"](latent.z)      # (n, C, H, W) in [-1, 1], every family
    logits, features = models["discriminator"](x)  # every family; logits (n,), or (n, K) for ssgan
    d_terms = discriminator_objective(models, real, labels, latent, cfg.model, cfg.train)
    g_terms = generator_objective(models, real, labels, latent, cfg.model, cfg.train)

The objectives live in `gan_models.losses`; each returns a dict whose "loss" entry is the scalar to
backpropagate and whose other entries are detached terms to log. `labels` are class indices with -1
for unlabelled examples; families that need no labels ignore them. Draw a fresh `latent` for each of
the D and G steps. Only `forward` is ever called, so every module can be wrapped in
DistributedDataParallel (use broadcast_buffers=False: D runs on real and fake batches separately).
Freeze the side not being stepped (`gan_models.tricks.set_requires_grad`) so gradients neither
accumulate in nor synchronise for it.

Keys per family: every family has "generator" and "discriminator"; infogan adds "q_head" (on D's
features); stackedgan adds "feature_discriminator" (D1), "q_head" (Q0 on D0's features, recovers z0),
"feature_q_head" (Q1, recovers z1), "encoder" (E0: image -> f1) and "classifier" (E1: f1 -> logits).

Supported image shapes (C in {1, 3}): ssgan 28x28 (MLP nets) and 32x32, 64x64 (conv); dcgan, infogan
and stackedgan 28x28, 32x32, 64x64; mlp-gan any shape up to 3x64x64. Weights are initialised from
torch's global RNG: seed it before `build_models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_models.errors import ConfigError
from gan_models.nets.dcgan import SUPPORTED_SIDES, DCGANDiscriminator, DCGANGenerator
from gan_models.nets.infogan import QHead
from gan_models.nets.layers import ImageShape, image_numel
from gan_models.nets.mlp import MLPDiscriminator, MLPGenerator
from gan_models.nets.ssgan import SSGANConvDiscriminator, SSGANMLPDiscriminator, SSGANMLPGenerator
from gan_models.nets.stackedgan import (
    FeatureClassifier,
    FeatureDiscriminator,
    FeatureEncoder,
    StackedGenerator,
)

if TYPE_CHECKING:
    from gan_models.config import ModelConfig

__all__ = [
    "GENERATOR_KEYS",
    "Latent",
    "build_models",
    "generator_input_dim",
    "sample_latent",
    "split_modules",
]

# Modules stepped by the generator's optimiser; every other module belongs to the discriminator side
# (InfoGAN's Q head and StackedGAN's encoder learn on real data or detached fakes, with D).
GENERATOR_KEYS = ("generator",)
MLP_MAX_NUMEL = 3 * 64 * 64


@dataclass(frozen=True)
class Latent:
    """One batch of generator inputs, with the codes a family's losses need to score them."""

    z: Tensor  # (n, generator_input_dim): the generator's whole input
    labels: Tensor | None = None  # (n,) int64: InfoGAN's categorical code, StackedGAN's class
    continuous: Tensor | None = None  # (n, info_continuous): InfoGAN's continuous codes in [-1, 1]


def generator_input_dim(cfg: ModelConfig, num_classes: int) -> int:
    """Width of `Latent.z` for `cfg.name`."""
    if cfg.name == "infogan":
        return cfg.latent_dim + cfg.info_categories + cfg.info_continuous
    if cfg.name == "stackedgan":
        return num_classes + 2 * cfg.latent_dim
    return cfg.latent_dim


def sample_latent(
    cfg: ModelConfig,
    n: int,
    num_classes: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    labels: Tensor | None = None,
) -> Latent:
    """Draw `n` generator inputs for `cfg.name`: N(0, 1) noise, uniform labels, U(-1, 1) InfoGAN codes.

    Draws happen on `generator`'s device (the CPU without one) and are then moved to `device`, so a
    CPU generator gives the same numbers whatever the training device. `labels` fixes the categorical
    code (infogan) or class (stackedgan), e.g. for per-class sample grids.
    """
    source = generator.device if generator is not None else torch.device("cpu")

    def randn(*size: int) -> Tensor:
        return torch.randn(*size, generator=generator, device=source)

    def draw_labels(k: int) -> Tensor:
        if labels is None:
            return torch.randint(0, k, (n,), generator=generator, device=source)
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"labels must be {n} indices in [0, {k}), got shape {tuple(labels.shape)}")
        return labels.to(source, torch.int64)

    if cfg.name == "infogan":
        noise, codes = randn(n, cfg.latent_dim), draw_labels(cfg.info_categories)
        continuous = 2 * torch.rand(n, cfg.info_continuous, generator=generator, device=source) - 1
        z = torch.cat([noise, F.one_hot(codes, cfg.info_categories).float(), continuous], dim=1)
        return Latent(z.to(device), codes.to(device), continuous.to(device))
    if cfg.name == "stackedgan":
        classes = draw_labels(num_classes)
        z = torch.cat([F.one_hot(classes, num_classes).float(), randn(n, 2 * cfg.latent_dim)], dim=1)
        return Latent(z.to(device), classes.to(device))
    return Latent(randn(n, cfg.latent_dim).to(device))


def split_modules(models: dict[str, nn.Module]) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """(generator side, discriminator side) of `models`: what each optimiser steps."""
    g_side = {k: m for k, m in models.items() if k in GENERATOR_KEYS}
    d_side = {k: m for k, m in models.items() if k not in GENERATOR_KEYS}
    return g_side, d_side


def _unsupported(cfg: ModelConfig, image_shape: ImageShape, supported: str) -> ConfigError:
    return ConfigError(
        f"model.name={cfg.name!r} does not support image shape {tuple(image_shape)} (C, H, W); "
        f"supported: {supported}"
    )


def build_models(
    cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int
) -> dict[str, nn.Module]:
    """Construct the networks of `cfg.name` for images of `image_shape` (C, H, W); see the module doc."""
    shape: ImageShape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) <= 0:
        raise _unsupported(cfg, shape, "(C, H, W) with C in {1, 3}")
    nc, h, w = shape
    minibatch = (cfg.mbd_kernels, cfg.mbd_kernel_dim) if cfg.minibatch_discrimination else None
    square_sides = ", ".join(str(s) for s in SUPPORTED_SIDES)
    conv_ok = h == w and h in SUPPORTED_SIDES

    if cfg.name == "mlp-gan":
        if image_numel(shape) > MLP_MAX_NUMEL:
            raise _unsupported(cfg, shape, f"any shape with at most {MLP_MAX_NUMEL} values")
        return {
            "generator": MLPGenerator(cfg.latent_dim, shape, cfg.g_features),
            "discriminator": MLPDiscriminator(shape, cfg.d_features, minibatch),
        }

    if cfg.name == "ssgan":
        if num_classes < 2:
            raise ConfigError(
                f"model.name='ssgan' needs a labelled dataset with >= 2 classes, got {num_classes}"
            )
        if (h, w) == (28, 28):
            return {
                "generator": SSGANMLPGenerator(cfg.latent_dim, shape),
                "discriminator": SSGANMLPDiscriminator(shape, num_classes, minibatch),
            }
        if h == w and h in (32, 64):
            return {
                "generator": DCGANGenerator(cfg.latent_dim, shape, cfg.g_features),
                "discriminator": SSGANConvDiscriminator(
                    shape, num_classes, cfg.d_features, cfg.d_input_dropout, cfg.d_dropout, minibatch
                ),
            }
        raise _unsupported(cfg, shape, "square sides 28 (MLP nets), 32, 64")

    if not conv_ok:
        raise _unsupported(cfg, shape, f"square sides {square_sides}")

    if cfg.name == "dcgan":
        return {
            "generator": DCGANGenerator(cfg.latent_dim, shape, cfg.g_features),
            "discriminator": DCGANDiscriminator(shape, cfg.d_features, minibatch),
        }

    if cfg.name == "infogan":
        discriminator = DCGANDiscriminator(shape, cfg.d_features, minibatch)
        return {
            "generator": DCGANGenerator(generator_input_dim(cfg, num_classes), shape, cfg.g_features),
            "discriminator": discriminator,
            "q_head": QHead(
                discriminator.feature_dim,
                cfg.info_categories,
                cfg.info_continuous,
                learn_std=cfg.info_learn_std,
            ),
        }

    if cfg.name == "stackedgan":
        if num_classes < 2:
            raise ConfigError(
                f"model.name='stackedgan' needs a labelled dataset with >= 2 classes, got {num_classes}"
            )
        fdim, hidden = cfg.stacked_feature_dim, 8 * cfg.d_features
        discriminator = DCGANDiscriminator(shape, cfg.d_features, minibatch)
        feature_discriminator = FeatureDiscriminator(fdim, hidden)
        return {
            "generator": StackedGenerator(num_classes, cfg.latent_dim, shape, cfg.g_features, fdim),
            "discriminator": discriminator,
            "feature_discriminator": feature_discriminator,
            "q_head": QHead(discriminator.feature_dim, 0, cfg.latent_dim, learn_std=False),
            "feature_q_head": QHead(feature_discriminator.feature_dim, 0, cfg.latent_dim, learn_std=False),
            "encoder": FeatureEncoder(shape, cfg.d_features, fdim),
            "classifier": FeatureClassifier(fdim, num_classes),
        }

    raise ConfigError(f"model.name={cfg.name!r} is not a known model")
