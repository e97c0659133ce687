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


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own process group, its output to `log`.

    A file, not a pipe: nobody reads a pipe while the test runs, and a server blocks once it is full.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
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
            output = log.read_text(errors="replace") if log.exists() else ""
            raise AssertionError(f"{url} did not come up (exit {process.returncode}):\n{output[-4000:]}")
        time.sleep(0.5)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (an exited one waiting to be reaped does not count)."""
    ps = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True, check=True)
    return any(
        int(g) == pgid and not stat.startswith("Z")
        for g, stat in (line.split() for line in ps.stdout.splitlines())
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group (servers fork workers), SIGKILL to what is left after 20 s."""
    pgid = process.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 20
        while group_alive(pgid) and time.monotonic() < deadline:
            process.poll()
            time.sleep(0.2)
        if not group_alive(pgid):
            break
    process.wait(10)


def start_mlflow(root: Path, port: int) -> subprocess.Popen[bytes]:
    """`mlflow server` on a SQLite store in `root`, serving artifacts from `root/artifacts`.

    Two workers: registering a logged model makes the server call its own API.
    """
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--workers", "2",
    ]  # fmt: skip
    # No job runner: a second process on the same SQLite file (for MLflow's GenAI jobs, unused here).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = root / "server.log"
    process = spawn(command, log, env)
    wait_http(f"http://127.0.0.1:{port}/health", process, log)
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
    log = home / "server.log"
    process = spawn(command, log, env)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", process, log)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop(process)
