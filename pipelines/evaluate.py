"""`ganops evaluate --run RUN_ID`: measure a finished training's models and record the results on its run.

The models are loaded from the run's logged models as packages checked before they load (no bundled code
runs: `model_packaging.load_checked`) and predict exactly as consumers' MLflow pyfunc models do, the
dataset must be the version the run trained on, and the numbers go to the run (metrics, `eval.*` tags,
`evaluation.json`) and to a JSON report on disk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan_models.config import Config, DataConfig
from gan_models.data.prepare import open_verified
from gan_models.data.prepared import MANIFEST, PreparedDataset, sha256_file
from gan_models.errors import DatasetError, GanOpsError
from gan_models.io import write_text
from gan_models.metrics.evaluation import Evaluation, evaluate, wants_inception
from pipelines.model_card import SAMPLES_ARTIFACT
from pipelines.model_packaging import load_checked
from pipelines.sample import grid
from pipelines.tracking import TrackingTarget, ensure_experiment, resolve_target

REPORT_NAME = "evaluation.json"
SIGNATURE_TAG = "eval.signature"


@dataclass
class RunEvaluation:
    run_id: str
    run_name: str
    evaluation: Evaluation
    report: Path
    models: dict[str, str]  # kind -> model URI (models:/<model id>)


def run_models(target: TrackingTarget, run_id: str) -> dict[str, Any]:
    """The latest logged model of each name ("generator", "classifier") that run `run_id` produced."""
    import mlflow

    client = mlflow.MlflowClient(target.uri)
    run = client.get_run(run_id)
    found = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": True}],
    )
    return {m.name: m for m in found}  # later models (a resumed training's) replace earlier ones


def get_finished_run(target: TrackingTarget, run_id: str) -> Any:
    """The run, which must exist and have finished; a clear error otherwise."""
    import mlflow
    from mlflow.exceptions import MlflowException

    ensure_experiment(target)  # fails fast, naming the URI, when the store is unreachable
    try:
        run = mlflow.MlflowClient(target.uri).get_run(run_id)
    except MlflowException:
        raise GanOpsError(f"no MLflow run {run_id!r} at {target.uri}") from None
    if run.info.status != "FINISHED":
        raise GanOpsError(f"run {run_id} is {run.info.status}; only finished trainings can be evaluated")
    return run


def run_config(target: TrackingTarget, run: Any) -> Config:
    """The resolved config the run trained with: its `config.yaml` artifact (logged when training finished).

    Read through the run's own store (a server's `mlflow-artifacts:` URIs resolve only against it).
    """
    import tempfile

    import mlflow
    import yaml

    with tempfile.TemporaryDirectory(prefix="ganops-config-") as tmp:
        try:
            path = mlflow.MlflowClient(target.uri).download_artifacts(run.info.run_id, "config.yaml", tmp)
            text = Path(path).read_text()
        except Exception as e:  # MLflow raises several types (missing artifact, unreachable store)
            raise GanOpsError(
                f"run {run.info.run_id}: its config.yaml artifact cannot be read from {target.uri} "
                f"({type(e).__name__}: {str(e).strip()[:200]})"
            ) from None
    return Config.model_validate(yaml.safe_load(text))


def dataset_of_run(run: Any, trained: Config, data_root: Path) -> PreparedDataset:
    """The verified prepared dataset the run trained on; an error if `data_root` holds another version."""
    data_cfg = DataConfig(root=data_root, dataset=trained.data.dataset)
    dataset = open_verified(data_cfg)
    expected = run.data.tags.get("data_manifest_sha256")
    actual = sha256_file(dataset.path / MANIFEST)
    if expected and expected != actual:
        version = run.data.tags.get("data_version", "unknown")
        raise DatasetError(
            f"run {run.info.run_id} trained on another version of {trained.data.dataset} (data version "
            f"{version}, manifest sha256 {expected[:12]}...) than {dataset.path} holds (manifest sha256 "
            f"{actual[:12]}...): check out that data version (git checkout + `ganops data pull`) to evaluate it"
        )
    return dataset


def evaluate_run(
    run_id: str,
    cfg: Config,
    *,
    project: Path | None = None,
    report: Path | None = None,
    progress: Any = None,
) -> RunEvaluation:
    """Evaluate run `run_id`'s generator and classifier; log the results to the run and a JSON report."""
    import mlflow
    from mlflow.entities import Metric, RunTag

    project = (project or Path.cwd()).resolve()
    target = resolve_target(cfg.tracking, project)
    run = get_finished_run(target, run_id)
    if report is None:
        # The run name comes from the store, where anyone may have written it: it must stay one folder.
        from pipelines.train import check_run_name

        report = project / cfg.train.output_dir / check_run_name(run.info.run_name) / REPORT_NAME
    trained = run_config(target, run)
    dataset = dataset_of_run(run, trained, (project / cfg.data.root).resolve())
    models = run_models(target, run_id)
    if "generator" not in models:
        raise GanOpsError(f"run {run_id} logged no generator model (was tracking.log_models false?)")

    loaded = {
        kind: load_checked(m.model_uri, target.uri, cfg.tracking.trusted_models) for kind, m in models.items()
    }
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inception = wants_inception(cfg.evaluate, dataset, device)
    evaluation = evaluate(
        dataset,
        cfg.evaluate,
        generate=loaded["generator"].predict,
        classify=loaded["classifier"].predict if "classifier" in loaded else None,
        device=device,
        inception=inception,
        progress=progress,
    )

    # Record: metrics and how they were made on the run, the whole report as an artifact and a file.
    client = mlflow.MlflowClient(target.uri)
    now = int(time.time() * 1000)
    metrics = evaluation.metrics | {
        f"test_accuracy_class_{name}": value for name, value in evaluation.per_class.items()
    }
    tags = {f"eval.{k}": v for k, v in evaluation.info.items()} | {SIGNATURE_TAG: evaluation.signature}
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    # The same numbers on each logged model, against the evaluation dataset: MLflow's model and
    # model-version pages show them, and the promotion policy reads them from there.
    evaluated_on = {
        "dataset_name": f"{dataset.name}/{cfg.evaluate.split}",
        "dataset_digest": evaluation.info["dataset_version"],
    }
    for model in models.values():
        client.log_batch(
            run_id,
            metrics=[
                Metric(k, float(v), now, 0, model_id=model.model_id, **evaluated_on)
                for k, v in metrics.items()
            ],
        )
    # The fixed-seed grid that the model card shows.
    samples = grid(np.asarray(loaded["generator"].predict(np.arange(64, dtype=np.int64)), dtype=np.uint8))
    client.log_image(
        run_id, samples.squeeze(-1) if samples.shape[-1] == 1 else samples, artifact_file=SAMPLES_ARTIFACT
    )
    body = {"run_id": run_id, "run_name": run.info.run_name, **evaluation.to_dict()}
    body["models"] = {kind: m.model_uri for kind, m in models.items()}
    client.log_dict(run_id, body, REPORT_NAME)
    write_json(report, body)
    return RunEvaluation(
        run_id, run.info.run_name, evaluation, report, {k: m.model_uri for k, m in models.items()}
    )


def write_json(path: Path, body: dict[str, Any]) -> None:
    """Write atomically: a reader sees the old report or the new one, never half of one."""
    write_text(path, json.dumps(body, indent=2, sort_keys=True) + "\n")


def evaluation_of_run(run: Any) -> tuple[dict[str, float], dict[str, str]] | None:
    """The metrics and `eval.*` info recorded on a run by `evaluate_run`, or None if never evaluated."""
    tags = run.data.tags
    if SIGNATURE_TAG not in tags:
        return None
    info = {k.removeprefix("eval."): v for k, v in tags.items() if k.startswith("eval.")}
    return dict(run.data.metrics), info
