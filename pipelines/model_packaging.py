"""Trained networks as MLflow models: safetensors weights plus the project's code, no pickles.

A packaged model is a directory holding `spec.json` (what to build: the model config, image shape,
class count, which networks) and `weights.safetensors`. MLflow loads it through this module's
`_load_pyfunc` (the "loader module" workflow), which rebuilds the networks with `gan_models` and loads
the weights, so loading a model never unpickles an object.

- generator: seeds in (int64, one image per seed), uint8 images out (N, H, W, C).
- classifier (ssgan: the K-class discriminator; stackedgan: encoder + classifier): uint8 images in
  (N, H, W, C), class probabilities out (N, K).

Loading a model through MLflow runs the code it bundles. The project itself therefore loads models
with `load_checked`: it reads the package as data (no bundled code imported, no pickle), checks that it
is one of this module's packages and that its weights hash to what was recorded on the tracking server
when it was logged, and rebuilds it with the installed code. Models named in
`tracking.trusted_models` load through MLflow instead.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gan_models.data.prepared import sha256_file
from gan_models.errors import GanOpsError
from gan_models.io import write_text, write_with
from gan_models.nets import ModelOptions, build_models, family, parse_options, sample_latent
from gan_models.training.batches import to_float, to_uint8
from pipelines.quiet import MLFLOW_NOTICES, environ, quiet

SPEC = "spec.json"
WEIGHTS = "weights.safetensors"
# What a packaged model needs at load time (recorded instead of MLflow's slow requirement inference).
REQUIREMENTS = ("torch", "numpy", "safetensors", "pydantic", "pyyaml")
# On the logged model (the tracking server, not the artifact store): the sha256 of its weights file.
WEIGHTS_TAG = "ganops.weights_sha256"
# Files that unpickle when loaded: never part of a package of ours.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".joblib", ".cloudpickle", ".dill", ".bin")


class UntrustedModelError(GanOpsError):
    """A model that is not one of this project's packages, or whose weights changed after logging."""


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


def check_package(model_dir: Path, recorded_sha256: str | None, what: str) -> Path:
    """The package data directory of the downloaded MLflow model `model_dir`, once it is known to be
    ours: a `python_function` flavour with this module as its loader and nothing else, no pickled file,
    exactly `spec.json` + `weights.safetensors`, weights hashing to `recorded_sha256`."""
    import yaml

    def refuse(why: str) -> UntrustedModelError:
        return UntrustedModelError(
            f"{what}: {why}; refused to load it. If you trust this model, add its URI to "
            "tracking.trusted_models (its bundled code then runs)"
        )

    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise refuse(f"no readable MLmodel file ({e})") from None
    flavors = (mlmodel or {}).get("flavors") or {}
    pyfunc = flavors.get("python_function") or {}
    if set(flavors) != {"python_function"} or pyfunc.get("loader_module") != __name__:
        raise refuse(
            f"not a package of this project (flavours {sorted(flavors)}, loader "
            f"{pyfunc.get('loader_module') or pyfunc.get('python_model')!r}; expected {__name__})"
        )
    pickled = sorted(
        str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.suffix in PICKLE_SUFFIXES
    )
    if pickled:
        raise refuse(f"it carries pickled files ({', '.join(pickled)})")
    data = (model_dir / str(pyfunc.get("data", ""))).resolve()
    if not data.is_relative_to(model_dir.resolve()) or not data.is_dir():
        raise refuse(f"its data path {pyfunc.get('data')!r} is not a folder of the model")
    files = sorted(p.name for p in data.iterdir())
    if files != sorted([SPEC, WEIGHTS]):
        raise refuse(f"its data folder holds {files}, not exactly {SPEC} and {WEIGHTS}")
    if recorded_sha256 is None:
        raise refuse(f"the tracking server records no weights hash for it (tag {WEIGHTS_TAG})")
    actual = sha256_file(data / WEIGHTS)
    if actual != recorded_sha256:
        raise refuse(
            f"its weights changed after logging (sha256 {actual[:12]}..., recorded {recorded_sha256[:12]}...)"
        )
    return data


def logged_model(model_uri: str, tracking_uri: str) -> Any:
    """The logged model behind `models:/...` (a registered version, an alias, or a logged model id),
    looked up in `tracking_uri`'s store (MLflow's own resolution would use the process's global URI)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.registry import logged_model_id

    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    ref = model_uri.removeprefix("models:/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            model_id = logged_model_id(client.get_model_version_by_alias(name, alias))
        elif "/" in ref:
            model_id = logged_model_id(client.get_model_version(*ref.split("/", 1)))
        else:
            model_id = ref
        if model_id is None:
            raise UntrustedModelError(f"model {model_uri}: no logged model behind it; refused to load it")
        return client.get_logged_model(model_id)
    except MlflowException as e:
        raise GanOpsError(f"model {model_uri}: not found in {tracking_uri} ({e.message})") from None


def load_checked(model_uri: str, tracking_uri: str, trusted: list[str] | None = None) -> Any:
    """Load `model_uri` for `predict`: through MLflow if it is in `trusted`; otherwise as data, checked
    (`check_package`) and rebuilt with this project's installed code, so no bundled code runs."""
    import mlflow

    if model_uri in (trusted or []):
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        return mlflow.pyfunc.load_model(model_uri)
    model = logged_model(model_uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="ganops-model-") as tmp:
        with quiet(*MLFLOW_NOTICES), environ(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=model.artifact_location, dst_path=tmp, tracking_uri=tracking_uri
            )
        recorded = model.tags.get(WEIGHTS_TAG)
        return PackagedModel(check_package(Path(local), recorded, f"model {model_uri}"))


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
            tags={WEIGHTS_TAG: sha256_file(package / WEIGHTS)},
        )
    return info.model_uri
