"""Training checkpoints: complete, versioned, written atomically, never holding non-finite values.

A checkpoint is one `torch.save`d dict of plain containers and tensors (loadable with
`weights_only=True`): network and EMA weights, optimizer and scheduler states, step and epoch, every RNG
state, the position in the data order, the resolved config and its hash, and a format version.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gan_models.errors import GanOpsError

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
    bad += [k for k, v in state.get("metrics", {}).items() if isinstance(v, float) and not math.isfinite(v)]
    return bad


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: temporary file, fsync, rename, fsync of the directory.

    An interrupted save leaves the previous checkpoint intact; a state holding non-finite values is
    refused, so a diverged run can never overwrite a good checkpoint.
    """
    bad = non_finite_entries(state)
    if bad:
        raise CheckpointError(f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    """Fail, naming each key, if `config` changes the architecture the checkpoint was trained with."""
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
    if diffs:
        raise CheckpointError(
            f"cannot resume from {source}: the config changes the architecture:\n  " + "\n  ".join(diffs)
        )
