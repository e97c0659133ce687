"""`ganops`: the one command-line entry point."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gan_models.config import DEFAULT_PARAMS, Config, load_config, redact_secrets
from gan_models.errors import GanOpsError

app = typer.Typer(
    help="GAN training pipeline: versioned data (DVC), training (Ray Train), tracking (MLflow), flows (Prefect).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare, version and verify datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
registry_app = typer.Typer(help="Inspect the model registry.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(
            f"ganops {version('ganops')} (torch {version('torch')}, ray {version('ray')}, "
            f"mlflow {version('mlflow')}, prefect {version('prefect')}, dvc {version('dvc')})"
        )
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the versions and exit"),
    ] = False,
) -> None:
    """GAN training pipeline: versioned data (DVC), training (Ray Train), tracking (MLflow), flows (Prefect)."""


ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="params file (missing default: embedded defaults)")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a config key, e.g. --set train.lr_g=2e-4")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the resolved config and exit")]


def _prefect_defaults() -> None:
    """Without $PREFECT_API_URL Prefect starts a temporary server; give it time on a busy small machine."""
    import os

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _config(config: Path, overrides: list[str] | None, dry_run: bool) -> Config:
    cfg = load_config(config, overrides or [])
    if dry_run:
        typer.echo(cfg.to_public_yaml(), nl=False)
        raise typer.Exit(0)
    return cfg


@app.command("config")
def show_config(config: ConfigOpt = DEFAULT_PARAMS, overrides: SetOpt = None) -> None:
    """Print the resolved config (params file + overrides), validated."""
    _config(config, overrides, dry_run=True)


@data_app.command("prepare")
def data_prepare(
    dataset: Annotated[str | None, typer.Option(help="dataset name (default: data.dataset)")] = None,
    source: Annotated[Path | None, typer.Option(help="directory holding the source files")] = None,
    version: Annotated[bool, typer.Option(help="dvc add + dvc push data/ afterwards")] = True,
    repo: Annotated[Path, typer.Option(help="the DVC project")] = Path("."),
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Prepare a dataset into data/<name>/ and version it with DVC; prints the data version."""
    from gan_models.data.prepare import prepare_dataset
    from pipelines.progress import StageBars
    from pipelines.versioning import version_data

    extra = [f"data.dataset={dataset}"] if dataset else []
    extra += [f"data.source={source}"] if source else []
    cfg = _config(config, (overrides or []) + extra, dry_run)
    if not cfg.data.root.is_absolute():
        cfg.data.root = repo / cfg.data.root
    with StageBars() as bars:
        prepared = prepare_dataset(cfg.data, progress=bars)
    counts = ", ".join(f"{s} {info['count']:,}" for s, info in prepared.manifest["splits"].items())
    typer.echo(f"prepared {prepared.name} at {prepared.path}: {counts}")
    if version:
        typer.echo(f"data version: {version_data(repo)}")


@data_app.command("verify")
def data_verify(
    dataset: Annotated[
        list[str] | None, typer.Option(help="dataset(s) to check (default: all in data/)")
    ] = None,
    root: Annotated[Path, typer.Option(help="prepared data root")] = Path("data"),
) -> None:
    """Re-hash prepared files against their manifests; exit 1 naming every file that differs."""
    from gan_models.data.prepared import MANIFEST, verify_prepared

    names = dataset or sorted(p.parent.name for p in root.glob(f"*/{MANIFEST}"))
    if not names:
        raise GanOpsError(f"no prepared datasets under {root}/ (run `ganops data prepare`)")
    failed = False
    for name in names:
        problems = verify_prepared(root / name)
        failed |= bool(problems)
        typer.echo(f"{name}: " + ("ok" if not problems else "FAILED\n  " + "\n  ".join(problems)))
    if failed:
        raise typer.Exit(1)


@data_app.command("version")
def data_version_cmd(repo: Annotated[Path, typer.Option(help="the DVC project")] = Path(".")) -> None:
    """Print the current data version (the md5 that data.dvc records)."""
    from pipelines.versioning import data_version

    typer.echo(data_version(repo))


@data_app.command("pull")
def data_pull(repo: Annotated[Path, typer.Option(help="the DVC project")] = Path(".")) -> None:
    """Restore data/ from the DVC remote (hashes verified), then verify every manifest."""
    from pipelines.versioning import pull_data

    version = pull_data(repo)
    data_verify(dataset=None, root=repo / "data")
    typer.echo(f"data version: {version}")


@data_app.command("checkout")
def data_checkout(
    run: Annotated[str, typer.Argument(help="the MLflow run id whose training data to restore")],
    repo: Annotated[Path, typer.Option(help="the DVC project")] = Path("."),
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
) -> None:
    """Bring data/ back to the exact bytes run RUN trained on (its recorded data.dvc, pulled and verified)."""
    import mlflow

    from pipelines.tracking import reaching, resolve_target
    from pipelines.versioning import checkout_data

    cfg = _config(config, overrides, dry_run=False)
    target = resolve_target(cfg.tracking, repo.resolve())
    with reaching(target.uri):
        try:
            tags = mlflow.MlflowClient(target.uri).get_run(run).data.tags
        except mlflow.exceptions.MlflowException:
            raise GanOpsError(f"no MLflow run {run!r} at {redact_secrets(target.uri)}") from None
    if "dvc.data_dvc" not in tags:
        raise GanOpsError(
            f"run {run} recorded no data.dvc (its data were not versioned with DVC, data version "
            f"{tags.get('data_version', 'unknown')}): nothing to restore from"
        )
    version = checkout_data(repo, tags["dvc.data_dvc"])
    data_verify(dataset=None, root=repo / "data")
    typer.echo(f"data version: {version} (the bytes run {run} trained on)")


@app.command("lineage")
def lineage_cmd(
    ref: Annotated[
        str, typer.Argument(help="NAME@ALIAS (e.g. svhn-ssgan-generator@champion), NAME/VERSION, or a run id")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print it as JSON")] = False,
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
) -> None:
    """Where a model came from: run, commit, config, data version (and how to restore it), flow run,
    checkpoints, evaluation, promotion."""
    from pipelines.lineage import lineage, lineage_text
    from pipelines.tracking import resolve_target

    cfg = _config(config, overrides, dry_run=False)
    found = lineage(ref, resolve_target(cfg.tracking))
    typer.echo(json.dumps(found, indent=2) if as_json else lineage_text(found))


def _exit_on_sigterm() -> None:
    """SIGTERM (a stopped RayJob, `kill`, a supervisor) as SystemExit(143): the run's cleanup runs (its
    MLflow run ends KILLED, a local Ray instance stops) instead of the process vanishing mid-write."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


@app.command("train")
def train_cmd(
    no_ray: Annotated[bool, typer.Option("--no-ray", help="run the training loop in this process")] = False,
    run_name: Annotated[
        str | None,
        typer.Option(
            help="run directory name under train.output_dir; "
            "an existing unfinished run of that name is resumed"
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="an existing Ray cluster (default: ray.address, $RAY_ADDRESS, else local)"),
    ] = None,
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Train the configured model on the prepared (and verified) dataset: Ray Train, or in this process."""
    extra = [f"ray.address={address}"] if address else []
    cfg = _config(config, (overrides or []) + extra, dry_run)
    _exit_on_sigterm()
    if no_ray:
        from pipelines.train import train_local

        typer.echo(train_local(cfg, run_name))
    else:
        from pipelines.ray_train import launch

        typer.echo(launch(cfg, run_name))


@app.command("evaluate")
def evaluate_cmd(
    run: Annotated[str | None, typer.Option("--run", help="the MLflow run id of a finished training")] = None,
    run_name: Annotated[str | None, typer.Option(help="or the training's run name (its latest run)")] = None,
    report: Annotated[
        Path | None, typer.Option(help="JSON report (default: runs/<run name>/evaluation.json)")
    ] = None,
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Evaluate a run: test accuracy (EMA classifier), domain FD and KID, Inception FID when enabled."""
    from pipelines.evaluate import evaluate_run
    from pipelines.progress import StageBars

    cfg = _config(config, overrides, dry_run)
    run = _run_id(cfg, run, run_name)
    with StageBars() as bars:
        result = evaluate_run(run, cfg, report=report, progress=bars)
    for key, value in sorted(result.evaluation.metrics.items()):
        typer.echo(f"{key:>16} {value:.6g}")
    typer.echo(f"report: {result.report}")


@app.command("promote")
def promote_cmd(
    run: Annotated[
        str | None, typer.Option("--run", help="an evaluated run: register it, apply the policy")
    ] = None,
    run_name: Annotated[str | None, typer.Option(help="or the training's run name (its latest run)")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="a registered model, to promote by hand")
    ] = None,
    version: Annotated[str | None, typer.Option("--version", help="its version (with --model)")] = None,
    record: Annotated[Path | None, typer.Option(help="also write the decision to this JSON file")] = None,
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
) -> None:
    """Register an evaluated run and apply the promotion policy, or promote a version by hand."""
    from pipelines.evaluate import write_json
    from pipelines.promotion import decision_dict, promote_run, promote_version

    cfg = _config(config, overrides, dry_run=False)
    if model is not None:
        if version is None or run or run_name:
            raise GanOpsError("give either --run RUN_ID (or --run-name NAME), or --model NAME --version N")
        result = promote_version(model, version, cfg)
    else:
        result = promote_run(_run_id(cfg, run, run_name), cfg)
    if record is not None:
        write_json(record, decision_dict(result))
    verdict = "promoted to champion" if result.decision.promote else "not promoted"
    typer.echo(f"{result.name} version {result.version}: {verdict}: {result.decision.reason}")


def _run_id(cfg: Config, run: str | None, run_name: str | None) -> str:
    """The run id given, or the latest run of the given name."""
    from pipelines.tracking import find_run, reaching, resolve_target
    from pipelines.train import check_run_name

    if (run is None) == (run_name is None):
        raise GanOpsError("give exactly one of --run RUN_ID and --run-name NAME")
    if run is not None:
        return run
    check_run_name(run_name)  # type: ignore[arg-type]  # it goes into an MLflow filter string
    target = resolve_target(cfg.tracking)
    with reaching(target.uri):
        found = find_run(target, run_name)  # type: ignore[arg-type]
    if found is None:
        raise GanOpsError(
            f"no MLflow run named {run_name!r} in experiment {target.experiment!r} at {target.uri}"
        )
    return found


@app.command("rollback")
def rollback_cmd(
    name: Annotated[str, typer.Argument(help="registered model name")],
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
) -> None:
    """Restore the `previous` version as `champion`."""
    from pipelines.promotion import rollback
    from pipelines.tracking import reaching, resolve_target

    cfg = _config(config, overrides, dry_run=False)
    with reaching(resolve_target(cfg.tracking).uri):
        result = rollback(name, cfg)
    typer.echo(f"{result.name}: champion is version {result.version} again ({result.decision.reason})")


@registry_app.command("history")
def registry_history(
    name: Annotated[str, typer.Argument(help="registered model name")],
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
) -> None:
    """Every promotion decision for NAME, oldest first: action, version, reason, numbers."""
    from pipelines.registry import Registry, history_line
    from pipelines.tracking import reaching, resolve_target

    cfg = _config(config, overrides, dry_run=False)
    uri = resolve_target(cfg.tracking).uri
    with reaching(uri):
        events = Registry(uri).history(name)
    if not events:
        typer.echo(f"{name}: no decisions recorded")
    for e in events:
        typer.echo(history_line(e))


@registry_app.command("show")
def registry_show(
    name: Annotated[str, typer.Argument(help="registered model name")],
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
) -> None:
    """The versions of NAME with their aliases, runs and metrics."""
    from pipelines.registry import Registry
    from pipelines.tracking import reaching, resolve_target

    cfg = _config(config, overrides, dry_run=False)
    uri = resolve_target(cfg.tracking).uri
    with reaching(uri):
        registry = Registry(uri)
        registry.require_model(name)
        found = registry.client.search_model_versions(f"name = '{name}'")
        versions = [(mv, registry.version_of(mv)) for mv in found]
    for mv, version in sorted(versions, key=lambda v: int(v[0].version)):
        aliases = ",".join(mv.aliases) or "-"
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(version.metrics.items()) if "_class_" not in k)
        typer.echo(f"v{mv.version:<4} {aliases:<18} run {mv.run_id}  {metrics}")


@app.command("sample")
def sample_cmd(
    model: Annotated[
        str, typer.Option("--model", help="NAME@ALIAS (e.g. svhn-ssgan-generator@champion) or NAME/VERSION")
    ],
    n: Annotated[int, typer.Option("--n", min=1, help="number of images")] = 64,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write")] = Path("samples.png"),
    seed: Annotated[int, typer.Option(help="first seed; a seed always gives the same image")] = 0,
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
) -> None:
    """Write a grid of images from a registered generator."""
    from pipelines.sample import sample
    from pipelines.tracking import reaching, resolve_target

    cfg = _config(config, overrides, dry_run=False)
    with reaching(resolve_target(cfg.tracking).uri):
        path = sample(model, n, out, cfg, seed)
    typer.echo(f"wrote {n} samples from {model} to {path}")


@app.command("retrain")
def retrain_cmd(
    force: Annotated[bool, typer.Option(help="train even if this data and config already trained")] = False,
    run_name: Annotated[str | None, typer.Option(help="MLflow/Ray run name (default: derived)")] = None,
    sample_out: Annotated[
        Path | None, typer.Option(help="afterwards, write 64 samples from the champion to this PNG")
    ] = None,
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Run the retrain flow once: version data -> train (Ray) -> evaluate -> promote. No server needed."""
    _prefect_defaults()
    from pipelines.flows import retrain

    cfg = _config(config, overrides, dry_run)  # validated before Prefect starts
    started = time.monotonic()
    summary = retrain(str(config), list(overrides or []), force=force, run_name=run_name)
    if sample_out is not None:
        from pipelines.sample import sample

        sample(f"{summary['promotion']['name']}@champion", 64, sample_out, cfg)
    typer.echo(_retrain_report(summary, cfg, sample_out, time.monotonic() - started))


def _retrain_report(summary: dict, cfg: Config, sample_out: Path | None, seconds: float) -> str:
    """What a user wants at the end of a retrain: the numbers, the decision, and where to look."""
    from gan_models.training.loop import cpu_model
    from pipelines.registry import CHAMPION, Registry
    from pipelines.tracking import resolve_target

    def numbers(metrics: dict[str, float]) -> str:
        keys = ("test_accuracy", "domain_fd", "inception_fid")
        return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)

    decision = summary["promotion"]
    uri = resolve_target(cfg.tracking).uri
    champion = Registry(uri).by_alias(decision["name"], CHAMPION)
    lines = [
        f"run {summary['run_id']}: {numbers(summary['metrics'])}",
        f"{decision['name']} v{decision['version']}: "
        + ("promoted to champion" if decision["promote"] else "not promoted")
        + f" ({decision['reason']})",
    ]
    if champion is not None:
        lines.append(f"champion: v{champion.version}, {numbers(champion.metrics)}")
    if sample_out is not None:
        lines.append(f"champion samples: {sample_out}")
    # Where to look next.
    lines.append(f"model: models:/{decision['name']}/{decision['version']} (run runs:/{summary['run_id']})")
    lines.append(f"its lineage: ganops lineage {decision['name']}/{decision['version']}")
    if uri.startswith("sqlite:///"):
        lines.append(f"MLflow UI: uv run mlflow ui --backend-store-uri {uri}")
    else:
        lines.append(f"MLflow UI: {redact_secrets(uri)}")
    if prefect := os.environ.get("PREFECT_API_URL"):
        lines.append(f"Prefect UI: {redact_secrets(prefect).removesuffix('/api')}")
    lines.append(f"retrain took {seconds / 60:.1f} min on {cpu_model()} ({os.cpu_count()} cores)")
    return "\n".join(lines)


@app.command("sweep")
def sweep_cmd(
    param: Annotated[
        list[str],
        typer.Option(
            "--param",
            "-p",
            help="an axis (repeatable): a grid -p train.lr_g=1e-4,3e-4, or a range -p train.lr_d=loguniform(1e-4,1e-3)",
        ),
    ],
    samples: Annotated[int | None, typer.Option(help="draws of the random axes (sweep.samples)")] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option(help="trials at once (sweep.max_concurrent); default: what the cluster holds"),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to run on (ray.address); default: a local instance")
    ] = None,
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
) -> None:
    """Train a search space as Ray Tune trials on one Ray instance (ASHA stops the trailing ones),
    evaluate the finished ones and offer the best to the promotion policy. Run again to resume."""
    _prefect_defaults()
    from pipelines.flows import sweep

    extra = [f"sweep.samples={samples}"] if samples is not None else []
    extra += [f"sweep.max_concurrent={max_concurrent}"] if max_concurrent is not None else []
    extra += [f"ray.address={address}"] if address is not None else []
    _config(config, [*(overrides or []), *extra], dry_run=False)  # a bad config fails now
    result = sweep(list(param), str(config), [*(overrides or []), *extra])
    stopped = sum(t["status"] == "stopped" for t in result["trials"])
    typer.echo(
        f"sweep {result['name']}: {len(result['trials'])} trials ({stopped} stopped by ASHA); best run "
        f"{result['best']['run_id']} ({' '.join(result['best']['overrides'])}): {result['promotion']['reason']}"
    )


def check_timezone(name: str) -> None:
    """Refuse a time zone name the IANA database does not know (e.g. "Europe/Pariss", "CEST")."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise GanOpsError(
            f"--timezone {name!r} is not a time zone name (IANA, e.g. 'UTC', 'Europe/Paris')"
        ) from None


@app.command("schedule")
def schedule_cmd(
    cron: Annotated[
        str | None,
        typer.Option(help='cron schedule, e.g. "0 3 * * 1" (Mondays 03:00); optional with --on-new-data'),
    ] = None,
    on_new_data: Annotated[
        bool,
        typer.Option("--on-new-data", help="also run when `ganops data prepare` makes a new data version"),
    ] = False,
    pool: Annotated[
        str | None,
        typer.Option(
            help="deploy to this Prefect work pool (process type; created if missing) instead of serving"
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="deployment name")] = "scheduled-retrain",
    timezone: Annotated[str, typer.Option(help="time zone of the cron schedule")] = "UTC",
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
) -> None:
    """Create a Prefect deployment of `retrain` (on a cron schedule, and/or on each new data version) and
    serve it (runs until stopped; one run at a time).

    Uses the Prefect server at $PREFECT_API_URL; the config and overrides become its parameters, and a
    run started with other parameters may change only `flow.served_overrides`.
    """
    from prefect.schedules import Cron

    from pipelines.events import new_data_trigger
    from pipelines.flows import SERVED_ENV, retrain

    _config(config, overrides, dry_run=False)  # a bad config fails now, not at 3 a.m.
    if cron is None and not on_new_data:
        raise GanOpsError("give --cron SCHEDULE, --on-new-data, or both")
    schedules = []
    if cron is not None:
        check_timezone(timezone)  # Prefect accepts any string here, and the schedule then never fires
        try:
            schedules.append(Cron(cron, timezone=timezone))
        except ValueError as e:
            raise GanOpsError(f"--cron {cron!r}: {e}") from None
    parameters = {"config_path": str(config), "overrides": list(overrides or []), "project": str(Path.cwd())}
    triggers = [new_data_trigger(Path.cwd(), parameters)] if on_new_data else []
    # The runs it starts check their parameters against these (`flows.check_served_run`).
    os.environ[SERVED_ENV] = json.dumps(parameters)
    deployment = {
        "name": name, "schedules": schedules, "triggers": triggers, "parameters": parameters, "tags": ["ganops"]
    }  # fmt: skip
    if pool is not None:
        _deploy_to_pool(pool, deployment)
        return
    # One run at a time: a data change during a scheduled run waits for it instead of racing it.
    retrain.serve(**deployment, global_limit=1)


def _deploy_to_pool(pool: str, deployment: dict[str, Any]) -> None:
    """`retrain` as `deployment` (name, schedules, triggers, parameters, tags) of work pool `pool`, run by
    `prefect worker start --pool POOL` (on this machine or one that sees the same project folder), with
    the same parameter checks as a served one."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from pipelines.flows import SERVED_ENV, retrain

    async def ensure_pool() -> None:
        async with get_client() as client:
            try:
                found = await client.read_work_pool(pool)
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
                return
            if found.type != "process":
                raise GanOpsError(
                    f"work pool {pool!r} is of type {found.type!r}; ganops deploys to process pools"
                )

    asyncio.run(ensure_pool())
    source = Path(__file__).resolve().parents[1]  # this checkout: the worker runs its pipelines/flows.py
    parameters = deployment["parameters"]
    retrain.from_source(source=str(source), entrypoint="pipelines/flows.py:retrain").deploy(
        **deployment,
        work_pool_name=pool,
        concurrency_limit=1,  # one run at a time, as a served deployment
        job_variables={"env": {SERVED_ENV: json.dumps(parameters)}, "working_dir": parameters["project"]},
        print_next_steps=False,
    )
    typer.echo(
        f"deployment retrain/{deployment['name']} on work pool {pool}; run it with: "
        f"prefect worker start --pool {pool}"
    )


def main() -> None:
    """Entry point: user errors print one clear message and exit 2, without a traceback."""
    import os

    # Under `uv run`, Ray would rebuild this project's environment for every worker (its uv hook): the
    # workers use the interpreter and packages the cluster already has, like the driver.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # MLflow draws a progress bar for every artifact download, even of one small file.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        app()
    except GanOpsError as e:
        typer.echo(f"error: {redact_secrets(str(e))}", err=True)
        sys.exit(2)
