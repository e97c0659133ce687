"""What a model family is: its options, networks, latent and objectives, in one record.

Each `gan_models/nets/<family>.py` defines its networks and one `Family`; `gan_models.nets.FAMILIES`
lists them, and everything else (the config's `model` union, the training loop, sample grids, model
packaging) asks that registry instead of testing a family's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gan_models.errors import ConfigError
from gan_models.nets.layers import ImageShape

if TYPE_CHECKING:
    from gan_models.config import TrainConfig

Models = dict[str, nn.Module]
Terms = dict[str, Tensor]  # "loss": the scalar to backpropagate; every other entry detached, for logging


class ModelOptions(BaseModel):
    """Options every family takes; a family's own options subclass this with `name: Literal[...]`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    latent_dim: int = Field(100, gt=0)
    g_features: int = Field(64, gt=0, description="generator width (channels of its widest conv / 8)")
    d_features: int = Field(64, gt=0, description="discriminator width (channels of its first conv)")
    minibatch_discrimination: bool = Field(
        False, description="a minibatch-discrimination layer before D's output"
    )
    mbd_kernels: int = Field(50, gt=0)
    mbd_kernel_dim: int = Field(5, gt=0)

    @property
    def minibatch(self) -> tuple[int, int] | None:
        """(kernels, kernel dim) of minibatch discrimination, or None when it is off."""
        return (self.mbd_kernels, self.mbd_kernel_dim) if self.minibatch_discrimination else None


@dataclass(frozen=True)
class Latent:
    """One batch of generator inputs, with the codes a family's losses need to score them."""

    z: Tensor  # (n, input_dim): the generator's whole input
    labels: Tensor | None = None  # (n,) int64: InfoGAN's categorical code, StackedGAN's class
    continuous: Tensor | None = None  # (n, k): InfoGAN's continuous codes in [-1, 1]

    def to(self, device: torch.device | str | None) -> Latent:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Latent(self.z.to(device), move(self.labels), move(self.continuous))


class Draws:
    """Random draws for one latent batch, on the RNG's own device (the CPU without one).

    Drawing on the RNG's device and moving afterwards means a CPU generator gives the same numbers
    whatever the training device. `labels`, when given, fixes the class codes (per-class sample grids).
    """

    def __init__(self, n: int, generator: torch.Generator | None, labels: Tensor | None = None) -> None:
        self.n = n
        self.generator = generator
        self.device = generator.device if generator is not None else torch.device("cpu")
        self.fixed_labels = labels

    def normal(self, width: int) -> Tensor:
        return torch.randn(self.n, width, generator=self.generator, device=self.device)

    def uniform(self, width: int, low: float = -1.0, high: float = 1.0) -> Tensor:
        u = torch.rand(self.n, width, generator=self.generator, device=self.device)
        return (high - low) * u + low

    def labels(self, k: int) -> Tensor:
        if self.fixed_labels is None:
            return torch.randint(0, k, (self.n,), generator=self.generator, device=self.device)
        labels = self.fixed_labels
        if labels.shape != (self.n,) or labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"labels must be {self.n} indices in [0, {k}), got shape {tuple(labels.shape)}")
        return labels.to(self.device, torch.int64)


def gaussian_latent(options: Any, draws: Draws, num_classes: int) -> Latent:
    """z ~ N(0, I) of width `latent_dim`: the latent of every unconditional family."""
    return Latent(draws.normal(options.latent_dim))


def latent_width(options: Any, num_classes: int) -> int:
    return int(options.latent_dim)


# (models, real images in [-1, 1], labels with -1 for unlabelled, latent, options, train config) -> terms
Objective = Callable[[Models, Tensor, Tensor, Latent, Any, "TrainConfig"], Terms]


class TrainingData(Protocol):
    """The train split as the loop holds it (`gan_models.training.batches.DeviceData`)."""

    images: Tensor  # uint8 (N, C, H, W) in [0, 255]
    labels: Tensor  # int64 (N,), -1 where the label may not be used
    labeled: Tensor  # int64 indices of the usable labels

    def real(self, indices: Tensor) -> Tensor:
        """Images `indices` as floats in [-1, 1] on the data's device."""
        ...


# (models, train split, options, train config, CPU generator) -> None: sets weights from data before
# the first step (never on resume). It must give the same weights on every rank: draw only from the
# generator, which every rank seeds alike.
Initializer = Callable[[Models, TrainingData, Any, "TrainConfig", torch.Generator], None]


@dataclass(frozen=True)
class Family:
    """One model family. `discriminator_objective` trains every network but "generator" (which runs
    under no_grad there); `generator_objective` trains the generator through the frozen rest."""

    name: str
    options: type[ModelOptions]
    build: Callable[[Any, ImageShape, int], Models]  # (options, (C, H, W), classes) -> networks
    discriminator_objective: Objective
    generator_objective: Objective
    sample_latent: Callable[[Any, Draws, int], Latent] = gaussian_latent
    input_dim: Callable[[Any, int], int] = latent_width  # width of Latent.z
    # The networks that make up its classifier, in the order `classify` applies them; () for none.
    classifier: tuple[str, ...] = ()
    classify: Callable[[Models, Tensor], Tensor] | None = None  # (networks, images) -> logits (n, K)
    # Whether each batch must carry labelled examples (the semi-supervised families).
    needs_labeled_batch: bool = False
    # Classes of a conditional family's code (sample grids show one per column); None: unconditional.
    grid_classes: Callable[[Any, int], int] | None = None
    # Data-dependent initialisation or pre-training, run once before the first step; None: none.
    initialize: Initializer | None = None
    # Whether the generator step gets its own, independent unlabelled batch (improved-gan's
    # `trainx_unl2`) instead of the discriminator step's batch: (options, train config) -> bool.
    independent_generator_batch: Callable[[Any, TrainConfig], bool] | None = None

    @property
    def has_classifier(self) -> bool:
        return bool(self.classifier)


def terms(loss: Tensor, **parts: Tensor) -> Terms:
    """An objective's result: the loss to backpropagate and detached parts to log."""
    return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}


def unsupported(name: str, image_shape: tuple[int, ...], supported: str) -> ConfigError:
    return ConfigError(
        f"model.name={name!r} does not support image shape {tuple(image_shape)} (C, H, W); supported: {supported}"
    )


def require_classes(name: str, num_classes: int) -> None:
    if num_classes < 2:
        raise ConfigError(
            f"model.name={name!r} needs a labelled dataset with >= 2 classes, got {num_classes}"
        )
