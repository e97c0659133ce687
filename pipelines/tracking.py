"""MLflow glue: exactly one run per training, written by one process (rank 0 under Ray Train).

Where: `tracking.uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///<project>/mlruns.db` with artifacts in
`<project>/mlruns/` (no server needed); an `http://` URI of an `mlflow server` works the same way. A run
is found again by its run-name tag, and its id is also stored in every checkpoint, so a resumed or
retried training continues the same run. A training that raises ends its run FAILED, error recorded.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan_models.config import Config, TrackingConfig, redact_secrets
from gan_models.data.prepared import MANIFEST, PreparedDataset, sha256_file
from gan_models.errors import GanOpsError
from gan_models.training.loop import TrainResult
from pipelines.quiet import MLFLOW_NOTICES, environ, quiet

DEFAULT_DB = "mlruns.db"
logger = logging.getLogger(__name__)

RUN_NAME_TAG = "ganops.run_name"
EXTRA_KEY = "mlflow_run_id"  # the key of the run id in a checkpoint's extra state
LOSS_METRICS = ("d_loss", "g_loss")
TRAINING_KEY_TAG = "ganops.training_key"


class TrackingError(GanOpsError):
    """The MLflow tracking store cannot be reached or refuses the request."""


@dataclass(frozen=True)
class TrackingTarget:
    """Where to track, resolved once by the launching process (plain data: it travels to Ray workers)."""

    uri: str
    experiment: str
    artifact_location: str | None  # for a new experiment on a server-less store; a server picks its own


def store_root(project: Path) -> Path:
    """Where a project's default store lives: the project, or, inside a temporary workspace of
    `dvc exp run --temp` / `--queue` (`<repo>/.dvc/tmp/exps/...`, deleted afterwards), the repository."""
    parts = project.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return project


def resolve_target(cfg: TrackingConfig, project: Path | None = None) -> TrackingTarget:
    """The tracking URI (config, else $MLFLOW_TRACKING_URI, else the project's SQLite file), absolute."""
    project = store_root((project or Path.cwd()).resolve())
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative SQLite path would depend on each process's working directory (Ray workers' differ).
        uri = f"sqlite:///{project / uri.removeprefix('sqlite:///')}"
    served = uri.startswith(("http://", "https://", "databricks"))
    artifacts = None if served else (project / cfg.artifact_root).resolve().as_uri()
    return TrackingTarget(uri, cfg.experiment, artifacts)


def _fail_fast(timeout_s: int = 10) -> contextlib.AbstractContextManager[None]:
    """One HTTP attempt with a timeout, instead of MLflow's default minutes of retries."""
    return environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout_s))


@contextlib.contextmanager
def reaching(uri: str) -> Iterator[None]:
    """For commands that talk to the store and nothing else: one HTTP attempt per call (not MLflow's
    minutes of retries), and an error from the store as one `TrackingError` naming it."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        with _fail_fast():
            yield
    except (MlflowException, RequestException) as e:
        raise TrackingError(f"MLflow tracking at {uri} is unreachable or failed: {_first_line(e)}") from None


def ensure_experiment(target: TrackingTarget) -> str:
    """The experiment's id, created if missing; a clear `TrackingError` at once if the store is unreachable."""
    import mlflow

    try:
        with _fail_fast(), quiet(*MLFLOW_NOTICES):  # the client creates a new SQLite store's tables
            client = mlflow.MlflowClient(target.uri)
            experiment = client.get_experiment_by_name(target.experiment)
            if experiment is None:
                return client.create_experiment(target.experiment, artifact_location=target.artifact_location)
    except Exception as e:  # MLflow raises several types (connection, HTTP status, database)
        raise TrackingError(
            f"MLflow tracking at {target.uri} is unreachable or failed: {_first_line(e)}"
        ) from None
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {target.experiment!r} at {target.uri} is deleted: restore it "
            "or set tracking.experiment"
        )
    return experiment.experiment_id


def latest_run(target: TrackingTarget, filter_string: str, order_by: str = "start_time") -> Any | None:
    """The latest run of the target's experiment matching `filter_string` (by `order_by`), if any."""
    import mlflow

    client = mlflow.MlflowClient(target.uri)
    experiment = client.get_experiment_by_name(target.experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string, max_results=1, order_by=[f"attributes.{order_by} DESC"]
    )
    return runs[0] if runs else None


def find_run(target: TrackingTarget, run_name: str, unfinished: bool = False) -> str | None:
    """The id of the latest run tagged with `run_name` (with `unfinished`: only if it did not finish)."""
    run = latest_run(target, f"tags.`{RUN_NAME_TAG}` = '{run_name}'")
    if run is None or (unfinished and run.info.status == "FINISHED"):
        return None
    return run.info.run_id


def run_status(target: TrackingTarget, run_id: str) -> str | None:
    """The status of run `run_id` (RUNNING, FINISHED, FAILED, KILLED), None if the store has no such run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with _fail_fast():
            return mlflow.MlflowClient(target.uri).get_run(run_id).info.status
    except MlflowException:
        return None


def logged_epochs(target: TrackingTarget, run_id: str, metric: str = "d_loss") -> set[int]:
    """The epochs at which run `run_id` has `metric`."""
    import mlflow

    return {m.step for m in mlflow.MlflowClient(target.uri).get_metric_history(run_id, metric)}


def finished_run(target: TrackingTarget, key: str, manifest_sha256: str) -> str | None:
    """A finished run with this training key on these data bytes, if one exists."""
    run = latest_run(
        target,
        f"tags.`{TRAINING_KEY_TAG}` = '{key}' and tags.data_manifest_sha256 = '{manifest_sha256}' "
        "and attributes.status = 'FINISHED'",
        order_by="end_time",
    )
    return run.info.run_id if run else None


# Tag -> environment variable: the Prefect flow run a training belongs to.
FLOW_RUN_ENV = {"prefect.flow_run_id": "GANOPS_FLOW_RUN_ID", "prefect.flow_run_name": "GANOPS_FLOW_RUN_NAME"}


def source_tags(dataset: PreparedDataset, repo: Path) -> dict[str, str]:
    """Data version (DVC md5 in data.dvc, else "unversioned"), the dataset's manifest digest, git commit,
    MLflow's source tags, and the Prefect flow run that started it (if one did)."""
    from pipelines.versioning import DATA_DIR, DVC_FILE, VersioningError, data_version, remote_url

    version = "unversioned"  # data.dvc versions <repo>/data/ only
    restore: dict[str, str] = {}  # what `ganops data checkout RUN` needs to bring these bytes back
    if Path(dataset.path).resolve().is_relative_to((Path(repo) / DATA_DIR).resolve()):
        try:
            version = data_version(repo)
            restore["dvc.data_dvc"] = (Path(repo) / DVC_FILE).read_text()
            restore["dvc.remote"] = redact_secrets(remote_url(repo) or "none")
        except VersioningError:
            pass
    # A container image has no .git: its build records the commit in $GANOPS_GIT_COMMIT.
    commit = _git(repo, "rev-parse", "HEAD") or os.environ.get("GANOPS_GIT_COMMIT") or "unknown"
    # Dirty code, that is: data.dvc changes with every new data version, which the run records itself.
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no", "--", ".", f":!{DVC_FILE}"))
    tags = {
        "data_version": version,
        "data_manifest_sha256": sha256_file(dataset.path / MANIFEST),
        "dataset": dataset.name,
        "data_path": str(Path(dataset.path).resolve()),
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        # MLflow's own source tags: the run page's Source and Git commit fields.
        "mlflow.source.name": "ganops train",
        "mlflow.source.type": "LOCAL",
        "mlflow.project.entryPoint": "train",
        "mlflow.user": getpass.getuser(),
    }
    tags |= restore
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    if remote := _git(repo, "remote", "get-url", "origin"):
        tags["mlflow.source.git.repoURL"] = redact_secrets(remote)
    # The Prefect flow run that started this training (`flows.train_task` hands it to its child).
    for key, variable in FLOW_RUN_ENV.items():
        if os.environ.get(variable):
            tags[key] = os.environ[variable]
    return tags


@contextlib.contextmanager
def system_metrics(
    target: TrackingTarget, run_id: str, interval_s: float, node: str | None
) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network; GPU where pynvml sees one) of this machine
    on run `run_id` while the block runs, under `system/<node>/` when `node` names one of several."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    with quiet("mlflow.system_metrics"):
        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval_s, node_id=node, tracking_uri=target.uri
        )
        monitor.start()
    try:
        yield
    finally:
        with quiet("mlflow.system_metrics"), contextlib.suppress(Exception):
            monitor.finish()
            # MLflow drops the samples of an unfinished interval: publish them, so that a run shorter
            # than one interval has its numbers too.
            leftover = monitor.aggregate_metrics()
            if leftover:
                monitor.publish_metrics(leftover)
                monitor.mlflow_logger.flush()


def run_description(cfg: Config, run_name: str, tags: dict[str, str]) -> str:
    """The run page's description: what trains on what, where, and what started it."""
    flow = tags.get("prefect.flow_run_name")
    return (
        f"**{cfg.model.name}** on `{cfg.data.dataset}` (data version `{tags.get('data_version', '?')}`), "
        f"{cfg.train.epochs} epochs of batch {cfg.train.batch_size} on {cfg.ray.num_workers} Ray worker(s); "
        f"config digest `{cfg.hash()}`, commit `{tags.get('git_commit', '?')[:12]}`"
        + (f"; started by Prefect flow run `{flow}`" if flow else "")
        + f". Checkpoints: `{cfg.train.output_dir}/{run_name}`."
    )


def _git(repo: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def training_key(cfg: Config) -> str:
    """What decides a trained model besides the data bytes: seed, model, training options, world size.

    Output locations and checkpoint cadence are left out; a retrain flow skips training when a finished
    run has this key and the same data.
    """
    train = cfg.train.model_dump(mode="json", exclude={"output_dir", "checkpoint_every", "samples_every"})
    blob = {"seed": cfg.seed, "model": cfg.model.model_dump(mode="json"), "train": train}
    blob["num_workers"] = cfg.ray.num_workers  # shards and batch statistics depend on it
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"lr_g": 3e-4}}` -> `{"train.lr_g": "0.0003"}`."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = str(value)
    return flat


# Seconds between the attempts of a tracking write: one epoch's metrics wait about 7 s for a hiccup of
# the store (a locked SQLite file, a restarting server); the end of a training about 2 minutes.
EPOCH_RETRIES = (0.5, 1.0, 2.0, 4.0)
FINISH_RETRIES = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


def retrying(write: Callable[[], Any], delays: tuple[float, ...], what: str) -> Any:
    """`write()`, again after each delay while it raises; the last error is raised as it is."""
    for delay in (*delays, None):
        try:
            # Our schedule, not MLflow's minutes of HTTP retries per attempt; time for an upload.
            with _fail_fast(timeout_s=120):
                return write()
        except Exception as e:  # MLflow raises several types (connection, HTTP status, database locked)
            if delay is None:
                raise
            logger.info("%s failed (%s); again in %.1f s", what, _first_line(e), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class RunTracker:
    """The MLflow run of one training; it is the process's active run until `finish` or `fail`.

    Epoch metrics survive a tracking store that is away for a while: each write is retried
    (`EPOCH_RETRIES`); an epoch that still cannot be written is kept, training goes on, and the next
    epoch (or `finish`) writes everything kept, in order.
    """

    def __init__(self, target: TrackingTarget, run_id: str) -> None:
        self.target = target
        self.run_id = run_id
        self.pending: list[tuple[int, int | None, dict[str, float], Path | None]] = []
        self._warned = False

    @classmethod
    def start(
        cls,
        target: TrackingTarget,
        cfg: Config,
        run_name: str,
        tags: dict[str, str],
        run_id: str | None = None,
    ) -> RunTracker:
        """Continue run `run_id` (or the run tagged `run_name`), else create it with params, tags and input."""
        import mlflow

        mlflow.set_tracking_uri(target.uri)
        experiment_id = ensure_experiment(target)
        # Without a checkpoint's run id, continue a run of this name only if it never finished (a crash
        # before the first checkpoint); a finished one stays as it is and a new run starts.
        run_id = run_id or find_run(target, run_name, unfinished=True)
        client = mlflow.MlflowClient(target.uri)
        params = flatten(cfg.to_public_dict())  # no credential of a URI in the params
        if run_id is None:
            tags = {RUN_NAME_TAG: run_name, TRAINING_KEY_TAG: training_key(cfg), **tags}
            tags.setdefault("mlflow.note.content", run_description(cfg, run_name, tags))
            run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            logged: dict[str, str] = {}
        else:
            run = client.get_run(run_id)
            logged = run.data.params
            if "error" in run.data.tags:  # a failure this continuation recovers from
                client.set_tag(run_id, "previous_error", run.data.tags["error"])
                client.delete_tag(run_id, "error")
        mlflow.start_run(run_id=run_id)  # (again) RUNNING
        # Params are immutable in MLflow: a resume with changed values records them as tags.
        mlflow.log_params({k: v for k, v in params.items() if k not in logged})
        mlflow.set_tags({f"resumed_with.{k}": v for k, v in params.items() if k in logged and logged[k] != v})
        if not logged:
            _log_dataset(tags)
        return cls(target, run_id)

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tags(tags)

    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float], samples: Path | None) -> None:
        """Metrics at step `epoch`, and the epoch's sample grid as an image (with the epochs kept from
        earlier, where the store was away); kept for later if the store stays away."""
        self.pending.append((epoch, step, metrics, samples))
        try:
            self.flush(EPOCH_RETRIES)
        except Exception as e:
            if not self._warned:
                logger.warning(
                    "MLflow tracking at %s is unreachable (%s): training goes on, and epoch %d's metrics "
                    "are kept and written once it answers",
                    self.target.uri,
                    _first_line(e),
                    epoch,
                )
                self._warned = True

    def flush(self, delays: tuple[float, ...]) -> None:
        """Write the kept epochs, oldest first; each one leaves the queue once written."""
        import mlflow
        from mlflow.entities import Metric
        from PIL import Image

        client = mlflow.MlflowClient(self.target.uri)
        while self.pending:
            epoch, step, metrics, samples = self.pending[0]
            values = metrics | ({"optimizer_step": float(step)} if step is not None else {})
            stamp = int(time.time() * 1000)
            batch = [Metric(k, float(v), stamp, epoch) for k, v in values.items()]

            def write(epoch: int = epoch, batch: list = batch, samples: Path | None = samples) -> None:
                # The client with an explicit run id: a retry after a lost connection writes the same run.
                client.log_batch(self.run_id, metrics=batch)
                if samples is not None and samples.exists():
                    with Image.open(samples) as image:
                        client.log_image(self.run_id, image.convert("RGB"), key="samples", step=epoch)

            retrying(write, delays, f"logging epoch {epoch} to MLflow")
            self.pending.pop(0)
        if self._warned:
            logger.warning(
                "MLflow tracking at %s answers again: the kept epochs are written", self.target.uri
            )
            self._warned = False

    def finish(self, cfg: Config, result: TrainResult, dataset: PreparedDataset) -> None:
        """The kept epochs, loss curves, the final models (generator, classifier), and status FINISHED.

        Each write is retried for about 2 minutes while the store is away (`FINISH_RETRIES`), one by one,
        so a retry repeats no model that was already logged.
        """
        import mlflow

        from pipelines.model_packaging import kinds, log_model

        def step(what: str, write: Callable[[], Any]) -> None:
            retrying(write, FINISH_RETRIES, f"{what} (MLflow)")

        self.flush(FINISH_RETRIES)
        step("logging the loss curves", lambda: mlflow.log_figure(self._loss_figure(), "loss_curves.png"))
        # The resolved config that finished the training.
        step("logging config.yaml", lambda: mlflow.log_text(cfg.to_public_yaml(), "config.yaml"))
        if cfg.tracking.log_models:
            with tempfile.TemporaryDirectory(prefix="ganops-models-") as workdir:
                for kind in kinds(cfg.model):
                    step(
                        f"logging the {kind} model",
                        lambda kind=kind: log_model(
                            kind,
                            cfg.model,
                            dataset.image_shape,
                            dataset.num_classes,
                            result.averaged,
                            Path(workdir),
                        ),
                    )
        # Which weights the logged models hold, and why training ended where it did.
        selection = "best" if result.published is not None else "last"
        tags = {
            "final_step": str(result.step),
            "model_selection": selection,
            "model_epoch": str(result.model_epoch),
        }
        tags |= {f"best_{k}": str(v) for k, v in (result.best or {}).items()}
        tags["stop_reason"] = result.stop_reason or f"completed {result.epoch} epochs"
        step("tagging the run", lambda: mlflow.set_tags(tags))
        step("ending the run", lambda: mlflow.end_run("FINISHED"))

    def fail(self, error: BaseException) -> None:
        """Record `error` (message as a tag, traceback as error.txt) and end the run FAILED; a run that
        was interrupted (Ctrl-C, SIGTERM: `KeyboardInterrupt`, `SystemExit`) ends KILLED instead."""
        import mlflow

        interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
        with contextlib.suppress(Exception), _fail_fast():  # the original error matters more
            if interrupted:
                mlflow.set_tags(
                    {"stop_reason": f"interrupted ({type(error).__name__})", "ganops.stopped_by": "signal"}
                )
            else:
                mlflow.set_tag("error", redact_secrets(f"{type(error).__name__}: {error}")[:4000])
                mlflow.log_text(redact_secrets("".join(traceback.format_exception(error))), "error.txt")
        with contextlib.suppress(Exception), _fail_fast():
            mlflow.end_run("KILLED" if interrupted else "FAILED")

    def _loss_figure(self) -> Any:
        import mlflow
        from matplotlib.figure import Figure

        client = mlflow.MlflowClient(self.target.uri)
        figure = Figure(figsize=(6, 4))
        axes = figure.subplots()
        for name in LOSS_METRICS:
            by_epoch = {m.step: m.value for m in client.get_metric_history(self.run_id, name)}
            axes.plot(sorted(by_epoch), [by_epoch[e] for e in sorted(by_epoch)], marker="o", label=name)
        axes.set_xlabel("epoch")
        axes.set_ylabel("loss")
        axes.legend()
        return figure


def _log_dataset(tags: dict[str, str]) -> None:
    """The prepared dataset as an MLflow dataset input: its path as the source, the DVC md5 as the digest."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local sources
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(tags["data_path"])
    digest = (
        tags["data_version"] if tags["data_version"] != "unversioned" else tags["data_manifest_sha256"][:32]
    )
    dataset = MetaDataset(source, name=tags["dataset"], digest=digest)
    mlflow.log_input(dataset, context="training", tags={"data_version": tags["data_version"]})


def mark_failed(target: TrackingTarget, run_name: str, error: BaseException) -> None:
    """From the launcher, after the trainer gave up: end the run of `run_name` FAILED if still RUNNING."""
    import mlflow

    with contextlib.suppress(Exception), _fail_fast():
        run_id = find_run(target, run_name)
        client = mlflow.MlflowClient(target.uri)
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "error", redact_secrets(f"{type(error).__name__}: {error}")[:4000])
            client.set_terminated(run_id, "FAILED")


def mark_stopped(target: TrackingTarget, run_name: str, reason: str, by: str = "scheduler") -> None:
    """End the run of `run_name` KILLED (stopped on purpose, not failed) with `reason`, if still RUNNING;
    `by`: who stopped it (Tune's "scheduler", a "cancel" of its flow run)."""
    import mlflow

    with contextlib.suppress(Exception), _fail_fast():
        run_id = find_run(target, run_name)
        client = mlflow.MlflowClient(target.uri)
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "stop_reason", reason)
            client.set_tag(run_id, "ganops.stopped_by", by)
            client.set_terminated(run_id, "KILLED")


def start_sweep_run(
    target: TrackingTarget | None, name: str, tags: dict[str, str], axes: list[str]
) -> str | None:
    """The sweep's parent run (continued if this sweep ran before): its trials are its child runs."""
    if target is None:
        return None
    import mlflow

    client = mlflow.MlflowClient(target.uri)
    run_id = find_run(target, name)
    if run_id is None:
        experiment_id = ensure_experiment(target)
        run = client.create_run(experiment_id, run_name=name, tags={RUN_NAME_TAG: name, **tags})
        run_id = run.info.run_id
        client.log_param(run_id, "search_space", " ".join(axes))
    else:
        client.update_run(run_id, status="RUNNING")
    return run_id


def end_sweep_run(target: TrackingTarget, run_id: str, table: str, best: str | None) -> None:
    """The trials' table as `sweep.md`, the best trial's run id as a tag, status FINISHED."""
    import mlflow

    client = mlflow.MlflowClient(target.uri)
    client.log_text(run_id, f"# {client.get_run(run_id).info.run_name}\n\n{table}\n", "sweep.md")
    if best is not None:
        client.set_tag(run_id, "best_run_id", best)
    client.set_terminated(run_id, "FINISHED")
