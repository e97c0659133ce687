"""Fixed-noise sample grids: the same latent every epoch, so grids show progress, not noise."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from gan_models.config import Config
from gan_models.nets import Latent, sample_latent

GRID_SIZE = 64  # 8 x 8


def fixed_latent(cfg: Config, num_classes: int, n: int = GRID_SIZE) -> Latent:
    """A latent batch drawn from a dedicated seed; conditional families get one class per column."""
    generator = torch.Generator().manual_seed(cfg.seed + 2**31)
    classes = num_classes if cfg.model.name == "stackedgan" else cfg.model.info_categories
    labels = torch.arange(n) % classes if cfg.model.name in ("infogan", "stackedgan") else None
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

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    save_image(generate(generator, latent), tmp, nrow=nrow, normalize=True, value_range=(-1, 1))
    os.replace(tmp, path)
    return path
