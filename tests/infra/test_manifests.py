"""The cluster files in infra/ as far as this machine can check them (no Docker engine, no Kubernetes):
they parse, KubeRay's required fields are there, Ray's own KubeRay code reads the cluster, the pod
templates are valid Kubernetes, the compose file is valid Compose, and every `ganops` command they run
is one the CLI accepts."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
INFRA = PROJECT / "infra"
GANOPS = [sys.executable, "-m", "pipelines"]
IMAGE = "ghcr.io/OWNER/ganops:latest"
CLIENT_ENV = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "GANOPS_DVC_REMOTE")


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def by_kind(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in load_all(path) if d.get("kind") == kind]
    return doc


def raycluster() -> dict[str, Any]:
    return by_kind(INFRA / "k8s" / "raycluster.yaml", "RayCluster")


def configmap() -> dict[str, Any]:
    return by_kind(INFRA / "k8s" / "raycluster.yaml", "ConfigMap")


def rayjob() -> dict[str, Any]:
    return by_kind(INFRA / "k8s" / "rayjob.yaml", "RayJob")


def pod_templates(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = cluster["spec"]
    return {"head": spec["headGroupSpec"]["template"]} | {
        group["groupName"]: group["template"] for group in spec["workerGroupSpecs"]
    }


def run_ganops(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GANOPS, *args], cwd=PROJECT, capture_output=True, text=True, check=False)


# The fields KubeRay's ray.io/v1 CRDs require (from the Go types, ray-operator/apis/ray/v1: the json tags
# without omitempty), plus the container image that every pod needs. No package on PyPI ships the CRDs'
# OpenAPI schemas, so this is a minimal schema of those fields, not the full CRD.
POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "image"],
                        "properties": {
                            "name": {"type": "string"},
                            "image": {"type": "string", "minLength": 1},
                        },
                    },
                }
            },
        }
    },
}
RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string"},
        "headGroupSpec": {
            "type": "object",
            "required": ["rayStartParams", "template"],
            "properties": {"rayStartParams": RAY_START_PARAMS, "template": POD_TEMPLATE},
        },
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "groupName",
                    "replicas",
                    "minReplicas",
                    "maxReplicas",
                    "rayStartParams",
                    "template",
                ],
                "properties": {
                    "groupName": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 0},
                    "rayStartParams": RAY_START_PARAMS,
                    "template": POD_TEMPLATE,
                },
            },
        },
    },
}
OBJECT_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
RAY_CLUSTER = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": OBJECT_META,
        "spec": RAY_CLUSTER_SPEC,
    },
}
RAY_JOB = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": OBJECT_META,
        "spec": {
            "type": "object",
            "required": ["entrypoint"],
            # A RayJob runs on a cluster it creates (rayClusterSpec) or an existing one (clusterSelector).
            "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "rayClusterSpec": RAY_CLUSTER_SPEC,
                "clusterSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
            },
        },
    },
}


def test_every_yaml_file_in_infra_parses() -> None:
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])
    assert {f.relative_to(INFRA).as_posix() for f in files} >= {
        "compose.yaml",
        "k8s/raycluster.yaml",
        "k8s/rayjob.yaml",
    }
    for path in files:
        docs = load_all(path)
        assert docs, f"{path}: no YAML document"
        assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"


def test_raycluster_has_the_fields_kuberay_requires() -> None:
    cluster = raycluster()
    jsonschema.validate(cluster, RAY_CLUSTER)
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for name, group in groups.items():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1
    for role, template in pod_templates(cluster).items():
        assert template["spec"]["containers"][0]["image"] == IMAGE, role
    # The dashboard (its Jobs API runs any code) listens on all interfaces: only with Ray's token.
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert cluster["spec"]["authOptions"] == {"mode": "token"}


def test_rayjob_has_the_fields_kuberay_requires_and_runs_on_the_raycluster() -> None:
    job = rayjob()
    jsonschema.validate(job, RAY_JOB)
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": raycluster()["metadata"]["name"]}


def test_the_minimal_kuberay_schema_rejects_what_kuberay_rejects() -> None:
    """The schema above is not vacuous: a worker group without maxReplicas or a pod without an image fails."""
    cluster = raycluster()
    del cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        jsonschema.validate(cluster, RAY_CLUSTER)
    cluster = raycluster()
    del cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    with pytest.raises(jsonschema.ValidationError, match="image"):
        jsonschema.validate(cluster, RAY_CLUSTER)


def test_rays_kuberay_autoscaler_reads_the_cluster_resources() -> None:
    """Ray's own KubeRay integration (the autoscaler that runs beside the head) turns the RayCluster into
    node types: the CPU and GPU groups offer what `ganops train` asks for per worker."""
    try:
        from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    except ImportError as e:  # a private module of Ray: a newer Ray may move it
        pytest.skip(f"Ray's KubeRay autoscaling config is not importable: {e}")
    cluster = raycluster()
    cluster["metadata"].setdefault("namespace", "default")
    node_types = _derive_autoscaling_config_from_ray_cr(cluster)["available_node_types"]
    assert node_types["headgroup"]["resources"]["CPU"] == 2
    assert node_types["cpu"]["resources"]["CPU"] == 4
    assert (node_types["cpu"]["min_workers"], node_types["cpu"]["max_workers"]) == (1, 4)
    assert node_types["gpu"]["resources"]["GPU"] == 1
    assert (node_types["gpu"]["min_workers"], node_types["gpu"]["max_workers"]) == (0, 2)
    # The RayJob's per-worker request (ray.num_workers x ray.cpus_per_worker) fits the CPU group.
    sets = dict(s.split("=", 1) for s in rayjob_train_args() if "=" in s and s.startswith("ray."))
    assert float(sets["ray.cpus_per_worker"]) <= node_types["cpu"]["resources"]["CPU"]
    assert int(sets["ray.num_workers"]) <= node_types["cpu"]["max_workers"]


def test_pod_templates_and_configmap_are_valid_kubernetes() -> None:
    """Each pod template (as a core/v1 PodTemplate) and the ConfigMap against Kubernetes' own OpenAPI
    schemas, strict: an unknown or misspelt field fails."""
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (it ships Kubernetes' JSON schemas)")
    import kubernetes_validate

    version = "1.30"
    kubernetes_validate.validate(configmap(), version, strict=True)
    for role, template in pod_templates(raycluster()).items():
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": role},
            "template": template,
        }
        kubernetes_validate.validate(pod_template, version, strict=True)


def test_every_ray_pod_reads_the_endpoints_from_the_configmap() -> None:
    data = configmap()["data"]
    for name in CLIENT_ENV:
        assert data.get(name), f"ConfigMap ganops-config has no {name}"
    name = configmap()["metadata"]["name"]
    for role, template in pod_templates(raycluster()).items():
        spec = template["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            sources = [s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s]
            assert name in sources, f"{role}/{container['name']} does not read ConfigMap {name}"


def test_raycluster_ray_version_is_the_locked_ray() -> None:
    """KubeRay starts Ray with the image's `ray`; rayVersion must name the same release (uv.lock's)."""
    lock = tomllib.loads((PROJECT / "uv.lock").read_text())
    (locked,) = [p["version"] for p in lock["package"] if p["name"] == "ray"]
    assert raycluster()["spec"]["rayVersion"] == locked


def rayjob_train_args() -> list[str]:
    """The RayJob's `ganops train` arguments as the head's shell passes them, with the ConfigMap's env.

    KubeRay pastes the entrypoint into the submitter's shell command (`ray job submit -- ENTRYPOINT`), and
    Ray runs what arrives in a shell on the head: the entrypoint goes through both shells."""
    outer = shlex.split(rayjob()["spec"]["entrypoint"])
    assert outer[:2] == ["bash", "-c"] and len(outer) == 3, f"entrypoint: {outer}"
    last = outer[2].split("&&")[-1]
    env = {**os.environ, **configmap()["data"]}
    words = [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], w) for w in shlex.split(last)]
    if words[0] == "exec":
        words = words[1:]
    assert words[:2] == ["ganops", "train"], f"the RayJob runs {words}, not `ganops train`"
    return words[2:]


def test_rayjob_entrypoint_is_a_ganops_train_command_the_cli_accepts() -> None:
    """The exact arguments, through `ganops train --dry-run`: options exist, --set keys are config keys."""
    args = rayjob_train_args()
    assert "--run-name" in args
    proc = run_ganops(["train", *args, "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["ray"]["storage_path"] == configmap()["data"]["GANOPS_RAY_STORAGE"]


def test_pods_and_image_run_existing_ganops_subcommands() -> None:
    """The init containers' command and the Dockerfile's CMD name `ganops` subcommands that exist."""
    commands = {tuple(dockerfile_cmd())}
    for template in pod_templates(raycluster()).values():
        for container in template["spec"].get("initContainers", []):
            commands.add(tuple(container["command"]))
    for command in commands:
        assert command[0] == "ganops", command
        proc = run_ganops([*command[1:], "--help"])
        assert proc.returncode == 0, f"{' '.join(command)}: {proc.stderr}"


# Compose.


def compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def test_compose_file_matches_the_compose_spec_schema() -> None:
    """The Compose Specification's JSON schema, as vendored by check-jsonschema."""
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema is not installed (it vendors the compose-spec schema)")
    import json
    from importlib.resources import files

    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    jsonschema.validate(compose(), schema, format_checker=jsonschema.FormatChecker())


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_accepts_the_compose_file() -> None:
    """Docker Compose's own loader (interpolation, profiles, anchors, depends_on), without an engine."""
    command = compose_command()
    if command is None:
        pytest.skip("no docker-compose or `docker compose` plugin on PATH")
    for profiles in ([], ["--profile", "ray", "--profile", "s3"]):
        proc = subprocess.run(
            [*command, "-f", str(INFRA / "compose.yaml"), *profiles, "config", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


def test_compose_services_are_built_checked_and_reachable() -> None:
    services = compose()["services"]
    assert {"postgres", "mlflow", "prefect"} <= set(services)
    awaited = {
        dependency
        for service in services.values()
        for dependency, how in service.get("depends_on", {}).items()
        if how.get("condition") == "service_healthy"
    }
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: no image or build"
        # A server others wait for or reach from the host says when it is ready.
        if name in awaited or service.get("ports"):
            assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    for name in ("mlflow", "prefect"):
        assert services[name]["ports"], f"{name}: no published port"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["command"] == ["infra/mlflow-server.sh"]
    assert services["prefect"]["command"] == ["infra/prefect-server.sh"]
    assert (INFRA / "postgres" / "init-databases.sql").is_file()


def test_compose_servers_and_clients_use_the_pipelines_variable_names() -> None:
    services = compose()["services"]
    mlflow_env, prefect_env = services["mlflow"]["environment"], services["prefect"]["environment"]
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    # Clients inside the network reach the servers by service name; MLflow must accept that Host header.
    assert "mlflow:5000" in mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for name in ("ray-head", "ray-worker"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["PREFECT_API_URL"] == "http://prefect:4200/api"
        assert env["RAY_ADDRESS"] == "ray-head:6379"
        assert env["GANOPS_DVC_REMOTE"]


# Dockerfile.


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (INFRA / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def dockerfile_cmd() -> list[str]:
    import json

    (cmd,) = [args for op, args in dockerfile_instructions() if op == "CMD"]
    return json.loads(cmd)


def test_dockerfile_parses_with_dockers_own_parser() -> None:
    """BuildKit's parser (the `dockerfile` package wraps it) reads the same instructions as the tests do."""
    if importlib.util.find_spec("dockerfile") is None:
        pytest.skip("the dockerfile package (BuildKit's parser) is not installed")
    import dockerfile

    parsed = dockerfile.parse_file(str(INFRA / "Dockerfile"))
    assert [c.cmd.upper() for c in parsed] == [op for op, _ in dockerfile_instructions()]
    assert [c.value for c in parsed if c.cmd.upper() == "CMD"] == [tuple(dockerfile_cmd())]


def test_dockerfile_base_image_is_the_projects_python() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim", instructions[0][1])
    assert match, instructions[0]
    requires = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={match[1]}.{match[2]}" in requires
    assert not any(op == "ENTRYPOINT" for op, _ in instructions), (
        "an ENTRYPOINT would swallow KubeRay's command"
    )


def test_dockerfile_copies_existing_files_that_the_build_context_keeps() -> None:
    ignored = [
        line.strip()
        for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for op, args in dockerfile_instructions():
        if op != "COPY" or args.startswith("--from"):
            continue
        *sources, _ = args.split()
        for source in sources:
            source = source.rstrip("/")
            assert (PROJECT / source).exists(), f"COPY {source}: not in the repository"
            assert source not in ignored, f"COPY {source}: excluded by Dockerfile.dockerignore"


def test_dockerfile_installs_the_locked_environment(tmp_path: Path) -> None:
    """`uv sync --frozen` as the Dockerfile runs it, dry, on a copy of what the image copies first: the
    lock has everything the image installs, for this platform (linux x86_64, CPython 3.11, as the image)."""
    syncs = [args for op, args in dockerfile_instructions() if op == "RUN" and "uv sync" in args]
    assert syncs and all("--frozen" in s for s in syncs)
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(PROJECT / name, tmp_path / name)
    sync = shlex.split(syncs[0].split("uv sync", 1)[1].split("&&")[0])
    proc = subprocess.run(
        [uv, "sync", *sync, "--dry-run"],
        cwd=tmp_path,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\+ ray==", proc.stderr) and re.search(r"\+ torch==", proc.stderr), proc.stderr[-2000:]
