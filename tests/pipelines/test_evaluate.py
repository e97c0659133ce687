"""Evaluate a real trained run, promote it, and consume the champion: sample grid, pyfunc, `mlflow models serve`.

Real MLflow (SQLite store in a temporary directory), a tiny SSGAN trained in-process on a tiny
learnable dataset, and a real `mlflow models serve` process answering an HTTP request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from gan_models.config import Config
from gan_models.data.prepared import write_prepared
from gan_models.data.sources import RawDataset
from gan_models.errors import DatasetError, GanOpsError
from pipelines.evaluate import evaluate_run
from pipelines.promotion import promote_run
from pipelines.registry import CHAMPION, Registry
from pipelines.sample import sample
from pipelines.tracking import find_run, resolve_target
from pipelines.train import train_local
from tests.services import free_port
from tests.training.conftest import tiny_config

GENERATOR = "mnist-ssgan-generator"


def blobs(path: Path, n: int, seed: int) -> None:
    """Position-coded blobs (learnable) with a 300-image test split: enough for FD on 128-d features."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, size=(n, 28, 28, 1), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 9:15, 2 + 2 * c : 8 + 2 * c] = 230
    raw = RawDataset(
        {"train": (images[300:], labels[300:]), "test": (images[:300], labels[:300])}, list("0123456789")
    )
    write_prepared(raw, path, name="mnist", labels_per_class=5, label_seed=0, params={"seed": seed})


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    blobs(root / "data" / "mnist", 900, seed=0)
    return root


def config(project: Path, *overrides: str) -> Config:
    return tiny_config(
        "model.name=ssgan",
        "data.dataset=mnist",
        f"data.root={project / 'data'}",
        f"train.output_dir={project / 'runs'}",
        f"tracking.uri=sqlite:///{project / 'mlruns.db'}",
        f"tracking.artifact_root={project / 'artifacts'}",
        "evaluate.num_real=200",
        "evaluate.num_generated=200",
        "evaluate.kid_subsets=10",
        "evaluate.kid_subset_size=100",
        "evaluate.domain_classifier_steps=100",
        "evaluate.inception_fid=false",
        f"promotion.lock_dir={project / 'locks'}",
        *overrides,
    )


@pytest.fixture(scope="module")
def run_id(project: Path) -> str:
    cfg = config(project)
    train_local(cfg, "first")
    found = find_run(resolve_target(cfg.tracking), "first")
    assert found is not None
    return found


def test_evaluate_records_accuracy_fd_and_kid_on_the_run_and_in_a_report(project: Path, run_id: str) -> None:
    cfg = config(project)
    with pytest.raises(GanOpsError, match="has not been evaluated"):
        promote_run(run_id, cfg, project)  # promotion needs an evaluation first

    result = evaluate_run(run_id, cfg, project=project)

    metrics = result.evaluation.metrics
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["domain_fd"] > 0 and np.isfinite(metrics["domain_kid"])
    assert set(result.evaluation.per_class) == set("0123456789")
    run = mlflow.MlflowClient(cfg.tracking.uri).get_run(run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.metrics["test_accuracy_class_3"] == pytest.approx(result.evaluation.per_class["3"])
    tags = run.data.tags
    assert tags["eval.num_real"] == "200" and tags["eval.num_generated"] == "200"
    assert (
        tags["eval.domain_extractor"] == "domain-classifier" and len(tags["eval.domain_extractor_id"]) == 16
    )
    assert tags["eval.domain_implementation"].startswith("ganops-fd-eigh+kid")
    assert tags["eval.domain_n_real"] == "200" and tags["eval.domain_n_fake"] == "200"
    report = json.loads(result.report.read_text())
    assert result.report == project / "runs" / "first" / "evaluation.json"
    assert report["metrics"] == metrics and report["signature"] == tags["eval.signature"]
    artifact = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/evaluation.json")
    assert artifact["metrics"] == metrics

    # Evaluating again gives the same numbers (seeded generation, cached real features).
    again = evaluate_run(run_id, cfg, project=project, report=project / "again.json")
    assert again.evaluation.metrics == metrics and again.evaluation.signature == result.evaluation.signature


def test_a_run_evaluated_against_another_dataset_version_is_refused(project: Path, run_id: str) -> None:
    other = project / "other-data"
    blobs(other / "mnist", 900, seed=1)  # same name and shape, other bytes
    with pytest.raises(DatasetError, match="trained on another version of mnist"):
        evaluate_run(run_id, config(project, f"data.root={other}"), project=project)
    shutil.rmtree(other)


def test_unknown_run_is_a_clear_error(project: Path) -> None:
    with pytest.raises(GanOpsError, match="no MLflow run 'feedbeef'"):
        evaluate_run("feedbeef", config(project), project=project)


def test_a_run_named_to_escape_the_output_folder_writes_no_report(project: Path) -> None:
    """The report's folder is named after the run, and the store holds whatever name anyone gave it."""
    cfg = config(project)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment) or client.get_experiment(
        client.create_experiment(cfg.tracking.experiment)
    )
    run = client.create_run(experiment.experiment_id, run_name="../../escaped")
    client.set_terminated(run.info.run_id, "FINISHED")
    with pytest.raises(GanOpsError, match=r"run name '../../escaped'.*may not leave train.output_dir"):
        evaluate_run(run.info.run_id, cfg, project=project)
    assert not (project.parent / "escaped").exists()


def test_promoted_champion_samples_loads_and_serves(project: Path, run_id: str) -> None:
    cfg = config(project)
    if "eval.signature" not in mlflow.MlflowClient(cfg.tracking.uri).get_run(run_id).data.tags:
        evaluate_run(run_id, cfg, project=project)
    promotion = promote_run(run_id, cfg, project)
    assert promotion.decision.promote and promotion.decision.reason == "no champion yet"
    registry = Registry(cfg.tracking.uri)
    champion = registry.by_alias(GENERATOR, CHAMPION)
    assert champion is not None and champion.run_id == run_id
    assert champion.tags["data_version"] == "unversioned" and "test_accuracy" in champion.metrics
    assert registry.by_alias("mnist-ssgan-classifier", CHAMPION) is not None
    # Where MLflow's UI looks: the evaluation on the logged model (against its dataset), a model card
    # as the version's description, the history as lines on the registered model.
    client = mlflow.MlflowClient(cfg.tracking.uri, registry_uri=cfg.tracking.uri)
    evaluated = mlflow.MlflowClient(cfg.tracking.uri).get_run(run_id).data.metrics
    assert champion.metrics["test_accuracy"] == pytest.approx(evaluated["test_accuracy"])
    assert set(champion.metrics) == {k for k in evaluated if k.startswith(("test_", "domain_"))}
    model_id = champion.tags["model_uri"].removeprefix("models:/")
    on_model = {m.key: m for m in client.get_logged_model(model_id).metrics}
    assert on_model["domain_fd"].dataset_name == "mnist/test" and on_model["domain_fd"].dataset_digest
    card = client.get_model_version(GENERATOR, champion.version).description
    assert f"run `first` (`{run_id}`)" in card and "| test_accuracy |" in card
    assert "Promotion: **promoted**" in card and "no champion yet" in card
    assert "get-artifact?path=evaluation%2Fsamples.png" in card and "mlflow.pyfunc.load_model" in card
    assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == ["evaluation/samples.png"]
    history = client.get_registered_model(GENERATOR).description
    assert f"champion version {champion.version}" in history and "promoted" in history
    # Promoting the same run again registers nothing new and changes nothing.
    assert not promote_run(run_id, cfg, project).decision.promote

    # ganops sample: a grid of 16 tiles of 28 px with 2 px padding.
    grid = sample(f"{GENERATOR}@champion", 16, project / "grid.png", cfg)
    with Image.open(grid) as image:
        assert image.size == (4 * 30 + 2, 4 * 30 + 2)

    # pyfunc by alias.
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model = mlflow.pyfunc.load_model(f"models:/{GENERATOR}@champion")
    local = model.predict(np.array([0, 1, 2], dtype=np.int64))
    assert local.dtype == np.uint8 and local.shape == (3, 28, 28, 1)

    # mlflow models serve, over HTTP.
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.tracking.uri}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{GENERATOR}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"mlflow models serve did not start:\n{server.stdout.read()}"
                    ) from None
                time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": [0, 1, 2]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.array(json.loads(response.read())["predictions"], dtype=np.uint8)
    finally:
        server.terminate()
        server.wait(30)
    assert np.array_equal(served, local)  # the served champion draws the same images for the same seeds


def test_models_load_as_checked_packages_and_never_run_bundled_code(project: Path, run_id: str) -> None:
    """Loading is where a model's bundled code runs: ours loads the package as data, checks its weights
    against the hash the tracking server recorded, and refuses anything else unless trusted by name."""
    from pipelines.evaluate import run_models
    from pipelines.model_packaging import WEIGHTS, UntrustedModelError, load_checked

    cfg = config(project)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    generator = run_models(resolve_target(cfg.tracking), run_id)["generator"]
    uri = generator.model_uri
    artifacts = Path(client.get_logged_model(generator.model_id).artifact_location.removeprefix("file://"))
    assert load_checked(uri, cfg.tracking.uri).predict(np.array([0, 1])).shape == (2, 28, 28, 1)

    weights = next(artifacts.rglob(WEIGHTS))
    original_weights = weights.read_bytes()
    mlmodel = artifacts / "MLmodel"
    original_mlmodel = mlmodel.read_text()
    marker = project / "bundled-code-ran"
    try:
        weights.write_bytes(original_weights[:-4] + b"\0\0\0\0")  # someone wrote to the artifact store
        with pytest.raises(UntrustedModelError, match="weights changed after logging.*trusted_models"):
            load_checked(uri, cfg.tracking.uri)
        with pytest.raises(UntrustedModelError, match="weights changed"):
            sample(f"{GENERATOR}@champion", 4, project / "refused.png", cfg)
        assert not (project / "refused.png").exists()
        weights.write_bytes(original_weights)

        # Its loader swapped for bundled code of another name: refused, and that code never runs...
        (artifacts / "code" / "evil_loader.py").write_text(
            f"open({str(marker)!r}, 'w').close()\nfrom pipelines.model_packaging import _load_pyfunc\n"
        )
        mlmodel.write_text(
            original_mlmodel.replace("loader_module: pipelines.model_packaging", "loader_module: evil_loader")
        )
        with pytest.raises(UntrustedModelError, match="not a package of this project.*evil_loader"):
            load_checked(uri, cfg.tracking.uri)
        assert not marker.exists()
        # ... unless the model is trusted by name: then MLflow loads it, bundled code and all.
        load_checked(uri, cfg.tracking.uri, trusted=[uri])
        assert marker.exists()
    finally:
        weights.write_bytes(original_weights)
        mlmodel.write_text(original_mlmodel)
        (artifacts / "code" / "evil_loader.py").unlink(missing_ok=True)

    # A model that is not one of ours (a pickled python_model) registered under our name.
    class Anything(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:  # noqa: ANN001
            return model_input

    mlflow.set_tracking_uri(cfg.tracking.uri)
    with mlflow.start_run(experiment_id=client.get_run(run_id).info.experiment_id):
        foreign = mlflow.pyfunc.log_model(name="generator", python_model=Anything())
    version = client.create_model_version(GENERATOR, foreign.model_uri, model_id=foreign.model_id).version
    with pytest.raises(UntrustedModelError, match="not a package of this project"):
        sample(f"{GENERATOR}/{version}", 4, project / "refused.png", cfg)


@pytest.mark.slow  # three processes and a training: about 40 s each
@pytest.mark.parametrize("store", ["sqlite", "http"])
def test_training_evaluation_and_promotion_write_to_one_store_at_once(
    store: str, project: Path, tmp_path: Path
) -> None:
    """Three processes on one MLflow store at the same moment (a retrain's training beside an
    evaluation and a promotion of an earlier run): each completes, and nothing any of them wrote is lost."""
    from contextlib import nullcontext

    from pipelines.evaluate import evaluation_of_run
    from tests.services import mlflow_server

    server = mlflow_server(tmp_path / "mlflow") if store == "http" else nullcontext(None)
    with server as url:
        uri = url or f"sqlite:///{tmp_path / 'store.db'}"
        cfg = config(project, f"tracking.uri={uri}", f"train.output_dir={tmp_path / 'runs'}",
                     f"tracking.artifact_root={tmp_path / 'artifacts'}", f"promotion.lock_dir={tmp_path / 'locks'}")  # fmt: skip
        train_local(cfg, "earlier")
        earlier = find_run(resolve_target(cfg.tracking), "earlier")
        assert earlier is not None
        first = evaluate_run(earlier, cfg, project=project).evaluation.metrics
        params = tmp_path / "params.yaml"
        params.write_text(cfg.to_yaml())
        ganops = [sys.executable, "-m", "pipelines"]
        commands = {
            "train": [*ganops, "train", "--no-ray", "--run-name", "busy", "-c", str(params), "--set", "train.epochs=3"],
            "evaluate": [*ganops, "evaluate", "--run", earlier, "-c", str(params)],
            "promote": [*ganops, "promote", "--run", earlier, "-c", str(params)],
        }  # fmt: skip
        processes = {
            name: subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name, command in commands.items()
        }  # fmt: skip
        outputs = {name: p.communicate(timeout=600)[0] for name, p in processes.items()}
        for name, p in processes.items():
            assert p.returncode == 0, f"{name}:\n{outputs[name]}"

        client = mlflow.MlflowClient(uri)
        busy = client.get_run(find_run(resolve_target(cfg.tracking), "busy"))
        assert busy.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(busy.info.run_id, "d_loss")) == [1, 2, 3]
        again = evaluation_of_run(client.get_run(earlier))
        assert again is not None and again[0]["test_accuracy"] == pytest.approx(first["test_accuracy"])
        champion = Registry(uri).by_alias(GENERATOR, CHAMPION)
        assert champion is not None and champion.run_id == earlier
