"""`ganops train --no-ray`: verified data in, checkpoint and samples out, same run name resumes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import GANOPS, PROJECT, run

TINY = [
    "--set",
    "data.synthetic.train_size=240",
    "--set",
    "data.synthetic.test_size=20",
    "--set",
    "data.labels_per_class=4",
    "--set",
    "data.synthetic.workers=1",
]
MODEL = [
    "--set",
    "model.name=dcgan",
    "--set",
    "model.g_features=8",
    "--set",
    "model.d_features=8",
    "--set",
    "train.batch_size=40",
    "--set",
    "train.device=cpu",
    "--set",
    "tracking.enabled=false",  # tracking has its own tests (tests/pipelines/test_tracking.py)
]


def test_train_resume_and_finish(dvc_repo: Path) -> None:
    run([*GANOPS, "data", "prepare", "--no-version", *TINY], cwd=dvc_repo)
    out = run(
        [*GANOPS, "train", "--no-ray", "--run-name", "r", *TINY, *MODEL, "--set", "train.epochs=1"],
        cwd=dvc_repo,
    )
    assert "1 epochs, 6 steps" in out.stdout
    assert (dvc_repo / "runs" / "r" / "samples" / "epoch_0001.png").exists()
    assert "model:\n  name: dcgan" in (dvc_repo / "runs" / "r" / "config.yaml").read_text()
    out = run(
        [*GANOPS, "train", "--no-ray", "--run-name", "r", *TINY, *MODEL, "--set", "train.epochs=2"],
        cwd=dvc_repo,
    )
    assert "2 epochs, 12 steps" in out.stdout  # resumed: the first epoch was not run again
    out = run(
        [*GANOPS, "train", "--no-ray", "--run-name", "r", *TINY, *MODEL, "--set", "train.epochs=2"],
        cwd=dvc_repo,
    )
    assert "already trained for 2 epochs" in out.stdout


def test_corrupted_data_fails_before_training(dvc_repo: Path) -> None:
    run([*GANOPS, "data", "prepare", "--no-version", *TINY], cwd=dvc_repo)
    images = dvc_repo / "data" / "synthetic-svhn" / "train_images.npy"
    array = np.load(images)
    array[0, 0, 0, 0] ^= 0xFF
    np.save(images, array)
    proc = run([*GANOPS, "train", "--no-ray", *TINY, *MODEL], cwd=dvc_repo, check=False)
    assert proc.returncode == 2
    assert "failed verification" in proc.stderr and "train_images.npy: sha256 differs" in proc.stderr
    assert not (dvc_repo / "runs").exists()


def test_missing_data_fails_clearly(dvc_repo: Path) -> None:
    proc = run([*GANOPS, "train", "--no-ray", *MODEL], cwd=dvc_repo, check=False)
    assert proc.returncode == 2 and "manifest.json: missing" in proc.stderr


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", "..", ".hidden", ""])
def test_run_names_that_leave_the_output_folder_are_refused_before_any_work(
    name: str, tmp_path: Path
) -> None:
    from gan_models.config import load_config
    from gan_models.errors import GanOpsError
    from pipelines.train import train_local

    cfg = load_config(None, [f"train.output_dir={tmp_path / 'runs'}", f"data.root={tmp_path / 'nodata'}"])
    with pytest.raises(GanOpsError, match=r"run name .*it names a folder"):
        train_local(cfg, name)  # the data does not exist either: the name is checked first
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--cron", "0 3 * * 1", "--timezone", "Europe/Pariss"],
            "--timezone 'Europe/Pariss' is not a time zone",
        ),
        (["--cron", "0 3 * * 1", "--timezone", "../../etc/passwd"], "is not a time zone"),
        (["--cron", "every monday"], "--cron 'every monday'"),
    ],
)
def test_a_bad_schedule_is_one_clear_error_before_anything_is_served(args: list[str], says: str) -> None:
    proc = run([*GANOPS, "schedule", *args], cwd=PROJECT, check=False)
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr


def test_version_names_the_package_and_its_stack() -> None:
    from importlib.metadata import version

    out = run([*GANOPS, "--version"], cwd=PROJECT).stdout
    assert out.startswith(f"ganops {version('ganops')} (torch {version('torch')}, ray {version('ray')}")


@pytest.mark.parametrize(
    "command",
    [
        ["rollback", "m"],
        ["registry", "history", "m"],
        ["registry", "show", "m"],
        ["sample", "--model", "m@champion", "--out", "never.png"],
        ["evaluate", "--run-name", "r"],
    ],
)
def test_an_unreachable_tracking_server_is_one_clear_error(command: list[str], tmp_path: Path) -> None:
    # Port 9 (discard) refuses: MLflow's own retries would take minutes, then print a traceback.
    proc = run([*GANOPS, *command, "--set", "tracking.uri=http://127.0.0.1:9"], cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert (
        "MLflow tracking at http://127.0.0.1:9 is unreachable" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    assert not (tmp_path / "never.png").exists()


def test_a_run_name_that_would_reach_into_an_mlflow_filter_is_refused() -> None:
    proc = run([*GANOPS, "evaluate", "--run-name", "x' or '1'='1"], cwd=PROJECT, check=False)
    assert proc.returncode == 2 and "run name \"x' or '1'='1\"" in proc.stderr


def test_a_second_launcher_of_the_same_run_name_is_refused_naming_the_holder(dvc_repo: Path) -> None:
    run([*GANOPS, "data", "prepare", "--no-version", *TINY], cwd=dvc_repo)
    holder = subprocess.Popen(  # holds the run's lock as a running `ganops train` does
        [sys.executable, "-c", _HOLD, str(dvc_repo / "runs")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run(
            [*GANOPS, "train", "--no-ray", "--run-name", "r", *TINY, *MODEL], cwd=dvc_repo, check=False
        )
        assert proc.returncode == 2 and f"run r is being trained by process {holder.pid}" in proc.stderr
        assert not (dvc_repo / "runs" / "r").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (killed, as a crashed launcher would be): the run is free again.
    run(
        [*GANOPS, "train", "--no-ray", "--run-name", "r", *TINY, *MODEL, "--set", "train.epochs=1"],
        cwd=dvc_repo,
    )


def test_ray_launchers_of_one_run_name_on_shared_checkpoint_storage_exclude_each_other(
    dvc_repo: Path, tmp_path: Path
) -> None:
    """Two machines with their own train.output_dir and one shared ray.storage_path (NFS): the lock is
    where the checkpoints are, so the second launcher is refused before Ray starts."""
    run([*GANOPS, "data", "prepare", "--no-version", *TINY], cwd=dvc_repo)
    shared = tmp_path / "shared-checkpoints"
    holder = subprocess.Popen(  # the other machine's launcher, holding the lock on the shared storage
        [sys.executable, "-c", _HOLD, str(shared)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run(
            [*GANOPS, "train", "--run-name", "r", *TINY, *MODEL, "--set", f"ray.storage_path={shared}",
             "--set", "ray.num_workers=1"],
            cwd=dvc_repo, check=False,
        )  # fmt: skip
        assert proc.returncode == 2 and f"run r is being trained by process {holder.pid}" in proc.stderr
        assert "Ray dashboard" not in proc.stdout + proc.stderr  # refused before Ray started
    finally:
        holder.kill()
        holder.wait()


_HOLD = """
import sys, time
import subprocess
import sys
from pathlib import Path
from gan_models.config import load_config
from pipelines.train import run_lock
with run_lock(load_config(None, [f"train.output_dir={sys.argv[1]}"]), "r"):
    print("held", flush=True)
    time.sleep(600)
"""
