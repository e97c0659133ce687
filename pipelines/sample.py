"""`ganops sample`: images from a registered generator (`NAME@champion`, `NAME/3`), as a PNG grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gan_models.config import Config
from gan_models.io import write_with
from pipelines.registry import Registry, RegistryError, parse_model_ref
from pipelines.tracking import resolve_target


def model_uri(ref: str, registry: Registry) -> str:
    """`models:/...` for `NAME@alias` or `NAME/version`, after checking the model and alias exist."""
    name, alias, version = parse_model_ref(ref)
    if alias is not None:
        if registry.by_alias(name, alias) is None:
            raise RegistryError(f"registered model {name!r} has no alias {alias!r}")
        return f"models:/{name}@{alias}"
    if version is None:
        raise RegistryError(f"model reference {ref!r}: use NAME@ALIAS (e.g. {ref}@champion) or NAME/VERSION")
    registry.get_version(name, version)
    return f"models:/{name}/{version}"


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows, cols, C) image with `pad` pixels between tiles."""
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, nrow)
        out[
            pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w
        ] = image
    return out


def sample(ref: str, n: int, out: Path, cfg: Config, seed: int = 0) -> Path:
    """Write a grid of `n` images (seeds seed .. seed + n - 1) from generator `ref` to `out` (PNG)."""
    from PIL import Image

    from pipelines.model_packaging import load_checked

    target = resolve_target(cfg.tracking)
    uri = model_uri(ref, Registry(target.uri))
    model = load_checked(uri, target.uri, cfg.tracking.trusted_models)
    images = model.predict(np.arange(seed, seed + n, dtype=np.int64))
    picture = grid(np.asarray(images, dtype=np.uint8))
    image = Image.fromarray(picture.squeeze(-1) if picture.shape[-1] == 1 else picture)
    return write_with(out, lambda tmp: image.save(tmp, format="PNG"))
