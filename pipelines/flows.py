"""Prefect flows: `retrain` (data -> train -> evaluate -> promote) and `sweep` (Ray Tune trials, best offered).

Each task is a few lines around a plain function of `pipelines/` (data: `versioning.ensure_data`;
training: `train.train_job`, `ganops train` in a child process; ranking: `promotion.rank`), so
everything here also runs without Prefect. Steps that can fail transiently (DVC, reaching MLflow)
retry with exponential backoff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from gan_models.config import DEFAULT_PARAMS, Config, load_config, redact_secrets, refused_overrides
from gan_models.data.prepared import MANIFEST, sha256_file
from gan_models.errors import GanOpsError
from pipelines.tracking import ensure_experiment, finished_run, resolve_target, training_key
from pipelines.train import check_run_name, run_name_for, train_job


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what may pass on a second try: anything but a user error, except an unreachable service."""
    from pipelines.tracking import TrackingError
    from pipelines.versioning import VersioningError

    try:
        state.result()
    except (TrackingError, VersioningError):
        return True
    except GanOpsError:
        return False  # a bad config, missing data, an unknown run: the same next time
    except Exception:
        return True
    return False


# Steps that reach MLflow or a DVC remote: 3 retries, 5 s, 10 s, 20 s apart.
TRANSIENT = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=5),
    "retry_condition_fn": _transient,
}


# What `ganops schedule` served its deployment with, for the runs it starts (they inherit its environment).
SERVED_ENV = "GANOPS_SERVED_PARAMETERS"


def served_parameters() -> dict[str, Any] | None:
    """In a run of a deployment: the parameters its operator served it with, else None (a direct call)."""
    from prefect.runtime import deployment

    if deployment.id is None:
        return None
    raw = os.environ.get(SERVED_ENV)
    return json.loads(raw) if raw else dict(deployment.parameters or {})


def check_served_run(
    config_path: str, overrides: list[str], project: str | None, served: dict[str, Any]
) -> None:
    """A run of a served deployment (anyone with the Prefect UI can start one, with any parameters) keeps
    the project and params file it was served with, and overrides only what `flow.served_overrides` of
    the served config allows beyond the served overrides; a clear error otherwise, before any work."""
    for key, asked in (("project", project), ("config_path", config_path)):
        if asked != served.get(key):
            raise GanOpsError(
                f"this deployment was served with {key}={served.get(key)!r}; a run of it may not change it "
                f"(asked: {asked!r})"
            )
    root = Path(served["project"] or Path.cwd())
    trusted = list(served.get("overrides") or [])
    base = load_config(root / served["config_path"], trusted)
    refused = refused_overrides(overrides, base.flow.served_overrides, trusted)
    if refused:
        raise GanOpsError(
            f"a run of this deployment may not override {', '.join(refused)} (flow.served_overrides allows "
            f"{', '.join(base.flow.served_overrides)}; a key naming a place only by its exact name)"
        )


def flow_run_env() -> dict[str, str]:
    """The current flow run, for the training child to record on its MLflow run (`ganops lineage`)."""
    from prefect.runtime import flow_run

    from pipelines.tracking import FLOW_RUN_ENV

    values = {"prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name}
    return {FLOW_RUN_ENV[k]: str(v) for k, v in values.items() if v}


# Prefect tasks: thin wrappers.


@task(name="version-data", **TRANSIENT)
def version_data_task(cfg: Config, project: Path) -> dict[str, str]:
    from gan_models.metrics.evaluation import check_evaluation
    from pipelines.versioning import ensure_data

    dataset, version = ensure_data(cfg, project)
    check_evaluation(dataset, cfg.evaluate)  # the flow evaluates what it trains: fail now, not after
    return {
        "dataset": dataset.name,
        "data_version": version,
        "manifest": sha256_file(dataset.path / MANIFEST),
    }


@task(name="reach-mlflow", **TRANSIENT)
def reach_mlflow_task(cfg: Config, project: Path) -> str:
    target = resolve_target(cfg.tracking, project)
    ensure_experiment(target)
    return target.uri


@task(name="previous-training", **TRANSIENT)
def previous_training_task(cfg: Config, project: Path, manifest_sha256: str) -> str | None:
    return finished_run(resolve_target(cfg.tracking, project), training_key(cfg), manifest_sha256)


def _train_task_name() -> str:
    from prefect.runtime import task_run

    given = task_run.parameters
    return f"train {given.get('run_name') or run_name_for(given['cfg'], given['data']['manifest'])}"


# `[run] epoch 3/10 ...`: the training's progress line (`train.EpochLine`).
EPOCH_LINE = re.compile(r"\] epoch (\d+)/(\d+)")


@task(name="train", task_run_name=_train_task_name)
def train_task(cfg: Config, project: Path, data: dict[str, str], force: bool, run_name: str | None) -> str:
    """`ganops train` in a child process; its output in this task's log, its epochs in a progress artifact."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.logging import get_run_logger

    name = run_name or run_name_for(cfg, data["manifest"])
    if force and run_name is None:
        name += f"-{os.urandom(3).hex()}"  # a forced retrain is a new run, not a resume of the old one
    logger = get_run_logger()
    progress = create_progress_artifact(
        0.0, key="training-progress", description=f"training {name}: epochs done"
    )

    def log(line: str) -> None:
        (logger.error if line.startswith("error:") else logger.info)(line)
        if (epoch := EPOCH_LINE.search(line)) is not None:
            update_progress_artifact(progress, 100.0 * int(epoch.group(1)) / int(epoch.group(2)))

    train_job(cfg, project, name, cfg.flow.train_timeout_s, flow_run_env(), log)
    update_progress_artifact(progress, 100.0)
    return name


@task(name="find-run", **TRANSIENT)
def run_id_task(cfg: Config, project: Path, run_name: str) -> str:
    from pipelines.tracking import find_run

    target = resolve_target(cfg.tracking, project)
    run_id = find_run(target, run_name)
    if run_id is None:
        raise GanOpsError(
            f"training {run_name} finished but left no MLflow run in {redact_secrets(target.uri)}"
        )
    return run_id


def train_or_reuse(
    cfg: Config, project: Path, data: dict[str, str], force: bool, run_name: str | None
) -> dict[str, Any]:
    """Inside a flow: the finished run of this data and training config, else a new training's run."""
    existing = None if force else previous_training_task(cfg, project, data["manifest"])
    if existing is not None:
        return {"run_id": existing, "skipped": True}
    name = train_task(cfg, project, data, force, run_name)
    return {"run_id": run_id_task(cfg, project, name), "skipped": False, "name": name}


@task(name="evaluate", task_run_name="evaluate {run_id}", **TRANSIENT)
def evaluate_task(cfg: Config, project: Path, run_id: str) -> dict[str, Any]:
    from pipelines.evaluate import evaluate_run
    from pipelines.progress import StageBars

    with StageBars() as bars:
        result = evaluate_run(run_id, cfg, project=project, progress=bars)
    evaluation = result.evaluation
    return {"metrics": evaluation.metrics, "signature": evaluation.signature, "report": str(result.report)}


@task(name="promote", task_run_name="promote {run_id}", **TRANSIENT)
def promote_task(cfg: Config, project: Path, run_id: str) -> dict[str, Any]:
    from pipelines.promotion import decision_dict, promote_run

    return decision_dict(promote_run(run_id, cfg, project)) | {"run_id": run_id}


def _run_url(uri: str, run_id: str) -> str | None:
    """The run's page in MLflow's UI, where the store is a server (credentials left out)."""
    if not uri.startswith("http"):
        return None
    import mlflow

    experiment = mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id
    return f"{redact_secrets(uri).rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def _run_link(uri: str, run_id: str, url: str | None) -> str:
    """A Markdown link to the run (an artifact in Prefect's UI), `url` its page if it has one."""
    return f"[{run_id}]({url})" if url else f"`{run_id}` (store `{redact_secrets(uri)}`)"


def summary_markdown(summary: dict[str, Any]) -> str:
    metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(summary["metrics"].items()))
    decision = summary["promotion"]
    verdict = "**promoted to champion**" if decision["promote"] else "not promoted"
    return (
        f"# retrain: {summary['dataset']}\n\n"
        f"- data version: `{summary['data_version']}`\n"
        f"- MLflow run: {summary['run_link']}"
        + (" (training skipped: already trained)" if summary["skipped"] else "")
        + f"\n- model: `{decision['name']}` version {decision['version']}: {verdict}\n"
        f"- reason: {decision['reason']}\n\n| metric | value |\n|---|---:|\n{metrics}\n"
    )


def _retrain_run_name() -> str:
    """`retrain <dataset>-<model> <config digest>` for the Prefect UI, from the run's parameters."""
    from prefect.runtime import flow_run

    given = flow_run.parameters
    root = Path(given.get("project") or Path.cwd())
    path = Path(given.get("config_path") or DEFAULT_PARAMS)
    try:
        cfg = load_config(path if path.is_absolute() else root / path, given.get("overrides") or [])
    except GanOpsError:
        return "retrain (invalid config)"  # the flow itself says what is wrong
    return f"retrain {cfg.data.dataset}-{cfg.model.name} {cfg.hash()[:8]}"


@flow(name="retrain", flow_run_name=_retrain_run_name, log_prints=True, persist_result=True)
def retrain(
    config_path: str = str(DEFAULT_PARAMS),
    overrides: list[str] | None = None,
    force: bool = False,
    run_name: str | None = None,
    project: str | None = None,
) -> dict[str, Any]:
    """Version the data, train with Ray Train (skipped if this data and config already trained), evaluate,
    promote; publish a summary artifact."""
    served = served_parameters()
    if served is not None:
        check_served_run(config_path, list(overrides or []), project, served)
    root = Path(project or Path.cwd()).resolve()
    if run_name is not None:
        check_run_name(run_name)
    cfg = load_config(
        root / config_path if not Path(config_path).is_absolute() else Path(config_path), overrides
    )
    data = version_data_task(cfg, root)
    uri = reach_mlflow_task(cfg, root)
    trained = train_or_reuse(cfg, root, data, force, run_name)
    evaluation = evaluate_task(cfg, root, trained["run_id"])
    promotion = promote_task(cfg, root, trained["run_id"])
    url = _run_url(uri, trained["run_id"])
    summary = {
        **data,
        "run_id": trained["run_id"],
        "skipped": trained["skipped"],
        "metrics": evaluation["metrics"],
        "promotion": promotion,
        "run_link": _run_link(uri, trained["run_id"], url),
    }
    create_markdown_artifact(summary_markdown(summary), key="retrain-summary", description="retrain result")
    if url is not None:
        create_link_artifact(url, link_text=f"MLflow run {trained['run_id']}", key="mlflow-run")
    print(f"{promotion['name']} v{promotion['version']}: {promotion['reason']}")
    return summary


@task(name="tune")
def tune_task(config_path: Path, overrides: list[str], params: list[str], project: Path) -> Any:
    from pipelines.tune import parse_axis, run_sweep

    return run_sweep(config_path, overrides, [parse_axis(p) for p in params], project)


@flow(name="sweep", log_prints=True, persist_result=True)
def sweep(
    params: list[str],
    config_path: str = str(DEFAULT_PARAMS),
    overrides: list[str] | None = None,
    project: str | None = None,
) -> dict[str, Any]:
    """Train the configs of `params` (`-p` axes) as Ray Tune trials, ASHA stopping the trailing ones;
    evaluate the finished ones and offer the best to the promotion policy."""
    from dataclasses import asdict

    from pipelines.promotion import rank
    from pipelines.registry import Version
    from pipelines.tune import finish_sweep, parse_axis, summary_table

    root = Path(project or Path.cwd()).resolve()
    path = root / config_path if not Path(config_path).is_absolute() else Path(config_path)
    base = list(overrides or [])
    for param in params:
        parse_axis(param)  # a bad axis fails before any work
    cfg = load_config(path, base)
    data = version_data_task(cfg, root)
    reach_mlflow_task(cfg, root)
    result = tune_task(path, base, params, root)
    finished = [t for t in result.finished() if t.run_id is not None]
    if not finished:
        states = ", ".join(f"{' '.join(t.overrides)}: {t.status}" for t in result.trials)
        raise GanOpsError(f"sweep {result.name}: no trial finished ({states})")
    evaluations = {t.run_id: evaluate_task(cfg, root, t.run_id) for t in finished}
    # The policy that guards the champion also picks the sweep's candidate.
    candidates = [
        Version("sweep", run_id, run_id, e["signature"], e["metrics"], {})
        for run_id, e in evaluations.items()
    ]
    best_id = rank(candidates, cfg.promotion)[0].run_id
    promotion = promote_task(cfg, root, best_id)
    table = summary_table(result, {run_id: e["metrics"] for run_id, e in evaluations.items()})
    finish_sweep(resolve_target(cfg.tracking, root), result, table, best_id)
    create_markdown_artifact(
        f"# sweep {result.name} ({data['data_version']})\n\n{table}\n\nbest: `{best_id}`; "
        f"{promotion['name']} v{promotion['version']}: {promotion['reason']}\n",
        key="sweep-summary",
    )
    trials = [asdict(t) | {"metrics": evaluations.get(t.run_id, {}).get("metrics")} for t in result.trials]
    create_table_artifact(
        [
            {
                "trial": " ".join(t["overrides"]),
                "status": t["status"],
                "epochs": t["epochs"],
                "run": t["run_id"],
            }
            | {k: v for k, v in (t["metrics"] or {}).items() if "_class_" not in k}
            for t in trials
        ],
        key="sweep-trials",
        description=f"sweep {result.name}: every trial",
    )
    best = next(t for t in trials if t["run_id"] == best_id)
    return {"name": result.name, "trials": trials, "best": best, "promotion": promotion}
