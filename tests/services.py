"""Real services for tests: an `mlflow server` and a `prefect server` as processes on loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    """Poll `url` until it answers 200; fail with the process's output if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise AssertionError(f"{url} did not come up (exit {process.returncode}):\n{output[-4000:]}")
        time.sleep(0.5)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the process group (servers fork workers), then kill what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_mlflow(root: Path, port: int) -> subprocess.Popen[bytes]:
    """`mlflow server` on a SQLite store in `root`, serving artifacts from `root/artifacts`.

    Two workers: registering a logged model makes the server call its own API.
    """
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--workers", "2",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    wait_http(f"http://127.0.0.1:{port}/health", process)
    return process


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    port = free_port()
    process = start_mlflow(root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """`prefect server start` with its own PREFECT_HOME (SQLite database inside)."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", process)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop(process)
