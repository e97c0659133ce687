"""The Prefect flows against real services: a `prefect server` process, an `mlflow server` over HTTP, a
two-node Ray cluster on loopback (`ray.cluster_utils.Cluster`), and real DVC in a temporary git repo.

The project is a temporary git + DVC repo; the flow prepares a small synthetic-svhn itself, versions it,
trains 2 Ray workers (one per node), evaluates with the domain metric and promotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import psutil
import pytest
import ray
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from gan_models.errors import GanOpsError
from pipelines.flows import retrain
from pipelines.registry import CHAMPION, Registry
from pipelines.tracking import RUN_NAME_TAG
from tests.conftest import GANOPS, PROJECT, run
from tests.services import mlflow_server, prefect_server, start_mlflow, stop

GENERATOR = "synthetic-svhn-ssgan-generator"
TINY = [
    "data.synthetic.train_size=300",
    "data.synthetic.test_size=250",
    "data.synthetic.workers=1",
    "data.labels_per_class=5",
    "model.g_features=8",
    "model.d_features=8",
    "model.latent_dim=16",
    "train.batch_size=25",
    "train.epochs=1",
    "train.device=cpu",
    "tracking.system_metrics_s=0.5",
    "ray.num_workers=2",
    "evaluate.num_real=200",
    "evaluate.num_generated=200",
    "evaluate.kid_subsets=10",
    "evaluate.kid_subset_size=100",
    "evaluate.domain_classifier_steps=100",
    "evaluate.inception_fid=false",
]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server, an MLflow server and a 2-node Ray cluster (1 CPU each), for the whole module."""
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("services")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        with prefect_server(root / "prefect") as prefect_url, mlflow_server(root / "mlflow") as mlflow_url:
            yield {"prefect": prefect_url, "mlflow": mlflow_url, "ray": cluster.address, "root": str(root)}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def project(dvc_repo: Path) -> Path:
    """A git + DVC project (tests/conftest.py) holding this project's params.yaml."""
    shutil.copy(PROJECT / "params.yaml", dvc_repo / "params.yaml")
    (dvc_repo / ".gitignore").write_text("/data\n/runs\n")
    run(["git", "add", "-A"], dvc_repo)
    run(["git", "commit", "-qm", "params"], dvc_repo)
    return dvc_repo


def overrides(services: dict[str, str], experiment: str, *extra: str) -> list[str]:
    return [
        *TINY,
        f"tracking.uri={services['mlflow']}",
        f"tracking.experiment={experiment}",
        f"ray.address={services['ray']}",
        f"promotion.lock_dir={services['root']}/locks",
        *extra,
    ]


def artifact_markdown(api: str, key: str) -> str:
    async def read() -> str:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
            return max(found, key=lambda a: a.created).data

    with temporary_settings({PREFECT_API_URL: api}):
        return asyncio.run(read())


def artifact_table(api: str, key: str) -> list[dict[str, object]]:
    """The rows of the latest table artifact `key`."""
    data = artifact_markdown(api, key)  # the same lookup; a table artifact's data is its rows as JSON
    return json.loads(data) if isinstance(data, str) else data


def prefect_run_and_logs(api: str, flow_run_id: str) -> tuple[object, list[str]]:
    """A flow run and the messages of its logs (its tasks' included)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> tuple[object, list[str]]:
        async with get_client() as client:
            flow_run = await client.read_flow_run(flow_run_id)
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return flow_run, [log.message for log in logs]

    with temporary_settings({PREFECT_API_URL: api}):
        return asyncio.run(read())


def test_retrain_promotes_a_champion_and_skips_unchanged_training(
    services: dict[str, str], project: Path, tmp_path: Path
) -> None:
    with temporary_settings({PREFECT_API_URL: services["prefect"]}):
        first = retrain(overrides=overrides(services, "e2e"), project=str(project))
        second = retrain(overrides=overrides(services, "e2e"), project=str(project))

    # Data versioned with DVC in the project; the run records that version.
    assert (project / "data.dvc").exists() and first["data_version"].endswith(".dir")
    client = mlflow.MlflowClient(services["mlflow"])
    trained = client.get_run(first["run_id"])
    assert trained.info.status == "FINISHED" and trained.data.tags["data_version"] == first["data_version"]
    assert "test_accuracy" in trained.data.metrics and "domain_fd" in trained.data.metrics

    # A champion exists, and the flow-run artifact names it.
    champion = Registry(services["mlflow"]).by_alias(GENERATOR, CHAMPION)
    assert champion is not None and champion.run_id == first["run_id"]
    assert first["promotion"]["promote"] and first["promotion"]["name"] == GENERATOR

    # Unchanged data and config: no new training, the same run; it does not replace itself.
    assert second["skipped"] and second["run_id"] == first["run_id"]
    assert not second["promotion"]["promote"] and "already the champion" in second["promotion"]["reason"]
    experiment = client.get_experiment_by_name("e2e")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    markdown = artifact_markdown(services["prefect"], "retrain-summary")
    assert GENERATOR in markdown and "training skipped" in markdown and first["data_version"] in markdown

    # The machine's system metrics on the training run (one machine to Ray Train: its two local nodes
    # share an IP address, so no `system/node<N>/` prefix).
    assert "system/cpu_utilization_percentage" in trained.data.metrics, sorted(trained.data.metrics)
    assert "system/system_memory_usage_megabytes" in trained.data.metrics

    # One query says where the champion came from; its restore command brings the bytes back elsewhere.
    store = ["--set", f"tracking.uri={services['mlflow']}"]
    found = json.loads(run([*GANOPS, "lineage", f"{GENERATOR}@champion", "--json", *store], project).stdout)
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert found["run"]["id"] == first["run_id"] and found["run"]["status"] == "FINISHED"
    assert found["code"] == {"git_commit": head, "dirty": False}
    assert found["data"]["version"] == first["data_version"] and found["data"]["dvc_remote"] != "none"
    assert found["prefect"]["flow_run_id"] and found["model"]["aliases"] == [CHAMPION]
    assert found["evaluation"]["metrics"]["test_accuracy"] == trained.data.metrics["test_accuracy"]
    assert trained.data.tags["mlflow.source.git.commit"] == head  # the run page's Source fields
    assert first["dataset"] in trained.data.tags["mlflow.note.content"]
    # Prefect's UI: a flow-run name that says what it retrains, the training's epochs in its task log.
    flow_run, logs = prefect_run_and_logs(services["prefect"], found["prefect"]["flow_run_id"])
    assert flow_run.name == found["prefect"]["flow_run_name"]
    assert flow_run.name.startswith(f"retrain {first['dataset']}-ssgan ")
    assert any(f"[{trained.info.run_name}] epoch 1/1" in line for line in logs), logs[-20:]
    fresh = tmp_path / "fresh"
    run(["git", "clone", "-q", str(project), str(fresh)], tmp_path)
    restore = found["data"]["restore"].split()
    assert restore[:3] == ["ganops", "data", "checkout"]
    run([*GANOPS, *restore[1:], *store], fresh)
    manifest = f"data/{first['dataset']}/manifest.json"
    assert (fresh / manifest).read_bytes() == (project / manifest).read_bytes()


def test_failure_inside_training_fails_the_flow_and_leaves_nothing_running(
    services: dict[str, str], project: Path
) -> None:
    bad = overrides(services, "diverges", "train.lr_d=1e30", "train.lr_g=1e30", "ray.max_failures=0")
    with temporary_settings({PREFECT_API_URL: services["prefect"]}):
        state = retrain(overrides=bad, project=str(project), return_state=True)
    assert state.is_failed()
    client = mlflow.MlflowClient(services["mlflow"])
    (failed,) = client.search_runs([client.get_experiment_by_name("diverges").experiment_id])
    assert failed.info.status == "FAILED" and "diverged" in failed.data.tags["error"]
    # No training job left on the cluster: every CPU is free again.
    ray.init(address=services["ray"])
    try:
        deadline = time.monotonic() + 60
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert ray.available_resources().get("CPU", 0) == 2
    finally:
        ray.shutdown()


def test_an_evaluation_the_data_cannot_hold_fails_the_flow_before_training(
    services: dict[str, str], project: Path
) -> None:
    # More real images than the 250 of the test split: this used to fail only after the training.
    bad = overrides(services, "too-many-real", "evaluate.num_real=251")
    with temporary_settings({PREFECT_API_URL: services["prefect"]}):
        state = retrain(overrides=bad, project=str(project), return_state=True)
    assert state.is_failed() and "evaluate.num_real=251 is more than the 250 images" in state.message
    client = mlflow.MlflowClient(services["mlflow"])
    experiment = client.get_experiment_by_name("too-many-real")
    assert experiment is None or not client.search_runs([experiment.experiment_id])  # nothing trained
    assert not (project / "runs").exists()


@pytest.mark.slow  # Inception features of 2 x 2,049 images on a CPU: about 10 minutes on 2 cores
def test_unlabelled_celeba_flow_ends_with_a_champion_ranked_by_inception_fid(
    services: dict[str, str], project: Path, shared_datasets: Path
) -> None:
    faces = [
        "data.dataset=celeba",
        f"data.source={shared_datasets}",
        "data.image_size=32",
        "data.holdout_test_size=2100",
        "model.name=dcgan",
        "evaluate.inception_fid=auto",
        "evaluate.num_real=2049",
        "evaluate.num_generated=2049",
    ]
    with temporary_settings({PREFECT_API_URL: services["prefect"]}):
        result = retrain(overrides=overrides(services, "faces", *faces), project=str(project))
    assert result["promotion"]["promote"] and result["promotion"]["name"] == "celeba-dcgan-generator"
    assert "inception_fid" in result["metrics"] and "domain_fd" not in result["metrics"]
    champion = Registry(services["mlflow"]).by_alias("celeba-dcgan-generator", CHAMPION)
    assert champion is not None and champion.run_id == result["run_id"]
    assert champion.metrics["inception_fid"] == pytest.approx(result["metrics"]["inception_fid"])


@contextlib.contextmanager
def served(
    services: dict[str, str],
    project: Path,
    name: str,
    *overrides: str,
    cron: str | None = "0 3 * * 1",
    on_new_data: bool = False,
) -> Iterator[object]:
    """`ganops schedule` serving deployment `retrain/NAME` from `project`: the deployment."""
    env = {
        **os.environ,
        "PREFECT_API_URL": services["prefect"],
        "PATH": str(Path(sys.executable).parent),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    command = [sys.executable, "-m", "pipelines", "schedule", "--name", name]
    command += (["--cron", cron] if cron else []) + (["--on-new-data"] if on_new_data else [])
    command += [f"--set={o}" for o in overrides]
    server = subprocess.Popen(
        command,
        cwd=project,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    async def deployment() -> object | None:
        async with get_client() as client:
            try:
                return await client.read_deployment_by_name(f"retrain/{name}")
            except Exception:
                return None

    try:
        deadline = time.monotonic() + 120
        found = None
        with temporary_settings({PREFECT_API_URL: services["prefect"]}):
            while found is None and time.monotonic() < deadline and server.poll() is None:
                found = asyncio.run(deployment())
                time.sleep(1)
            assert found is not None, server.stdout.read().decode(errors="replace")[-3000:]
            yield found
    finally:
        stop(server)


def test_schedule_serves_a_deployment_whose_runs_cannot_point_outputs_elsewhere(
    services: dict[str, str], project: Path
) -> None:
    """`ganops schedule` serves a cron deployment with the config as parameters; anyone with the Prefect
    UI can start a run of it with other parameters, and one that points tracking elsewhere is refused."""
    from prefect.deployments import run_deployment

    with served(services, project, "weekly", "train.epochs=3") as found:
        hijack = ["train.epochs=3", "tracking.uri=http://attacker.example:5000"]
        run = run_deployment("retrain/weekly", parameters={"overrides": hijack}, timeout=240)
    (schedule,) = found.schedules
    assert schedule.schedule.cron == "0 3 * * 1" and schedule.active
    # One run at a time: a scheduled run and a manual one of it queue, not collide.
    assert found.global_concurrency_limit is not None and found.global_concurrency_limit.limit == 1, found
    assert found.parameters["overrides"] == ["train.epochs=3"]
    assert found.parameters["project"] == str(project)
    assert run.state is not None and run.state.is_failed(), run.state
    assert "may not override tracking.uri" in str(run.state.message) + str(
        run.state.result(raise_on_failure=False)
    )


@pytest.mark.slow  # about 50 s; the served deployment's test covers the checks
def test_a_work_pool_deployment_runs_on_a_process_worker_with_the_served_checks(
    services: dict[str, str], project: Path
) -> None:
    """`ganops schedule --pool`: a deployment of a process work pool (created if missing), run by
    `prefect worker start`; its runs check their parameters as served ones do."""
    from prefect.deployments import run_deployment

    env = {**os.environ, "PREFECT_API_URL": services["prefect"], "PREFECT_WORKER_QUERY_SECONDS": "1"}
    command = [*GANOPS, "schedule", "--pool", "ganops-test", "--name", "pooled", "--cron", "0 3 * * 1",
               "--set", "train.epochs=3"]  # fmt: skip
    deployed = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "prefect worker start --pool ganops-test" in deployed.stdout
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "ganops-test", "--run-once"],
        cwd=project, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        hijack = ["train.epochs=3", "train.output_dir=/tmp/elsewhere"]
        with temporary_settings({PREFECT_API_URL: services["prefect"]}):
            flow_run = run_deployment("retrain/pooled", parameters={"overrides": hijack}, timeout=300)
    finally:
        stop(worker)
    assert flow_run.state is not None and flow_run.state.is_failed(), (
        flow_run.state,
        worker.stdout.read().decode(errors="replace")[-3000:],
    )
    assert "may not override train.output_dir" in str(flow_run.state.result(raise_on_failure=False))


@pytest.mark.slow  # about 60 s: a served deployment, two data preparations, a wait
def test_a_new_data_version_starts_one_retrain_and_the_same_version_none(
    services: dict[str, str], project: Path
) -> None:
    """`ganops schedule --on-new-data`: `ganops data prepare` of new data starts exactly one run of the
    deployment; preparing the same data again (the same version) starts none."""
    data = [f"--set={o}" for o in TINY if o.startswith("data.")]
    env = {**os.environ, "PREFECT_API_URL": services["prefect"]}

    async def runs_of(deployment_id: object) -> int:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        async with get_client() as client:
            found = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            return len(found)

    def count(deployment_id: object) -> int:
        with temporary_settings({PREFECT_API_URL: services["prefect"]}):
            return asyncio.run(runs_of(deployment_id))

    with served(
        services, project, "on-data", *overrides(services, "on-data"), on_new_data=True
    ) as deployment:
        assert count(deployment.id) == 0
        prepare = [*GANOPS, "data", "prepare", *data]
        subprocess.run(prepare, cwd=project, env=env, check=True, capture_output=True)
        deadline = time.monotonic() + 90
        while count(deployment.id) == 0 and time.monotonic() < deadline:
            time.sleep(1)
        assert count(deployment.id) == 1
        subprocess.run(prepare, cwd=project, env=env, check=True, capture_output=True)  # the same bytes
        time.sleep(15)  # what a second trigger would take, several times over
        assert count(deployment.id) == 1


@pytest.mark.slow
def test_cancelling_a_flow_run_stops_its_training_and_ends_its_mlflow_run(
    services: dict[str, str], project: Path
) -> None:
    """Cancelled in Prefect's UI while training: the flow run ends Cancelled, its `ganops train` child and
    Ray job go, and its MLflow run ends KILLED (stopped by the cancel), not RUNNING forever."""
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    long = overrides(services, "cancel", "train.epochs=200")
    client = mlflow.MlflowClient(services["mlflow"])
    with served(services, project, "cancel", *long):
        flow_run = run_deployment("retrain/cancel", timeout=0)

        def running() -> list[object]:
            experiment = client.get_experiment_by_name("cancel")
            if experiment is None:
                return []
            found = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
            return [r for r in found if "d_loss" in r.data.metrics]  # an epoch is done

        deadline = time.monotonic() + 300
        while not running():
            assert time.monotonic() < deadline, "training never logged an epoch"
            time.sleep(1)
        (training,) = running()

        async def cancel_and_wait() -> object:
            async with get_client() as prefect:
                await prefect.set_flow_run_state(flow_run.id, Cancelling(), force=True)
                for _ in range(120):
                    state = (await prefect.read_flow_run(flow_run.id)).state
                    if state is not None and state.is_final():
                        return state
                    await asyncio.sleep(1)
                return state

        with temporary_settings({PREFECT_API_URL: services["prefect"]}):
            state = asyncio.run(cancel_and_wait())
    assert state.type == StateType.CANCELLED, state
    run = client.get_run(training.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["ganops.stopped_by"] == "cancel"
    trainers = [p for p in psutil.process_iter(["cmdline"]) if "--run-name" in (p.info["cmdline"] or [])]
    assert not trainers, [p.info["cmdline"] for p in trainers]


def test_a_served_run_keeps_its_project_and_params_file_and_overrides_only_what_is_allowed(
    project: Path,
) -> None:
    from pipelines.flows import check_served_run

    served = {
        "config_path": "params.yaml",
        "overrides": ["tracking.uri=http://mlflow:5000"],
        "project": str(project),
    }
    check_served_run("params.yaml", ["tracking.uri=http://mlflow:5000", "train.epochs=7", "model.d_features=8"],
                     str(project), served)  # fmt: skip
    for key, value in (("project", "/"), ("config_path", "/etc/other.yaml")):
        with pytest.raises(GanOpsError, match=f"served with {key}=.*may not change it"):
            check_served_run(**({"config_path": "params.yaml", "overrides": [], "project": str(project)} | {key: value}),
                             served=served)  # fmt: skip
    for hijack in ("tracking.uri=http://elsewhere", "train.output_dir=/tmp/x", "train={output_dir: /tmp/x}",
                   "tracking.trusted_models=[models:/x/1]", "flow.served_overrides=['*']", "ray.address=x:1"):  # fmt: skip
        key = hijack.partition("=")[0]
        with pytest.raises(GanOpsError, match=f"may not override {re.escape(key)} "):
            check_served_run("params.yaml", [hijack], str(project), served)


@pytest.mark.slow
def test_mlflow_restart_mid_flow_is_retried_and_the_flow_completes(
    services: dict[str, str], project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dedicated MLflow server is stopped as training ends and restarted seconds later on the same port."""
    from tests.services import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # let the flow's retries do the work
    port = free_port()
    server = start_mlflow(tmp_path / "mlflow", port)
    url = f"http://127.0.0.1:{port}"
    restarted: list[object] = []

    def restart_when_trained() -> None:
        client = mlflow.MlflowClient(url)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                experiment = client.get_experiment_by_name("restart")
                runs = client.search_runs([experiment.experiment_id]) if experiment else []
                if runs and runs[0].info.status == "FINISHED":
                    break
            except Exception:
                pass
            time.sleep(0.5)
        stop(server)
        time.sleep(5)
        restarted.append(start_mlflow(tmp_path / "mlflow", port))

    watcher = threading.Thread(target=restart_when_trained, daemon=True)
    watcher.start()
    try:
        cfg = [*overrides(services, "restart"), f"tracking.uri={url}"]
        with temporary_settings({PREFECT_API_URL: services["prefect"]}):
            summary = retrain(overrides=cfg, project=str(project))
        watcher.join(60)
        assert restarted, "the server was never restarted"
        assert summary["promotion"]["name"] == GENERATOR and "domain_fd" in summary["metrics"]
        # The retried tasks repeated nothing: one training run, one registered version of each model.
        client = mlflow.MlflowClient(url)
        experiment = client.get_experiment_by_name("restart")
        trainings = [r for r in client.search_runs([experiment.experiment_id]) if RUN_NAME_TAG in r.data.tags]
        assert len(trainings) == 1
        models = [m.name for m in client.search_registered_models()]  # this test's own server
        assert GENERATOR in models
        for model in models:  # the generator and its classifier
            assert len(client.search_model_versions(f"name = '{model}'")) == 1, model
    finally:
        for process in [server, *restarted]:
            stop(process)  # type: ignore[arg-type]


@pytest.mark.slow
def test_dvc_repro_runs_the_same_pipeline_without_prefect(services: dict[str, str], project: Path) -> None:
    from gan_models.config import load_config

    shutil.copy(PROJECT / "dvc.yaml", project / "dvc.yaml")
    for code in ("gan_models", "pipelines"):  # the stages' code dependencies
        shutil.copytree(PROJECT / code, project / code, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = load_config(project / "params.yaml", overrides(services, "dvc"))
    (project / "params.yaml").write_text(cfg.to_yaml())
    run([sys.executable, "-m", "dvc", "repro"], project)

    lock = (project / "dvc.lock").read_text()
    assert all(f"  {stage}:" in lock for stage in ("prepare", "train", "evaluate", "promote"))
    promotion = json.loads((project / "outputs" / "promotion.json").read_text())
    champion = Registry(services["mlflow"]).by_alias(promotion["name"], CHAMPION)
    assert champion is not None and champion.version == promotion["version"]
    # Nothing changed: a second repro runs no stage.
    assert "didn't change, skipping" in run([sys.executable, "-m", "dvc", "repro"], project).stdout
    # DVC's own views: the per-epoch curves and the evaluation's numbers.
    plots = json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], project).stdout)
    drawn = json.dumps(plots)
    assert "training-losses" in drawn and "d_loss" in drawn and "val_accuracy" in drawn
    metrics = json.loads(run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], project).stdout)
    assert "test_accuracy" in json.dumps(metrics)


@pytest.mark.slow
def test_sweep_runs_its_trials_on_ray_tune_across_two_nodes_and_offers_the_best(
    services: dict[str, str], project: Path
) -> None:
    from pipelines.flows import sweep

    # Each trial's 2 workers take both nodes; without validation ASHA has nothing to compare: run all.
    tiny = overrides(services, "sweep", "sweep.scheduler=none")
    with temporary_settings({PREFECT_API_URL: services["prefect"]}):
        result = sweep(["train.lr_g=1e-4,3e-4"], overrides=tiny, project=str(project))
    trials = result["trials"]
    assert sorted(t["overrides"] for t in trials) == [["train.lr_g=0.0001"], ["train.lr_g=0.0003"]]
    assert {t["status"] for t in trials} == {"finished"} and len({t["run_id"] for t in trials}) == 2
    # The best is the one the promotion policy itself ranks first (`promotion.rank`, the trials in order).
    from gan_models.config import load_config
    from pipelines.promotion import Version, rank

    policy = load_config(project / "params.yaml", tiny).promotion
    candidates = [Version("sweep", t["run_id"], t["run_id"], "same", t["metrics"], {}) for t in trials]
    best = next(t for t in trials if t["run_id"] == rank(candidates, policy)[0].run_id)
    assert result["best"]["run_id"] == best["run_id"] and result["promotion"]["run_id"] == best["run_id"]
    client = mlflow.MlflowClient(services["mlflow"])
    parents = {client.get_run(t["run_id"]).data.tags["mlflow.parentRunId"] for t in trials}
    (parent,) = parents  # one sweep run, the trials its children
    assert client.get_run(parent).data.tags["best_run_id"] == best["run_id"]
    table = artifact_table(services["prefect"], "sweep-trials")  # the Prefect UI's view of the trials
    assert sorted(row["trial"] for row in table) == ["train.lr_g=0.0001", "train.lr_g=0.0003"]


@pytest.mark.slow
def test_training_past_its_timeout_is_stopped_and_its_run_failed(
    services: dict[str, str], project: Path
) -> None:
    slow = overrides(services, "timeout", "train.epochs=500", "flow.train_timeout_s=120")
    with temporary_settings({PREFECT_API_URL: services["prefect"]}):
        state = retrain(overrides=slow, project=str(project), return_state=True)
    assert state.is_failed() and "train_timeout_s" in str(state.message) + repr(
        state.result(raise_on_failure=False)
    )
    client = mlflow.MlflowClient(services["mlflow"])
    runs = client.search_runs([client.get_experiment_by_name("timeout").experiment_id])
    assert runs and all(r.info.status == "FAILED" for r in runs)
