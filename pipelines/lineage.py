"""`ganops lineage REF`: where a registered model (or a run) came from, in one query.

For `NAME@ALIAS`, `NAME/VERSION` or a run id: the run (status, times), the git commit and whether the
tree was dirty, the resolved config (its digest, where it is), the data version with the DVC remote and
the command that restores those bytes, the Prefect flow run that started it, where its checkpoints are,
its evaluation and signature, and the promotion decision about the version.
"""

from __future__ import annotations

import time
from typing import Any

import yaml

from gan_models.config import Config
from gan_models.errors import GanOpsError
from pipelines.registry import Registry, RegistryError, parse_model_ref
from pipelines.tracking import TrackingTarget, reaching


def _when(ms: int | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else None


def lineage(ref: str, target: TrackingTarget) -> dict[str, Any]:
    """Everything recorded about `ref`'s origin, as plain data (`--json` prints it as is)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with reaching(target.uri):
        registry = Registry(target.uri)
        client = mlflow.MlflowClient(target.uri)
        model: dict[str, Any] | None = None
        name, alias, version = parse_model_ref(ref)
        if alias is not None or version is not None:
            found = (
                registry.by_alias(name, alias) if alias is not None else registry.get_version(name, version)
            )
            if found is None:
                raise RegistryError(f"registered model {name!r} has no alias {alias!r}")
            if not found.run_id:
                raise GanOpsError(
                    f"{ref}: version {found.version} names no run; it was not registered by ganops"
                )
            mv = registry.client.get_model_version(name, found.version)
            model = {
                "name": name,
                "version": found.version,
                "aliases": sorted(mv.aliases),
                "promotion": {
                    k.removeprefix("promotion."): v
                    for k, v in found.tags.items()
                    if k.startswith("promotion.")
                },
            }
            run_id = found.run_id
        else:
            run_id = ref
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise GanOpsError(
                f"{ref!r} is neither a registered model (NAME@ALIAS, NAME/VERSION) nor a run in {target.uri}"
            ) from None
        try:
            config = yaml.safe_load(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml"))
            digest: str | None = Config.model_validate(config).hash()
        except Exception:  # a run that never finished has no config.yaml artifact yet
            digest = None
    tags = run.data.tags
    data_dvc = tags.get("dvc.data_dvc")
    return {
        "model": model,
        "run": {
            "id": run.info.run_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "started": _when(run.info.start_time),
            "ended": _when(run.info.end_time),
            "experiment_id": run.info.experiment_id,
            "stop_reason": tags.get("stop_reason"),
        },
        "code": {"git_commit": tags.get("git_commit"), "dirty": tags.get("git_dirty") == "true"},
        "config": {
            "digest": digest,
            "artifact": f"runs:/{run.info.run_id}/config.yaml",
            "training_key": tags.get("ganops.training_key"),
        },
        "data": {
            "dataset": tags.get("dataset"),
            "version": tags.get("data_version"),
            "manifest_sha256": tags.get("data_manifest_sha256"),
            "dvc_remote": tags.get("dvc.remote"),
            "restore": f"ganops data checkout {run.info.run_id}" if data_dvc else None,
        },
        "prefect": {
            "flow_run_id": tags.get("prefect.flow_run_id"),
            "flow_run_name": tags.get("prefect.flow_run_name"),
        },
        "checkpoints": tags.get("ganops.checkpoints"),
        "evaluation": {
            "signature": tags.get("eval.signature"),
            "metrics": {
                k: v
                for k, v in sorted(run.data.metrics.items())
                if k in {"test_accuracy", "domain_fd", "domain_kid", "inception_fid"}
            },
        },
    }


def lineage_text(found: dict[str, Any]) -> str:
    """`lineage` for people: one line per fact."""
    run, data, code = found["run"], found["data"], found["code"]
    lines = []
    if found["model"] is not None:
        model = found["model"]
        aliases = ", ".join(model["aliases"]) or "no alias"
        lines.append(f"model       {model['name']} version {model['version']} ({aliases})")
        promotion = model["promotion"]
        if promotion:
            lines.append(
                f"promotion   {promotion.get('decision')} {promotion.get('time')}: {promotion.get('reason')}"
            )
    lines += [
        f"run         {run['id']} ({run['name']}), {run['status']}, {run['started']} .. {run['ended']}"
        + (f"; {run['stop_reason']}" if run["stop_reason"] else ""),
        f"code        git {code['git_commit']}" + (" (dirty: uncommitted changes)" if code["dirty"] else ""),
        f"config      digest {found['config']['digest']}, {found['config']['artifact']}",
        f"data        {data['dataset']} version {data['version']} (manifest sha256 {(data['manifest_sha256'] or '?')[:16]}), "
        f"DVC remote {data['dvc_remote'] or 'not recorded'}",
        f"restore     {data['restore'] or 'not versioned with DVC: no restore command'}",
    ]
    prefect = found["prefect"]
    lines.append(
        f"prefect     flow run {prefect['flow_run_name']} ({prefect['flow_run_id']})"
        if prefect["flow_run_id"]
        else "prefect     not started by a flow"
    )
    lines.append(f"checkpoints {found['checkpoints'] or 'not recorded'}")
    evaluation = found["evaluation"]
    numbers = ", ".join(f"{k} {v:.4g}" for k, v in evaluation["metrics"].items()) or "not evaluated"
    lines.append(f"evaluation  {numbers} (signature {evaluation['signature']})")
    return "\n".join(lines)
