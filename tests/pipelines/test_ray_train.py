"""`ganops train` under Ray Train: real local Ray (2 CPUs), real MLflow (SQLite), tiny models and data.

The fail-fast tests come first: they must fail before any Ray instance exists.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import ray

from gan_models.config import Config
from gan_models.errors import DatasetError
from pipelines.ray_train import ClusterError, finished_epochs, launch
from pipelines.tracking import TrackingError
from pipelines.train import ReplicaMismatchError
from tests.conftest import PROJECT
from tests.training.conftest import tiny_config, tiny_dataset

STEPS_PER_EPOCH = 3  # 120 images, batches of 20 on each of 2 ranks


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


def ray_config(tmp_path: Path, store: Path, experiment: str, *overrides: str) -> Config:
    """A 2-worker tiny SSGAN run on a prepared tiny dataset, tracked in `store` under `experiment`."""
    if not (tmp_path / "data" / "mnist").exists():
        tiny_dataset(tmp_path / "data" / "mnist")
    return tiny_config(
        "model.name=ssgan",
        f"data.root={tmp_path / 'data'}",
        "data.dataset=mnist",
        f"train.output_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{store / 'mlruns.db'}",
        f"tracking.artifact_root={store / 'artifacts'}",
        f"tracking.experiment={experiment}",
        "ray.num_workers=2",
        *overrides,
    )


def only_run(cfg: Config) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id])  # exactly one run
    return run


def epochs_logged(cfg: Config, run: mlflow.entities.Run, metric: str) -> list[int]:
    """The epochs at which `metric` was logged, with repeats (a resumed epoch is logged again)."""
    history = mlflow.MlflowClient(cfg.tracking.uri).get_metric_history(run.info.run_id, metric)
    return sorted(m.step for m in history)


# Bad inputs fail fast, before Ray starts.


def _corrupt(cfg: Config) -> None:
    images = Path(cfg.data.root) / "mnist" / "train_images.npy"
    array = np.load(images)
    array.flat[0] ^= 0xFF
    np.save(images, array)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            ["ray.num_workers=64"],
            ClusterError,
            r"ray.num_workers=64 x ray.cpus_per_worker=1 needs 64 CPUs; "
            r"this machine has \d+",
        ),
        (["train.device=cuda"], ClusterError, r"needs 2 GPUs; this machine has 0"),
        (
            ["tracking.uri=http://127.0.0.1:9"],
            TrackingError,
            r"MLflow tracking at http://127.0.0.1:9 is unreachable",
        ),
        (["data.dataset=cifar10"], DatasetError, r"manifest.json: missing"),
        (["corrupt"], DatasetError, r"failed verification:\n.*train_images.npy: sha256 differs"),
        (  # 120 images: not one batch of 100 on each of 2 ranks (retried forever under Ray otherwise)
            ["train.batch_size=100"],
            DatasetError,
            r"train.batch_size=100 x 2 ranks \(ray.num_workers\) needs at least 200 training examples",
        ),
    ],
)
def test_bad_inputs_fail_before_ray_starts(
    overrides: list[str], error: type[Exception], message: str, tmp_path: Path, store: Path
) -> None:
    if overrides == ["train.device=cuda"] and __import__("torch").cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    cfg = ray_config(tmp_path, store, "bad", *[o for o in overrides if o != "corrupt"])
    if overrides == ["corrupt"]:
        _corrupt(cfg)
    begin = time.monotonic()
    with pytest.raises(error, match=message):
        launch(cfg, "bad")
    assert time.monotonic() - begin < 30 and not ray.is_initialized()
    assert not (tmp_path / "runs").exists()


# Real training on a local Ray instance shared by the tests below.


@pytest.fixture(scope="module")
def ray_cluster() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_more_workers_than_the_cluster_has_fails_before_training(
    ray_cluster: None, tmp_path: Path, store: Path
) -> None:
    with pytest.raises(ClusterError, match=r"needs 3 CPUs; the Ray cluster \(local\) has 2"):
        launch(ray_config(tmp_path, store, "big", "ray.num_workers=3"), "big")


def test_two_workers_one_mlflow_run_with_every_epoch_and_the_models_and_a_quiet_terminal(
    tmp_path: Path, store: Path
) -> None:
    # `ganops train` as a user runs it: its own local Ray instance, every process's output in the terminal.
    cfg = ray_config(tmp_path, store, "two", "train.epochs=2")
    params = tmp_path / "params.yaml"
    params.write_text(cfg.to_yaml())
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "train", "--run-name", "two", "--config", str(params)],
        cwd=PROJECT,  # the git commit recorded is this checkout's
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"2 epochs, {2 * STEPS_PER_EPOCH} steps on 2 workers" in proc.stdout
    # What the user can act on: the dashboard, where the logs are, and one line per epoch from rank 0 ...
    assert re.search(r"Ray dashboard: http://\S+ \(logs: \S+\)", output), output
    assert re.search(r"\[two\] epoch 1/2 .* img/s .* eta", output) and "[two] epoch 2/2" in output, output
    # ... and none of Ray's, Ray Train's or MLflow's notices of a normal run.
    for noise in ("Traceback", "WARNING", "Failed to", "Reporting training result", "Started a local Ray"):
        assert noise not in output, f"{noise!r} in the output:\n{output}"
    assert "INFO" not in output, output

    run = only_run(cfg)
    assert run.info.status == "FINISHED" and run.data.tags["final_step"] == str(2 * STEPS_PER_EPOCH)
    assert run.data.params["ray.num_workers"] == "2" and run.data.tags["git_commit"]
    for metric in ("d_loss", "g_loss", "train_accuracy", "images_per_s", "epoch_time_s"):
        assert epochs_logged(cfg, run, metric) == [1, 2], metric
    # Parameters were compared with rank 0's before every checkpoint (a difference raises).
    assert epochs_logged(cfg, run, "replicas_identical") == [1, 2]
    models = mlflow.MlflowClient(cfg.tracking.uri).search_logged_models([run.info.experiment_id])
    assert sorted(m.name for m in models) == ["classifier", "generator"]
    assert {m.source_run_id for m in models} == {run.info.run_id}
    assert (tmp_path / "runs" / "two" / "samples" / "epoch_0002.png").exists()
    # A second launch of a finished run name trains nothing.
    assert "already trained for 2 epochs" in launch(cfg, "two")


@pytest.mark.slow
def test_relaunch_with_the_same_name_resumes_the_run(ray_cluster: None, tmp_path: Path, store: Path) -> None:
    launch(ray_config(tmp_path, store, "again", "train.epochs=1"), "again")
    cfg = ray_config(tmp_path, store, "again", "train.epochs=2")
    summary = launch(cfg, "again")  # Ray restores the latest checkpoint of run "again"
    assert f"2 epochs, {2 * STEPS_PER_EPOCH} steps" in summary
    run = only_run(cfg)
    assert run.info.status == "FINISHED" and epochs_logged(cfg, run, "d_loss") == [1, 2]
    assert run.data.tags["resumed_with.train.epochs"] == "2"


def _ray_train_workers() -> list[psutil.Process]:
    """This test's Ray Train worker processes (descendants of this process: its local Ray instance)."""
    workers = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                workers.append(process)
        except psutil.NoSuchProcess:
            continue
    return workers


def committed_epochs(tmp_path: Path, name: str) -> int:
    """Epochs of the latest checkpoint Ray has committed (a checkpoint_* folder appears before that)."""
    try:
        return finished_epochs(str(tmp_path / "runs" / "ray"), name)
    except Exception:  # the snapshot is being written
        return 0


@pytest.mark.slow
def test_killed_worker_is_replaced_and_the_run_completes_exactly(
    ray_cluster: None, tmp_path: Path, store: Path
) -> None:
    epochs = 6
    cfg = ray_config(tmp_path, store, "kill", f"train.epochs={epochs}", "ray.max_failures=1")
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            committed = committed_epochs(tmp_path, "kill")
            workers = _ray_train_workers()
            if committed and len(workers) == 2:
                victim = max(workers, key=lambda p: p.pid)
                victim.kill()  # SIGKILL: no cleanup, as when a node dies
                killed.append(victim.pid)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    summary = launch(cfg, "kill")
    watcher.join(timeout=1)
    assert killed, "no worker was killed"
    assert f"{epochs} epochs, {epochs * STEPS_PER_EPOCH} steps" in summary  # the exact final step
    run = only_run(cfg)
    assert run.info.status == "FINISHED" and run.data.tags["final_step"] == str(epochs * STEPS_PER_EPOCH)
    logged = epochs_logged(cfg, run, "d_loss")
    assert set(logged) == set(range(1, epochs + 1)) and logged.count(1) == 1  # resumed, not restarted


def _mismatch_worker(config: dict) -> None:
    import ray.train
    import torch

    from pipelines.train import check_identical

    torch.manual_seed(0)
    nets = {"generator": torch.nn.Linear(3, 2), "discriminator": torch.nn.Linear(2, 1)}
    assert check_identical(nets, torch.device("cpu"), "at first") == 8 + 3
    if ray.train.get_context().get_world_rank() == 1:
        with torch.no_grad():
            nets["discriminator"].bias.add_(1e-6)
    check_identical(nets, torch.device("cpu"), "after a perturbation")


@pytest.mark.slow
def test_replica_check_names_the_parameter_that_differs(ray_cluster: None, tmp_path: Path) -> None:
    from ray.train import RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _mismatch_worker,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="mismatch", storage_path=str(tmp_path)),
    )
    with pytest.raises(TrainingFailedError) as failure:
        trainer.fit()
    assert ReplicaMismatchError.__name__ in str(failure.value)
    assert "differ from rank 0's after a perturbation: discriminator.bias" in str(failure.value)


@pytest.mark.slow  # about 40 s
def test_sigterm_to_the_driver_ends_its_mlflow_run_killed_and_its_workers(
    ray_cluster: None, tmp_path: Path, store: Path
) -> None:
    """A stopped RayJob, `kill`, a supervisor: SIGTERM lets `ganops train` clean up. Its MLflow run ends
    KILLED with the reason (not RUNNING forever), and the run's Ray Train workers go."""
    import os

    cfg = ray_config(tmp_path, store, "sigterm", "train.epochs=50")
    params = tmp_path / "params.yaml"
    params.write_text(cfg.to_yaml())
    env = os.environ | {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "train", "--run-name", "sigterm", "--config", str(params)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not committed_epochs(tmp_path, "sigterm"):
            assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read()
            time.sleep(0.05)
        driver.terminate()
        code = driver.wait(120)
    finally:
        driver.kill()
    assert code != 0, driver.stderr.read()[-4000:]
    run = only_run(cfg)
    assert run.info.status == "KILLED", run.info.status
    assert run.data.tags["stop_reason"] == "interrupted (SystemExit)"
    assert run.data.tags["ganops.stopped_by"] == "signal"
    deadline = time.monotonic() + 60
    while _ray_train_workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_train_workers()


@pytest.mark.slow
def test_killed_driver_relaunched_with_the_same_name_resumes_and_completes(
    ray_cluster: None, tmp_path: Path, store: Path
) -> None:
    import os
    import subprocess
    import sys

    epochs = 6
    cfg = ray_config(tmp_path, store, "driver", f"train.epochs={epochs}")
    params = tmp_path / "params.yaml"
    params.write_text(cfg.to_yaml())
    env = os.environ | {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "train", "--run-name", "driver", "--config", str(params)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while not committed_epochs(tmp_path, "driver"):
            assert driver.poll() is None and time.monotonic() < deadline, (
                "the driver ended before a checkpoint"
            )
            time.sleep(0.05)
    finally:
        driver.kill()  # SIGKILL: Ray tears down the run's controller and workers with their owner
        driver.wait()

    summary = launch(cfg, "driver")
    assert f"{epochs} epochs, {epochs * STEPS_PER_EPOCH} steps" in summary
    run = only_run(cfg)
    logged = epochs_logged(cfg, run, "d_loss")
    assert run.info.status == "FINISHED" and set(logged) == set(range(1, epochs + 1))
    assert logged.count(1) == 1  # resumed from the checkpoint the killed driver committed, not restarted


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dcgan", "mlp-gan", "infogan", "stackedgan"])
def test_every_family_trains_under_ddp(model: str, ray_cluster: None, tmp_path: Path, store: Path) -> None:
    cfg = ray_config(
        tmp_path, store, f"ddp-{model}", f"model.name={model}", "train.epochs=1", "tracking.enabled=false"
    )
    assert f"1 epochs, {STEPS_PER_EPOCH} steps on 2 workers" in launch(cfg, model)


@pytest.mark.slow
@pytest.mark.timeout(300)  # without the fix, unlimited retries of the same divergence never end
def test_a_diverged_ray_run_is_not_retried_and_ends_failed_with_the_error(
    ray_cluster: None, tmp_path: Path, store: Path
) -> None:
    cfg = ray_config(tmp_path, store, "diverged", "train.lr_d=1e30", "train.lr_g=1e30", "ray.max_failures=-1")
    with pytest.raises(
        ClusterError,
        match=r"Ray Train run diverged failed: (.|\n)*rank \d: training diverged at step \d+: .*not retried",
    ):
        launch(cfg, "diverged")
    run = only_run(cfg)
    assert run.info.status == "FAILED" and "training diverged at step" in run.data.tags["error"]
