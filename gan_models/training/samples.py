"""Fixed-noise sample grids: the same latent every epoch, so grids show progress, not noise."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gan_models.config import Config
from gan_models.io import write_with
from gan_models.nets import Latent, family, sample_latent

GRID_SIZE = 64  # 8 x 8


def fixed_latent(cfg: Config, num_classes: int, n: int = GRID_SIZE) -> Latent:
    """A latent batch drawn from a dedicated seed; conditional families get one class per column."""
    generator = torch.Generator().manual_seed(cfg.seed + 2**31)
    grid_classes = family(cfg.model).grid_classes
    labels = None if grid_classes is None else torch.arange(n) % grid_classes(cfg.model, num_classes)
    return sample_latent(cfg.model, n, num_classes, generator=generator, labels=labels)


@torch.no_grad()
def generate(generator: nn.Module, latent: Latent) -> torch.Tensor:
    """Images in [-1, 1] from `generator` in eval mode (batch norm uses its running statistics)."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    try:
        return generator(latent.z.to(device)).float().cpu()
    finally:
        generator.train(was_training)


def save_grid(generator: nn.Module, latent: Latent, path: Path, nrow: int = 8) -> Path:
    """Write a PNG grid of `generator(latent)` to `path` (via a temporary file, then rename)."""
    from torchvision.utils import save_image

    images = generate(generator, latent)
    return write_with(
        path,
        lambda tmp: save_image(images, tmp, nrow=nrow, normalize=True, value_range=(-1, 1), format="png"),
    )
