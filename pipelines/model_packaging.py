"""Trained networks as MLflow models: safetensors weights plus the project's code, no pickles.

A packaged model is a directory holding `spec.json` (what to build: the model config, image shape,
class count, which networks) and `weights.safetensors`. MLflow loads it through this module's
`_load_pyfunc` (the "loader module" workflow), which rebuilds the networks with `gan_models` and loads
the weights, so loading a model never unpickles an object.

- generator: seeds in (int64, one image per seed), uint8 images out (N, H, W, C).
- classifier (ssgan: the K-class discriminator; stackedgan: encoder + classifier): uint8 images in
  (N, H, W, C), class probabilities out (N, K).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gan_models.io import write_text, write_with
from gan_models.nets import ModelOptions, build_models, family, parse_options, sample_latent
from gan_models.training.batches import to_float, to_uint8
from pipelines.quiet import MLFLOW_NOTICES, quiet

SPEC = "spec.json"
WEIGHTS = "weights.safetensors"
# What a packaged model needs at load time (recorded instead of MLflow's slow requirement inference).
REQUIREMENTS = ("torch", "numpy", "safetensors", "pydantic", "pyyaml")


def kinds(options: ModelOptions) -> list[str]:
    """The models a run of this family publishes: its generator, and its classifier if it has one."""
    return ["generator"] + (["classifier"] if family(options).has_classifier else [])


def networks(kind: str, options: ModelOptions) -> tuple[str, ...]:
    """The networks a `kind` ("generator" or "classifier") model of this family is made of."""
    if kind == "generator":
        return ("generator",)
    if kind == "classifier" and family(options).has_classifier:
        return family(options).classifier
    raise ValueError(f"model.name={options.name!r} has no {kind}")


def save_package(
    path: Path,
    kind: str,
    model_cfg: ModelOptions,
    image_shape: tuple[int, int, int],
    num_classes: int,
    nets: dict[str, nn.Module],
) -> Path:
    """Write `spec.json` and `weights.safetensors` for the networks of `kind` into `path`."""
    names = networks(kind, model_cfg)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    spec = {
        "kind": kind,
        "model": model_cfg.model_dump(mode="json"),
        "image_shape": list(image_shape),
        "num_classes": num_classes,
        "networks": list(names),
    }
    write_text(path / SPEC, json.dumps(spec, indent=2))
    tensors = {
        f"{name}.{key}": t.detach().cpu().contiguous()
        for name in names
        for key, t in nets[name].state_dict().items()
    }
    write_with(path / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    return path


class PackagedModel:
    """A packaged generator or classifier, rebuilt from its spec; `predict` is MLflow's pyfunc call."""

    def __init__(self, path: Path) -> None:
        spec = json.loads((Path(path) / SPEC).read_text())
        self.kind: str = spec["kind"]
        self.model_cfg = parse_options(spec["model"])
        self.image_shape = tuple(spec["image_shape"])
        self.num_classes: int = spec["num_classes"]
        built = build_models(self.model_cfg, self.image_shape, self.num_classes)
        weights = load_file(str(Path(path) / WEIGHTS))
        self.nets: dict[str, nn.Module] = {}
        for name in spec["networks"]:
            prefix = f"{name}."
            built[name].load_state_dict(
                {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            )
            self.nets[name] = built[name].eval()

    @torch.no_grad()
    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        if self.kind == "generator":
            return self.generate(np.asarray(model_input, dtype=np.int64).reshape(-1))
        return self.classify(np.asarray(model_input, dtype=np.uint8))

    @torch.no_grad()
    def generate(self, seeds: np.ndarray) -> np.ndarray:
        """One image per seed, uint8 (N, H, W, C); a seed always gives the same image."""
        latents = [
            sample_latent(
                self.model_cfg, 1, self.num_classes, generator=torch.Generator().manual_seed(int(s))
            ).z
            for s in seeds
        ]
        if not latents:
            return np.zeros((0, *self.image_shape[1:], self.image_shape[0]), dtype=np.uint8)
        images = self.nets["generator"](torch.cat(latents))
        return to_uint8(images).permute(0, 2, 3, 1).numpy()

    @torch.no_grad()
    def classify(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K), float32, of uint8 images (N, H, W, C)."""
        x = to_float(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
        classify = family(self.model_cfg).classify
        assert classify is not None  # a classifier package exists only for families that classify
        logits = classify(self.nets, x)
        return logits.softmax(1).numpy().astype(np.float32)


def _load_pyfunc(data_path: str) -> PackagedModel:
    """MLflow's loader-module entry point."""
    return PackagedModel(Path(data_path))


def log_model(
    kind: str,
    model_cfg: ModelOptions,
    image_shape: tuple[int, int, int],
    num_classes: int,
    averaged: Callable[[str], nn.Module],
    workdir: Path,
) -> str:
    """Log the `kind` model to the active MLflow run (signature and input example included); its URI."""
    import mlflow
    from mlflow.models import infer_signature

    names = networks(kind, model_cfg)
    package = save_package(
        workdir / kind, kind, model_cfg, image_shape, num_classes, {n: averaged(n).cpu() for n in names}
    )
    model = PackagedModel(package)
    if kind == "generator":
        example = np.arange(4, dtype=np.int64)
    else:
        channels, height, width = image_shape
        example = np.random.default_rng(0).integers(0, 256, (2, height, width, channels), dtype=np.uint8)
    signature = infer_signature(example, model.predict(example))
    project = Path(__file__).resolve().parents[1]
    with quiet(*MLFLOW_NOTICES):
        info = mlflow.pyfunc.log_model(
            name=kind,
            loader_module=__name__,
            data_path=str(package),
            code_paths=[str(project / "gan_models"), str(project / "pipelines")],
            signature=signature,
            input_example=example,
            pip_requirements=[f"{p}=={version(p)}" for p in REQUIREMENTS],
        )
    return info.model_uri
