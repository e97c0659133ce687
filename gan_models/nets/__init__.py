"""The model zoo: one file per family, each ending in its `Family` record; `FAMILIES` lists them.

One training loop drives every family through these calls (`options` is `cfg.model`):

    models = build_models(options, image_shape, num_classes)       # dict[str, nn.Module]
    g_side, d_side = split_modules(models)      # "generator" -> G optimiser, every other module -> D's
    latent = sample_latent(options, n, num_classes, generator=rng, device=device)
    images = models["generator"](latent.z)      # (n, C, H, W) in [-1, 1], every family
    logits, features = models["discriminator"](x)  # every family; logits (n,), or (n, K) for ssgan
    d_terms = family(options).discriminator_objective(models, real, labels, latent, options, cfg.train)
    g_terms = family(options).generator_objective(models, real, labels, latent, options, cfg.train)

Each objective returns a dict whose "loss" entry is the scalar to backpropagate and whose other entries
are detached terms to log. `labels` are class indices with -1 for unlabelled examples; families that
need no labels ignore them. Draw a fresh `latent` for each of the D and G steps. Only `forward` is ever
called, so every module can be wrapped in DistributedDataParallel (use broadcast_buffers=False: D runs
on real and fake batches separately). Freeze the side not being stepped
(`gan_models.tricks.set_requires_grad`) so gradients neither accumulate in nor synchronise for it.

Adding a family: a new `<family>.py` with its networks and a `FAMILY = Family(...)`, and one line in
`FAMILIES` below. Weights are initialised from torch's global RNG: seed it before `build_models`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gan_models.nets import dcgan, infogan, mlp, sngan, ssgan, stackedgan
from gan_models.nets.family import Draws, Family, Latent, ModelOptions, unsupported

__all__ = [
    "FAMILIES",
    "GENERATOR_KEYS",
    "Family",
    "Latent",
    "ModelOptions",
    "build_models",
    "discriminator_objective",
    "generator_objective",
    "family",
    "generator_input_dim",
    "parse_options",
    "sample_latent",
    "split_modules",
]

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        ssgan.FAMILY,
        dcgan.FAMILY,
        mlp.FAMILY,
        infogan.FAMILY,
        stackedgan.FAMILY,
        sngan.FAMILY,
    )
}

# Modules stepped by the generator's optimiser; every other module belongs to the discriminator side
# (InfoGAN's Q head and StackedGAN's encoder learn on real data or detached fakes, with D).
GENERATOR_KEYS = ("generator",)


def family(options: ModelOptions | str) -> Family:
    """The family record of `options` (a family's options, or its name)."""
    name = options if isinstance(options, str) else options.name
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"model.name={name!r} is not a known model; known: {', '.join(FAMILIES)}") from None


def parse_options(raw: dict[str, Any]) -> ModelOptions:
    """The options of the family `raw["name"]`, validated (e.g. a packaged model's recorded `model`)."""
    return family(raw["name"]).options.model_validate(raw)


def generator_input_dim(options: ModelOptions, num_classes: int) -> int:
    """Width of `Latent.z` for this family."""
    return family(options).input_dim(options, num_classes)


def sample_latent(
    options: ModelOptions,
    n: int,
    num_classes: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    labels: torch.Tensor | None = None,
) -> Latent:
    """Draw `n` generator inputs for this family on `generator`'s device, then move them to `device`.

    `labels` fixes the categorical code (infogan) or class (stackedgan), e.g. for per-class grids.
    """
    return family(options).sample_latent(options, Draws(n, generator, labels), num_classes).to(device)


def discriminator_objective(models, real, labels, latent, options, train_cfg):  # noqa: ANN001, ANN201
    """The family's discriminator-side objective (see `Family`)."""
    return family(options).discriminator_objective(models, real, labels, latent, options, train_cfg)


def generator_objective(models, real, labels, latent, options, train_cfg):  # noqa: ANN001, ANN201
    """The family's generator objective (see `Family`)."""
    return family(options).generator_objective(models, real, labels, latent, options, train_cfg)


def split_modules(models: dict[str, nn.Module]) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """(generator side, discriminator side) of `models`: what each optimiser steps."""
    g_side = {k: m for k, m in models.items() if k in GENERATOR_KEYS}
    d_side = {k: m for k, m in models.items() if k not in GENERATOR_KEYS}
    return g_side, d_side


def build_models(
    options: ModelOptions, image_shape: tuple[int, ...], num_classes: int
) -> dict[str, nn.Module]:
    """Construct the networks of this family for images of `image_shape` (C, H, W)."""
    shape: Any = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) <= 0:
        raise unsupported(options.name, shape, "(C, H, W) with C in {1, 3}")
    return family(options).build(options, shape, num_classes)


def convolutional(options: ModelOptions, image_shape: tuple[int, ...], num_classes: int) -> bool:
    """Whether the nets `options` builds for these images convolve (built on the meta device: no
    memory, no init); the MLP nets (MNIST's semi-supervised GAN, `mlp`) do not."""
    with torch.device("meta"):
        return has_convolutions(build_models(options, image_shape, num_classes))


def has_convolutions(models: dict[str, nn.Module]) -> bool:
    """Whether any of the built `models` convolves."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for net in models.values() for m in net.modules())
