"""Checkpoints on a bad day: a corrupt latest one, a save killed by SIGKILL, a full disk."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gan_models.training import checkpoint as checkpoint_module
from gan_models.training.checkpoint import CheckpointError, load_checkpoint, previous_of, save_checkpoint
from gan_models.training.loop import CHECKPOINT_NAME, train
from pipelines.train import train_local
from tests.pipelines.test_tracking import local_config as tracked_config
from tests.training.conftest import tiny_config, tiny_dataset


def local_config(tmp_path: Path, *overrides: str):  # noqa: ANN201
    """The tiny untracked DCGAN run of the tracking tests' layout."""
    return tracked_config(
        tmp_path, tmp_path, "unused", "model.name=dcgan", "tracking.enabled=false", *overrides
    )


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_local(local_config(tmp_path, "train.epochs=2"), "r")
    latest = tmp_path / "runs" / "r" / CHECKPOINT_NAME
    assert load_checkpoint(previous_of(latest))["epoch"] == 1  # the one epoch 2 replaced
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated (a full disk, a bad copy)

    with caplog.at_level(logging.WARNING):
        summary = train_local(local_config(tmp_path, "train.epochs=3"), "r")
    assert "3 epochs" in summary
    assert f"resuming from the previous checkpoint {previous_of(latest)} (epoch 1)" in caplog.text
    assert str(latest) in caplog.text  # the unreadable one is named, and kept for a look
    assert (latest.parent / f"{latest.name}.corrupt").read_bytes() and load_checkpoint(latest)["epoch"] == 3


_SAVE_A_BIG_ONE = """
import sys, torch
from gan_models.training.checkpoint import load_checkpoint, save_checkpoint
state = load_checkpoint(sys.argv[1])
state["extra"] = {"padding": torch.zeros(100_000_000)}  # 400 MB: the save takes a while
state.pop("format_version")
save_checkpoint(sys.argv[1], state)
"""


def test_a_save_killed_by_sigkill_keeps_the_checkpoint_and_the_next_start_removes_its_leftovers(
    tmp_path: Path,
) -> None:
    ds = tiny_dataset(tmp_path / "data")
    out = tmp_path / "run"
    train(tiny_config("train.epochs=1"), ds, out_dir=out)
    latest = out / CHECKPOINT_NAME
    saver = subprocess.Popen([sys.executable, "-c", _SAVE_A_BIG_ONE, str(latest)])
    temporary = out / f".{CHECKPOINT_NAME}.tmp-{saver.pid}"
    deadline = time.monotonic() + 120
    while not (temporary.exists() and temporary.stat().st_size > 0):
        assert saver.poll() is None and time.monotonic() < deadline, (
            "the save ended before it could be killed"
        )
        time.sleep(0.001)
    os.kill(saver.pid, signal.SIGKILL)  # mid-write: no exception handler, no cleanup runs
    saver.wait()
    assert temporary.exists() and load_checkpoint(latest)["epoch"] == 1  # the old checkpoint is intact

    resumed = train(tiny_config("train.epochs=2"), ds, out_dir=out, resume=latest)
    assert resumed.epoch == 2 and not list(out.glob(".*.tmp-*"))


def test_a_full_disk_is_one_error_naming_the_checkpoint_and_the_old_one_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"epoch": 1, "history": [], "weights": torch.ones(3)})

    def full_disk(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=rf"cannot write checkpoint {path}: No space left on device"):
        save_checkpoint(path, {"epoch": 2, "history": [], "weights": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            path.name,
            previous_of(path).name,
        ]
    )
