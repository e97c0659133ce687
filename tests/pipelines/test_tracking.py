"""MLflow tracking of in-process training: one run per training, resumed into the same run, models loadable.

Real MLflow on a SQLite store in a temporary directory; each test uses its own experiment.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from gan_models.config import Config
from gan_models.training.checkpoint import CheckpointError
from gan_models.training.loop import DivergenceError
from pipelines.tracking import RUN_NAME_TAG, TrackingError, TrackingTarget, ensure_experiment, resolve_target
from pipelines.train import train_local
from tests.training.conftest import tiny_config, tiny_dataset


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the module (creating its schema takes seconds)."""
    return tmp_path_factory.mktemp("mlflow")


def local_config(tmp_path: Path, store: Path, experiment: str, *overrides: str) -> Config:
    """A tiny run on a prepared copy of the tiny dataset, tracked in `store` under `experiment`."""
    if not (tmp_path / "data" / "mnist").exists():
        tiny_dataset(tmp_path / "data" / "mnist")
    return tiny_config(
        f"data.root={tmp_path / 'data'}",
        "data.dataset=mnist",
        f"train.output_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{store / 'mlruns.db'}",
        f"tracking.artifact_root={store / 'artifacts'}",
        f"tracking.experiment={experiment}",
        *overrides,
    )


def runs_of(cfg: Config) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([experiment.experiment_id])


def test_local_training_is_one_run_resumed_in_place_with_loadable_models(tmp_path: Path, store: Path) -> None:
    train_local(local_config(tmp_path, store, "local", "model.name=ssgan", "train.epochs=1"), "r")
    cfg = local_config(tmp_path, store, "local", "model.name=ssgan", "train.epochs=2")
    train_local(cfg, "r")  # resumes the checkpoint, and the MLflow run whose id it holds

    (run,) = runs_of(cfg)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    assert run.info.status == "FINISHED" and run.data.tags[RUN_NAME_TAG] == "r"
    assert run.data.params["train.epochs"] == "1" and run.data.tags["resumed_with.train.epochs"] == "2"
    assert run.data.params["model.name"] == "ssgan" and run.data.params["data.synthetic.seed"] == "0"
    assert run.data.tags["data_version"] == "unversioned" and len(run.data.tags["git_commit"]) == 40
    assert run.data.tags["final_step"] == "12"
    # precision=auto records what it chose: the tiny MNIST-shaped data gets ssgan's MLP nets, which stay
    # fp32 even where the CPU has bf16 units.
    assert run.data.tags["precision"] == "fp32" and run.data.tags["channels_last"] == "false"
    (data_input,) = run.inputs.dataset_inputs
    assert data_input.dataset.name == "tiny" and data_input.dataset.digest
    for metric in ("d_loss", "g_loss", "train_accuracy", "images_per_s", "epoch_time_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curves.png", "images"} <= artifacts
    assert len(client.list_artifacts(run.info.run_id, "images")) >= 2  # a sample grid per epoch

    models = client.search_logged_models(
        [run.info.experiment_id], order_by=[{"field_name": "creation_time", "ascending": False}]
    )
    latest = {m.name: m for m in reversed(models)}  # the final training's models
    assert {m.source_run_id for m in models} == {run.info.run_id}
    mlflow.set_tracking_uri(cfg.tracking.uri)
    generator = mlflow.pyfunc.load_model(latest["generator"].model_uri)
    images = generator.predict(np.array([3, 1, 3], dtype=np.int64))
    assert images.dtype == np.uint8 and images.shape == (3, 28, 28, 1)
    assert np.array_equal(images[0], images[2]) and not np.array_equal(images[0], images[1])
    assert generator.metadata.signature is not None
    classifier = mlflow.pyfunc.load_model(latest["classifier"].model_uri)
    probabilities = classifier.predict(images)
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    weights = Path(
        mlflow.artifacts.download_artifacts(latest["generator"].model_uri, dst_path=str(tmp_path / "m"))
    )
    assert list(weights.rglob("weights.safetensors")) and list(weights.rglob("code/gan_models/nets"))
    assert not list(weights.rglob("*.pkl"))  # weights and code only: nothing is unpickled on load


def test_diverged_training_ends_its_run_failed_with_the_error(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from gan_models.nets import FAMILIES

    original = FAMILIES["dcgan"].generator_objective

    def poisoned(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        terms = original(*args, **kwargs)
        return terms | {"loss": terms["loss"] * float("nan")}

    monkeypatch.setitem(
        FAMILIES, "dcgan", dataclasses.replace(FAMILIES["dcgan"], generator_objective=poisoned)
    )
    cfg = local_config(tmp_path, store, "diverged", "model.name=dcgan", "train.epochs=1")
    with pytest.raises(DivergenceError):
        train_local(cfg, "d")
    (run,) = runs_of(cfg)
    assert run.info.status == "FAILED" and "diverged at step" in run.data.tags["error"]
    client = mlflow.MlflowClient(cfg.tracking.uri)
    assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_unreachable_tracking_server_fails_before_training(tmp_path: Path, store: Path) -> None:
    cfg = local_config(tmp_path, store, "x", "tracking.uri=http://127.0.0.1:9")  # discard port: refused
    begin = time.monotonic()
    with pytest.raises(TrackingError, match=r"MLflow tracking at http://127.0.0.1:9 is unreachable"):
        train_local(cfg, "u")
    assert time.monotonic() - begin < 30 and not (tmp_path / "runs").exists()


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_target(cfg.tracking, tmp_path).uri == f"sqlite:///{tmp_path.resolve() / 'mlruns.db'}"
    assert (
        resolve_target(cfg.tracking, tmp_path).artifact_location == (tmp_path / "mlruns").resolve().as_uri()
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_target(cfg.tracking, tmp_path).uri == "http://tracking:5000"
    assert resolve_target(cfg.tracking, tmp_path).artifact_location is None  # the server's own store
    cfg.tracking.uri = "sqlite:///rel.db"
    assert resolve_target(cfg.tracking, tmp_path).uri == f"sqlite:///{tmp_path.resolve() / 'rel.db'}"


def test_a_dvc_experiment_workspace_tracks_into_its_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run --temp` runs the stages in `<repo>/.dvc/tmp/exps/<tmp>/`, deleted afterwards: the
    default store (and its artifacts) must be the repository's, or the runs are lost with it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpa1b2c3"
    target = resolve_target(tiny_config().tracking, workspace)
    assert target.uri == f"sqlite:///{(tmp_path / 'repo').resolve() / 'mlruns.db'}"
    assert target.artifact_location == (tmp_path / "repo" / "mlruns").resolve().as_uri()


@pytest.mark.slow
def test_the_same_code_tracks_to_a_real_mlflow_server_over_http(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import urllib.request

    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(1)
        cfg = local_config(
            tmp_path, tmp_path, "http", "model.name=dcgan", "train.epochs=1", f"tracking.uri={uri}"
        )
        train_local(cfg, "h")
        (run,) = runs_of(cfg)
        assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
        (model,) = mlflow.MlflowClient(uri).search_logged_models([run.info.experiment_id])
        mlflow.set_tracking_uri(uri)
        images = mlflow.pyfunc.load_model(model.model_uri).predict(np.array([0, 1]))
        assert images.dtype == np.uint8 and images.shape == (2, 28, 28, 1)
    finally:
        children = psutil.Process(server.pid).children(recursive=True)
        server.terminate()
        server.wait(timeout=60)
        for child in children:  # the server's own uvicorn worker
            if child.is_running():
                child.kill()


def test_a_new_sqlite_store_is_created_without_mlflows_notices(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    target = TrackingTarget(f"sqlite:///{tmp_path / 'new.db'}", "quiet", str(tmp_path / "artifacts"))
    assert ensure_experiment(target)
    captured = capfd.readouterr()
    assert captured.out + captured.err == ""  # not "Creating initial MLflow database tables..."


def test_resuming_with_another_architecture_leaves_the_finished_run_untouched(
    tmp_path: Path, store: Path
) -> None:
    cfg = local_config(tmp_path, store, "changed", "model.name=ssgan", "train.epochs=1")
    train_local(cfg, "r")
    (before,) = runs_of(cfg)
    changed = local_config(
        tmp_path, store, "changed", "model.name=ssgan", "train.epochs=2", "model.g_features=16"
    )
    with pytest.raises(CheckpointError, match=r"model.g_features: checkpoint 8, config 16"):
        train_local(changed, "r")
    (after,) = runs_of(cfg)  # the run the checkpoint names: not reopened, tagged or failed
    assert after.info.status == "FINISHED" and after.info.end_time == before.info.end_time
    assert after.data.tags == before.data.tags


@pytest.mark.slow  # about 45 s: an MLflow server started twice, an epoch's retries waited out
def test_a_tracking_server_away_for_an_epoch_costs_no_metric_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.train import preflight, run_training
    from tests.conftest import PROJECT
    from tests.services import free_port, start_mlflow, stop

    port = free_port()
    root = tmp_path / "server"
    root.mkdir()
    server = [start_mlflow(root, port)]
    cfg = local_config(tmp_path, root, "away", "model.name=dcgan", "train.epochs=3")
    cfg.tracking.uri = f"http://127.0.0.1:{port}"
    dataset, checks = preflight(cfg, PROJECT)

    def outage(epoch_report, metrics, run_id) -> None:  # noqa: ANN001
        if epoch_report.epoch == 1:
            stop(server[0])  # away while epoch 2 is logged (its retries give up) ...
        elif epoch_report.epoch == 2:
            server[0] = start_mlflow(root, port)  # ... back before epoch 3

    try:
        with caplog.at_level(logging.WARNING, logger="pipelines.tracking"):
            result = run_training(cfg, "away", dataset, checks, report=outage)
        assert result.epoch == 3
        (run,) = runs_of(cfg)
        history = mlflow.MlflowClient(cfg.tracking.uri).get_metric_history(run.info.run_id, "d_loss")
        assert run.info.status == "FINISHED" and sorted(m.step for m in history) == [1, 2, 3]
        assert "is unreachable" in caplog.text and "epoch 2's metrics are kept" in caplog.text
    finally:
        stop(server[0])


def test_a_training_whose_end_never_reached_mlflow_is_published_by_the_next_launch_without_retraining(
    tmp_path: Path, store: Path
) -> None:
    from pipelines.train import preflight, run_training

    cfg = local_config(tmp_path, store, "unpublished", "model.name=ssgan", "train.epochs=2")
    dataset, checks = preflight(cfg, tmp_path)

    def dies_at_the_end(epoch_report, metrics, run_id) -> None:  # noqa: ANN001
        if epoch_report.epoch == 2:  # after the final checkpoint, before the models are logged
            raise ConnectionError("the tracking server went away")

    with pytest.raises(ConnectionError):
        run_training(cfg, "r", dataset, checks, report=dies_at_the_end)
    (run,) = runs_of(cfg)
    assert run.info.status == "FAILED"

    summary = train_local(cfg, "r")
    assert "its models are now logged" in summary and "nothing retrained" in summary
    (run,) = runs_of(cfg)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    assert run.info.status == "FINISHED" and run.data.tags["previous_error"].startswith("ConnectionError")
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "d_loss")) == [1, 2]  # once each
    models = client.search_logged_models([run.info.experiment_id])
    assert sorted(m.name for m in models) == ["classifier", "generator"]
    assert "already trained for 2 epochs" in train_local(cfg, "r")  # and now it is complete


def test_credentials_in_uris_reach_no_record_and_no_error_message(tmp_path: Path, store: Path) -> None:
    from gan_models.config import redact_secrets
    from tests.conftest import GANOPS, PROJECT, run

    assert (
        redact_secrets("http://alice:s3cr3t@mlflow:5000/?token=abc&x=1")
        == "http://alice:***@mlflow:5000/?token=***&x=1"
    )
    cfg = local_config(tmp_path, store, "secrets", "model.name=dcgan", "train.epochs=1")
    cfg.ray.address = "ray://ops:hunter2@head:10001"
    cfg.ray.storage_path = "s3://bucket/ray?access_key=AKIA123&region=eu"
    train_local(cfg, "r")
    (run_,) = runs_of(cfg)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    logged = Path(client.download_artifacts(run_.info.run_id, "config.yaml", str(tmp_path)))
    records = [
        str(run_.data.params),
        logged.read_text(),
        (tmp_path / "runs" / "r" / "config.yaml").read_text(),
    ]
    for record in records:
        assert "hunter2" not in record and "AKIA123" not in record and "ops:***@head" in record

    # An unreachable store with a password in its URI: the error names the store, not the password.
    proc = run(
        [*GANOPS, "train", "--no-ray", "--set", "tracking.uri=http://bob:pa55@127.0.0.1:9", "--set", "data.dataset=mnist",
         "--set", f"data.root={tmp_path / 'data'}", "--set", f"train.output_dir={tmp_path / 'runs'}"],
        cwd=PROJECT,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "http://bob:***@127.0.0.1:9" in proc.stderr and "pa55" not in proc.stderr
