"""`ganops sweep` on Ray Tune: the search-space syntax, checks before Ray starts, and a real sweep on a
local Ray instance (2 CPUs) with a real MLflow store: ASHA stops the trailing trial, its run ends KILLED
with its checkpoints kept, every trial is a child run of the sweep's, and a rerun resumes without
re-training what finished."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray

from gan_models.data.prepare import carve_split
from gan_models.data.prepared import write_prepared
from gan_models.data.sources import RawDataset
from gan_models.errors import ConfigError
from pipelines.tune import Axis, parse_axis, run_sweep, trial_count
from tests.training.conftest import tiny_dataset


def test_axes_parse_as_grids_and_ranges_and_bad_ones_name_the_problem() -> None:
    assert parse_axis("train.lr_g=1e-4,3e-4") == Axis("train.lr_g", values=(1e-4, 3e-4))
    assert parse_axis("seed=0,1,2").values == (0, 1, 2)
    assert parse_axis("train.lr_d = loguniform(1e-4, 1e-3)") == Axis(
        "train.lr_d", distribution="loguniform", low=1e-4, high=1e-3
    )
    assert parse_axis("model.d_dropout=uniform(0,0.5)").distribution == "uniform"
    for bad, says in [
        ("train.lr_g", "expected KEY=V1,V2"),
        ("train.lr_g=loguniform(0,1e-3)", "LOW > 0"),
        ("train.lr_g=uniform(1e-3,1e-4)", "LOW < HIGH"),
        ("train.lr_g=normal(0,1)", "unknown distribution"),
        ("data.val_size=10,20", "shared by its trials"),
        ("tracking.uri=a,b", "shared by its trials"),
        ("train.output_dir=a,b", "share one output directory"),
    ]:
        with pytest.raises(ConfigError, match=says):
            parse_axis(bad)


def test_the_trial_count_is_every_grid_combination_times_the_samples() -> None:
    grid = [parse_axis("seed=0,1,2"), parse_axis("train.lr_g=1e-4,3e-4")]
    assert trial_count(grid, 1) == 6
    assert trial_count([*grid, parse_axis("train.lr_d=loguniform(1e-4,1e-3)")], 4) == 24


def prepared(root: Path) -> None:
    """A tiny labelled dataset with a validation split (ASHA compares validation scores)."""
    plain = tiny_dataset(root / "plain", n=600)
    raw = RawDataset(
        {
            s: (np.asarray(plain.images(s)).transpose(0, 2, 3, 1), np.asarray(plain.labels(s)))
            for s in plain.splits
        },
        plain.class_names,
    )
    write_prepared(
        carve_split(raw, "val", 200, seed=0),
        root / "mnist",
        name="mnist",
        labels_per_class=2,
        label_seed=0,
        params={},
    )


def sweep_overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "model.name=ssgan",
        "model.g_features=8",
        "model.d_features=8",
        "model.latent_dim=16",
        "data.dataset=mnist",
        f"data.root={tmp_path / 'data'}",
        f"train.output_dir={tmp_path / 'runs'}",
        "train.batch_size=20",
        "train.device=cpu",
        "train.eval_every=1",
        "train.eval_images=200",
        "evaluate.domain_classifier_steps=30",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        "ray.num_workers=1",
        "sweep.max_concurrent=2",
        *extra,
    ]


def test_a_bad_config_at_the_edge_of_the_space_fails_before_ray_starts(tmp_path: Path) -> None:
    prepared(tmp_path / "data")
    with pytest.raises(ConfigError, match="train.batch_size"):
        run_sweep(None, sweep_overrides(tmp_path), [parse_axis("train.batch_size=20,0")], tmp_path)
    with pytest.raises(ConfigError, match="train.eval_every"):
        run_sweep(None, sweep_overrides(tmp_path, "train.eval_every=0"), [parse_axis("seed=0,1")], tmp_path)
    assert not ray.is_initialized()


@pytest.mark.slow  # about 4.5 min on 2 cores: 3 Ray Train launches, then the resume
@pytest.mark.timeout(1200)  # a loaded 2-core machine takes twice as long
def test_asha_stops_the_trailing_trial_and_a_rerun_resumes_without_retraining(tmp_path: Path) -> None:
    prepared(tmp_path / "data")
    overrides = sweep_overrides(tmp_path, "train.epochs=3", "sweep.grace_period=1")
    # A learning rate of 1e-9 learns nothing: started third, it trails the two that learn at epoch 1.
    axes = [parse_axis("train.lr_d=3e-3,2e-3,1e-9")]
    result = run_sweep(None, overrides, axes, tmp_path)
    trials = {t.overrides[0]: t for t in result.trials}
    bad = trials["train.lr_d=1e-09"]
    assert bad.status == "stopped" and bad.epochs < 3, result.trials
    # Which of the two that learn leads a rung depends on which reports first; one finishes.
    finished = [t for t in result.trials if t.status == "finished"]
    assert finished and all(t.epochs == 3 for t in finished), result.trials

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    for trial in result.trials:  # one child run per trial
        assert client.get_run(trial.run_id).data.tags["mlflow.parentRunId"] == result.parent_run_id
    stopped = client.get_run(bad.run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags["ganops.stopped_by"] == "scheduler"
    assert "ASHA" in stopped.data.tags["stop_reason"]
    assert any((tmp_path / "runs" / "ray" / bad.run_name).glob("checkpoint_*/checkpoint_best.pt"))
    for trial in finished:
        run = client.get_run(trial.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["model_selection"] == "best"
    for trial in result.trials:
        if trial.status == "stopped":
            assert client.get_run(trial.run_id).info.status == "KILLED"

    # The same sweep again resumes Tune's experiment: nothing that ended trains again.
    logged = {t.run_id: len(client.get_metric_history(t.run_id, "d_loss")) for t in result.trials}
    again = run_sweep(None, overrides, axes, tmp_path)
    assert sorted((t.run_id, t.status, t.epochs) for t in again.trials) == sorted(
        (t.run_id, t.status, t.epochs) for t in result.trials
    )
    assert {t.run_id: len(client.get_metric_history(t.run_id, "d_loss")) for t in again.trials} == logged
