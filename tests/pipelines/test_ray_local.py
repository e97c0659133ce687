"""`ray.address: null` means a Ray instance of our own, never a cluster someone else started here."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
import ray

from pipelines.ray_train import launch
from tests.pipelines.test_ray_train import ray_config
from tests.services import free_port, spawn, stop


@pytest.mark.slow
def test_without_an_address_training_starts_its_own_ray_not_a_running_one(tmp_path: Path) -> None:
    # Another user's (or test's) 1-CPU head on this machine: `ray.init()` without an address joins the
    # latest cluster started here, where 2 workers of 1 CPU cannot be placed.
    assert not ray.is_initialized()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    head = spawn(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
        ],
        tmp_path / "head.log",
        env,
    )
    try:
        deadline = time.monotonic() + 120
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        time.sleep(3)  # the head records itself as this machine's latest cluster once it is up
        summary = launch(
            ray_config(tmp_path, tmp_path, "own", "train.epochs=1", "tracking.enabled=false"), "own"
        )
        assert "1 epochs" in summary and "on 2 workers" in summary
    finally:
        stop(head)
