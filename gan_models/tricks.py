"""Training tricks: historical averaging, EMA of weights, gradient clipping, freezing a side.

`HistoricalAveraging` and `EMA` hold tensors, not modules, and expose `state_dict`/`load_state_dict`
so a checkpoint can carry them. Pass them the unwrapped module (`ddp.module`) so names match.
`MinibatchDiscrimination` (Salimans et al. 2016) lives in `gan_models.nets.layers` and is re-exported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from gan_models.nets.layers import MinibatchDiscrimination, is_fixed

__all__ = [
    "EMA",
    "HistoricalAveraging",
    "MinibatchDiscrimination",
    "clip_gradients",
    "set_requires_grad",
    "sigmoid_rampup",
]


class HistoricalAveraging:
    """Salimans et al. 2016, section 3.3: penalty weight * sum ||theta - mean of past thetas||^2.

    The history starts with the parameters at construction. Per step: add `penalty(model)` to the
    loss, step the optimiser, then `update(model)` to fold the new parameters into the mean.
    """

    def __init__(self, model: nn.Module, weight: float) -> None:
        self.weight = weight
        self.count = 1
        self.average = {name: p.detach().clone() for name, p in model.named_parameters()}

    def penalty(self, model: nn.Module) -> Tensor:
        """weight * sum over parameters of ||theta - average||^2, differentiable in theta."""
        terms = [(p - self.average[name]).square().sum() for name, p in model.named_parameters()]
        return self.weight * torch.stack(terms).sum()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current parameters into the running mean (a plain average over all steps)."""
        self.count += 1
        for name, p in model.named_parameters():
            self.average[name].add_(p.detach() - self.average[name], alpha=1.0 / self.count)

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "count": self.count, "average": dict(self.average)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight, self.count = float(state["weight"]), int(state["count"])
        for name, value in state["average"].items():
            self.average[name].copy_(value)


class EMA:
    """Exponential moving average of a module's parameters and floating-point buffers.

    shadow <- decay * shadow + (1 - decay) * current, with the same two operations every time, so a run
    is bit-reproducible. Integer buffers (BatchNorm's step counter) are copied, not averaged. With
    `warmup`, update t uses min(decay, (1 + t) / (10 + t)) (as TensorFlow's ExponentialMovingAverage
    with num_updates), so early averages are not dominated by the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = {name: t.detach().clone() for name, t in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards the current weights of `model`."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        self.updates += 1
        for name, current in model.state_dict().items():
            shadow = self.shadow[name]
            if shadow.is_floating_point():
                shadow.mul_(decay).add_(current.detach(), alpha=1.0 - decay)
            else:
                shadow.copy_(current)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (e.g. a copy of the generator used for sampling)."""
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "updates": self.updates,
            "shadow": dict(self.shadow),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.warmup, self.updates = bool(state.get("warmup", False)), int(state.get("updates", 0))
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float | None) -> Tensor | None:
    """Clip the global gradient norm to `max_norm` (train.grad_clip); returns the pre-clip norm, or None."""
    if max_norm is None:
        return None
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)


def set_requires_grad(modules: Iterable[nn.Module], flag: bool) -> None:
    """Freeze (False) or unfreeze (True) every parameter of `modules`, e.g. D during the G step.

    Parameters kept out of training for good (`gan_models.nets.layers.fix`) stay frozen.
    """
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(flag and not is_fixed(p))


def sigmoid_rampup(step: int, length: int) -> float:
    """exp(-5 (1 - t)^2) for t = step / length in [0, 1), then 1 (Laine & Aila 2017's ramp-up): a weight
    that starts near 0 and reaches 1 smoothly; `length` 0 is no ramp."""
    if length <= 0 or step >= length:
        return 1.0
    t = 1.0 - step / length
    return math.exp(-5.0 * t * t)
