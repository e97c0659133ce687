"""Training checkpoints: complete, versioned, written atomically, never holding non-finite values.

A checkpoint is one `torch.save`d dict of plain containers and tensors (loadable with
`weights_only=True`). `TrainState.state_dict` is its only writer and `TrainState.load_state_dict` its
only reader, and every field written is read back: network, EMA and historical-average weights, both
optimizers, step, epoch and history, the resolved config, data shape and class count (which a resume
checks), the launcher's `extra` state, and a format version. Nothing else is needed to continue exactly:
checkpoints are taken at epoch ends, and each epoch's data order, noise, dropout and learning rate are
functions of (config, rank, epoch) alone (`gan_models.training.loop`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gan_models.errors import GanOpsError
from gan_models.io import atomic_write
from gan_models.tricks import EMA, HistoricalAveraging

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Config sections whose change makes old weights meaningless for the new run.
ARCHITECTURE_KEYS = ("model",)


class CheckpointError(GanOpsError):
    """A checkpoint cannot be written or does not fit the run that wants to resume from it."""


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def non_finite_entries(state: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors (and floats) in `state` that hold NaN or infinity."""
    bad = [name for name, t in _tensors(state) if t.is_floating_point() and not torch.isfinite(t).all()]
    last = state["history"][-1] if state.get("history") else {}
    bad += [f"history.{k}" for k, v in last.items() if isinstance(v, float) and not math.isfinite(v)]
    return bad


def previous_of(path: Path) -> Path:
    """Where the checkpoint `path` replaced is kept: `checkpoint.prev.pt` beside `checkpoint.pt`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = True) -> None:
    """Write `state` to `path` atomically: temporary file, fsync, rename, fsync of the directory.

    An interrupted save leaves the previous checkpoint intact, and the one it replaces is kept as
    `previous_of(path)` (a checkpoint found corrupt later falls back to it: `resume_source`). A state
    holding non-finite values is refused, so a diverged run never overwrites a good checkpoint; a full
    disk (or any write error) is one `CheckpointError` naming the path, the old files untouched.
    """
    path = Path(path)
    bad = non_finite_entries(state)
    if bad:
        raise CheckpointError(f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}")
    try:
        if keep_previous and path.exists():  # a link (no copy of the bytes), renamed into place: atomic too
            keep = path.with_name(f".{previous_of(path).name}.tmp-{os.getpid()}")
            keep.unlink(missing_ok=True)
            os.link(path, keep)
            os.replace(keep, previous_of(path))
            keep.unlink(missing_ok=True)  # rename leaves it where both already name the same file
        with atomic_write(path) as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}") from None


def resume_source(path: Path) -> Path | None:
    """The checkpoint a run in `path`'s directory resumes from: `path`, or where it is unreadable
    (truncated, corrupt) and the previous one is sound, the previous one, with a warning naming both
    (the unreadable file is kept as `<name>.corrupt`, so the next save does not rotate it into the
    previous one's place); None where there is neither. A corrupt checkpoint with no sound previous
    one is its error."""
    path = Path(path)
    previous = previous_of(path)
    if not path.exists():
        return previous if previous.exists() else None
    try:
        load_checkpoint(path)
        return path
    except CheckpointError as latest:
        if not previous.exists():
            raise
        try:
            state = load_checkpoint(previous)
        except CheckpointError:
            raise latest from None
        kept = path.with_name(f"{path.name}.corrupt")
        os.replace(path, kept)
        logger.warning(
            "%s; resuming from the previous checkpoint %s (epoch %s) instead (the unreadable one is kept "
            "as %s)",
            latest,
            previous,
            state["epoch"],
            kept,
        )
        return previous


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({e})") from e
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('format_version')}, this code reads {FORMAT_VERSION}"
        )
    return state


def check_compatible(state: dict[str, Any], config: dict[str, Any], source: str) -> None:
    """Fail, naming each key, if `config` changes the architecture the checkpoint was trained with, its
    classes or image shape, or turns a trick with state of its own (EMA, historical averaging) on or off."""
    diffs = []
    for section in ARCHITECTURE_KEYS:
        old, new = state["config"].get(section, {}), config.get(section, {})
        diffs += [
            f"{section}.{k}: checkpoint {old.get(k)!r}, config {new.get(k)!r}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        ]
    if state.get("data_shape") is not None and config.get("_data_shape") not in (None, state["data_shape"]):
        diffs.append(f"data shape: checkpoint {state['data_shape']}, dataset {config['_data_shape']}")
    if state.get("num_classes") is not None and config.get("_num_classes") not in (
        None,
        state["num_classes"],
    ):
        diffs.append(f"classes: checkpoint {state['num_classes']}, dataset {config['_num_classes']}")
    if diffs:
        raise CheckpointError(
            f"cannot resume from {source}: the config changes the architecture:\n  " + "\n  ".join(diffs)
        )
    train = config.get("train", {})
    for key, saved in (("ema_decay", state["ema"]), ("historical_averaging", state["historical_averaging"])):
        if key in train and (train[key] > 0) != bool(saved):
            on, off = ("on", "off") if train[key] > 0 else ("off", "on")
            raise CheckpointError(
                f"cannot resume from {source}: train.{key} is {on} here but was {off} when it was written; "
                "use the checkpoint's value or a new run name"
            )


@dataclass(frozen=True)
class ResumeInfo:
    """What a launcher needs to know of a run's latest checkpoint before it starts anything."""

    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None  # set when the run stopped early: it is finished

    def finished(self, epochs: int) -> bool:
        return self.epoch >= epochs or self.stop_reason is not None


def read_resume_info(path: Path) -> ResumeInfo:
    """The epochs done, the launcher's extra state and the stop reason of the checkpoint at `path`."""
    if not Path(path).exists():
        return ResumeInfo()
    state = load_checkpoint(path)
    return ResumeInfo(int(state["epoch"]), dict(state.get("extra", {})), state.get("stop_reason"))


@dataclass
class TrainState:
    """Everything a training run carries from one epoch to the next: what a checkpoint holds."""

    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]  # "g" and "d"
    ema: dict[str, EMA] = field(default_factory=dict)
    averaging: dict[str, HistoricalAveraging] = field(default_factory=dict)
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed (per rank)
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # {"epoch", "metric", "value"} of the best validation score so far
    evals_since_best: int = 0  # validations without a better score (for train.patience)
    stop_reason: str | None = None  # why training stopped before train.epochs (early stop)

    def state_dict(
        self, config: dict[str, Any], data_shape: tuple[int, ...], num_classes: int, extra: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config": config,
            "data_shape": list(data_shape),
            "num_classes": num_classes,
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "models": {n: m.state_dict() for n, m in self.models.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "ema": {n: e.state_dict() for n, e in self.ema.items()},
            "historical_averaging": {n: h.state_dict() for n, h in self.averaging.items()},
            "best": self.best,
            "evals_since_best": self.evals_since_best,
            "stop_reason": self.stop_reason,
            "extra": extra,
        }

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Restore from `state`, which `check_compatible` accepted for this config."""
        for name, m in self.models.items():
            m.load_state_dict(state["models"][name])
        for name, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][name])
        for name, e in self.ema.items():
            e.load_state_dict(state["ema"][name])
        for name, h in self.averaging.items():
            h.load_state_dict(state["historical_averaging"][name])
        self.epoch, self.step, self.history = int(state["epoch"]), int(state["step"]), list(state["history"])
        self.best, self.evals_since_best = state.get("best"), int(state.get("evals_since_best", 0))
        self.stop_reason = state.get("stop_reason")
