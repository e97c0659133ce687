"""Ray glue: `ganops train` runs the one training entry point on Ray Train workers, under DDP.

Before Ray starts, the launcher runs the same preflight as `--no-ray` (config, data, MLflow store) and
checks that the cluster has the workers and GPUs asked for; each failure is a `GanOpsError`. Each worker
turns Ray's context into `pipelines.train.run_training`'s arguments: its rank, device, the restored
checkpoint, a DDP wrapper per network (gloo on CPUs, NCCL on GPUs), and a reporter that commits rank
0's checkpoint with `ray.train.report`; a replaced worker, or a new launch with the same run name,
resumes from the latest one (`ray.train.get_checkpoint`). Rank 0 alone writes MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gan_models.config import Config
from gan_models.data.prepare import open_verified, prepared_path
from gan_models.data.prepared import PreparedDataset
from gan_models.errors import GanOpsError
from gan_models.training.loop import BEST_NAME, CHECKPOINT_NAME, EpochReport, check_trainable
from pipelines.quiet import environ, quiet
from pipelines.tracking import EXTRA_KEY, TrackingTarget, mark_failed, mark_stopped
from pipelines.train import (
    Preflight,
    check_run_name,
    preflight,
    publish_unpublished,
    run_lock,
    run_name_for,
    run_training,
)

RAY_AUTH_NOTICE = "ray._private.authentication.authentication_token_setup"
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
API_SERVER = "RAY_API_SERVER_ADDRESS"  # where Ray's State API clients look first
STOPPED_EARLY = "stopped_early"  # reported with every epoch: 1.0 once train.patience stopped the run


class ClusterError(GanOpsError):
    """The Ray cluster cannot run the requested workers, or training failed on it."""


def absolute_paths(cfg: Config, project: Path) -> Config:
    """A copy of `cfg` whose local paths are absolute: Ray workers do not share the launcher's cwd."""
    cfg = cfg.model_copy(deep=True)
    cfg.data.root = (project / cfg.data.root).resolve()
    cfg.train.output_dir = (project / cfg.train.output_dir).resolve()
    if cfg.ray.storage_path is None:
        cfg.ray.storage_path = str(cfg.train.output_dir / "ray")
    elif "://" not in cfg.ray.storage_path:
        cfg.ray.storage_path = str((project / cfg.ray.storage_path).resolve())
    return cfg


def wants_gpu(cfg: Config, gpus_available: float) -> bool:
    """GPUs follow train.device: cuda always, auto when the cluster has one for every worker."""
    device = cfg.train.device
    return device == "cuda" or (device == "auto" and gpus_available >= cfg.ray.num_workers)


def check_resources(cfg: Config, use_gpu: bool, available: dict[str, float], where: str) -> None:
    """Fail, naming the keys, if `available` (the cluster's totals) cannot hold the workers asked for."""
    n = cfg.ray.num_workers
    cpus = n * cfg.ray.cpus_per_worker
    if cpus > available.get("CPU", 0):
        raise ClusterError(
            f"ray.num_workers={n} x ray.cpus_per_worker={cfg.ray.cpus_per_worker:g} needs "
            f"{cpus:g} CPUs; {where} has {available.get('CPU', 0):g}"
        )
    if use_gpu and n > available.get("GPU", 0):
        raise ClusterError(
            f"ray.num_workers={n} with train.device={cfg.train.device} needs {n} GPUs; "
            f"{where} has {available.get('GPU', 0):g}"
        )


def local_resources() -> dict[str, float]:
    """What a local Ray instance started by `launch` gets: this process's CPUs and visible GPUs."""
    return {"CPU": float(len(os.sched_getaffinity(0))), "GPU": float(torch.cuda.device_count())}


def ray_log_dir() -> str:
    """Where this driver's Ray session writes its full logs (every level, every process)."""
    try:
        from ray._private.worker import global_worker  # no public API names the session directory

        return str(Path(global_worker.node.get_session_dir_path()) / "logs")
    except Exception:  # a changed private API: Ray's documented default
        return "/tmp/ray/session_latest/logs"


def finished_epochs(storage_path: str, run_name: str, epochs: int | None = None) -> int:
    """Epochs in the latest committed checkpoint of Ray run `run_name` (0 without one); a run that
    stopped early counts as `epochs` done (it is finished)."""
    from ray.train import Result

    try:
        with quiet("ray.train", level=logging.WARNING):  # its "a run snapshot was found" is for Trainer users
            result = Result.from_path(f"{storage_path.rstrip('/')}/{run_name}")
    except RuntimeError:  # no such run, or no checkpoint committed yet
        return 0
    metrics = result.metrics or {}
    if epochs is not None and metrics.get(STOPPED_EARLY):
        return epochs
    return int(metrics.get("epoch", 0))


@contextlib.contextmanager
def ray_session(cfg: Config) -> Iterator[dict[str, float]]:
    """Ray for one launch: join `ray.address` (or $RAY_ADDRESS) or start a local instance of our own,
    yield the cluster's resources, shut down what was started here."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    started = not ray.is_initialized()
    own = started and address is None
    with contextlib.ExitStack() as stack:
        if own:
            stack.enter_context(environ(**own_instance_settings(cfg)))  # Ray's processes inherit them
        if started:
            try:
                # "local": a new instance of our own. Without an address ray.init joins whatever cluster
                # this machine started last (another user's, a test's) instead of the one documented.
                # Ray's notice that token authentication (its default) is on for a new local instance: it
                # stays on; "Started a local Ray instance": the line below says it, with the logs' place.
                with quiet(RAY_AUTH_NOTICE, level=logging.ERROR):
                    context = ray.init(
                        address=address or "local",
                        include_dashboard=cfg.ray.dashboard,
                        dashboard_port=dashboard_port(os.environ.get(API_SERVER)) if own else None,
                        log_to_driver=True,
                        logging_level=logging.WARNING,
                    )
            except ConnectionError as e:
                raise ClusterError(f"cannot connect to the Ray cluster at {address}: {e}") from None
            if own and context.dashboard_url:
                print(f"Ray dashboard: http://{context.dashboard_url} (logs: {ray_log_dir()})", flush=True)
        start_autoscaling_coordinator()
        try:
            yield ray.cluster_resources()
        finally:
            if started:
                ray.shutdown()


def own_instance_settings(cfg: Config) -> dict[str, str]:
    """What the processes of a Ray instance of our own read from their environment.

    - Ray Train's placement-group cleaner asks the State API (the dashboard) whether the controller
      lives; with no address it looks for "the" Ray instance on the machine and, where another one runs
      too, dies with "Found multiple active Ray instances" (and a traceback): name our dashboard, on a
      port chosen here, so it asks ours.
    - Ray Train's preemption watcher (one more actor per launch, and Ray core's error line about its
      restart) observes spot nodes being reclaimed; an instance on this machine has none.
    A variable the user set is left as it is.
    """
    settings = {PREEMPTION_WATCHER: "0"}
    if cfg.ray.dashboard:
        settings[API_SERVER] = f"http://127.0.0.1:{free_port()}"
    return {k: v for k, v in settings.items() if k not in os.environ}


def dashboard_port(api_server: str | None) -> int | None:
    """The port of a local `http://127.0.0.1:PORT` API server address (None: Ray's default)."""
    if api_server is None or not api_server.startswith("http://127.0.0.1:"):
        return None
    return int(api_server.rsplit(":", 1)[1])


def free_port(preferred: int = 8265) -> int:
    """`preferred` (Ray's usual dashboard port) if nothing listens on it now, else one the OS picks."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise ClusterError("no free TCP port on 127.0.0.1 for the Ray dashboard")


def start_autoscaling_coordinator() -> None:
    """Start the actor every Ray Train controller registers its resource request with, and return.

    The controller waits 5 s for that actor (Ray Data's AutoscalingCoordinator, one per cluster) and,
    where its first start takes longer (a small or busy machine), logs a traceback and waits again 20 s
    later, at every launch. Started here, it comes up while the controller does; where it already runs
    this is a lookup. Ray without that actor (another version) is left to do as it does.
    """
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    with contextlib.suppress(Exception):  # only a head start: the controller creates it if this cannot
        get_or_create_autoscaling_coordinator()


class UserError(GanOpsError):
    """A worker raised an error that a retry would raise again (a `GanOpsError`: divergence, bad data,
    an incompatible checkpoint); raised in Ray Train's controller so that the run fails at once."""


def user_error(error: BaseException) -> GanOpsError | None:
    """The `GanOpsError` behind a worker's exception (Ray wraps it, perhaps twice), if there is one."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, GanOpsError):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return None


def stop_on_user_errors() -> Any:
    """A Ray Train callback (on the controller) that fails the run when a worker's error is a user error:
    `ray.max_failures` is for lost workers and nodes, and retrying a deterministic error (with -1,
    forever) only repeats it. The error raised names the rank and the worker's message."""
    from ray.train import UserCallback

    class StopOnUserErrors(UserCallback):
        def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
            for rank, error in sorted(worker_exceptions.items()):
                if (cause := user_error(error)) is not None:
                    raise UserError(f"rank {rank}: {cause} (not retried: a retry would fail the same way)")

    return StopOnUserErrors()


def torch_trainer(
    cfg: Config, name: str, checks: Preflight, use_gpu: bool, callbacks: list[Any] | None = None
) -> Any:
    """The TorchTrainer of run `name`: `train_worker` on `ray.num_workers` workers, checkpoints in
    `ray.storage_path/name` (a trainer of the same name resumes from them)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    per_worker = {"CPU": cfg.ray.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "run_name": name,
            "use_gpu": use_gpu,
            "tracking": asdict(checks.target) if checks.target else None,
            "tags": checks.tags,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=name,
            storage_path=cfg.ray.storage_path,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.checkpoints_to_keep),
            logging_config=LoggingConfig(log_level=cfg.ray.log_level),
            callbacks=[stop_on_user_errors(), *(callbacks or [])],
        ),
    )


def launch(cfg: Config, run_name: str | None = None, project: Path | None = None) -> str:
    """Validate, start (or join) Ray, train with Ray Train, return a one-line summary."""
    # Validate before Ray starts: data, tracking store, resources of a local instance.
    project = (project or Path.cwd()).resolve()
    if run_name is not None:
        check_run_name(run_name)  # before any work
    cfg = absolute_paths(cfg, project)
    import ray

    dataset, checks = preflight(cfg, project)
    name = run_name or run_name_for(cfg, dataset)
    if not (cfg.ray.address or os.environ.get("RAY_ADDRESS")) and not ray.is_initialized():
        local = local_resources()
        check_resources(cfg, wants_gpu(cfg, local["GPU"]), local, "this machine")
    check_trainable(cfg, dataset, cfg.ray.num_workers)  # a batch per rank: Ray would retry it forever
    # One launcher per run name (one MLflow run, one Ray storage path), locked where its checkpoints are.
    shared = None if "://" in str(cfg.ray.storage_path) else Path(str(cfg.ray.storage_path))
    with run_lock(cfg, name, shared):
        return _launch(cfg, name, dataset, checks)


def _launch(cfg: Config, name: str, dataset: PreparedDataset, checks: Preflight) -> str:
    from ray.train import TrainingFailedError

    done = finished_epochs(cfg.ray.storage_path, name, cfg.train.epochs)
    if done >= cfg.train.epochs and (published := publish_finished(cfg, name, dataset, checks)):
        return published
    if done >= cfg.train.epochs:
        return f"{name}: already trained for {done} epochs (Ray run {cfg.ray.storage_path}/{name})"
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    checks.tags["ganops.checkpoints"] = f"{str(cfg.ray.storage_path).rstrip('/')}/{name}"  # Ray's run folder
    try:
        with ray_session(cfg) as available:
            use_gpu = wants_gpu(cfg, available.get("GPU", 0))
            check_resources(cfg, use_gpu, available, f"the Ray cluster ({address or 'local'})")
            try:
                result = torch_trainer(cfg, name, checks, use_gpu).fit()
            except TrainingFailedError as e:
                if checks.target is not None:
                    mark_failed(checks.target, name, e)
                raise ClusterError(f"Ray Train run {name} failed: {e}") from e
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, SIGTERM: marked once the workers are gone
        if checks.target is not None:
            mark_stopped(checks.target, name, f"interrupted ({type(e).__name__})", by="signal")
        raise
    metrics = result.metrics or {}
    return (
        f"{name}: {metrics.get('epoch')} epochs, {metrics.get('step')} steps on {cfg.ray.num_workers} "
        f"workers, loss_d {metrics.get('d_loss', float('nan')):.4f}, loss_g "
        f"{metrics.get('g_loss', float('nan')):.4f}; checkpoint {result.checkpoint.path if result.checkpoint else None}"
    )


def publish_finished(cfg: Config, name: str, dataset: PreparedDataset, checks: Preflight) -> str | None:
    """`publish_unpublished` for Ray run `name`: from its latest committed checkpoint, without Ray."""
    from ray.train import Result

    with quiet("ray.train", level=logging.WARNING):
        checkpoint = Result.from_path(f"{cfg.ray.storage_path.rstrip('/')}/{name}").checkpoint
    if checkpoint is None:
        return None
    with tempfile.TemporaryDirectory(prefix="ganops-publish-") as staging:
        checkpoint.to_directory(staging)
        return publish_unpublished(cfg, name, dataset, checks, Path(staging) / CHECKPOINT_NAME)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's function on every worker: Ray's context in, `run_training` does the rest."""
    import ray.train
    import ray.train.torch

    cfg = Config.model_validate(config["cfg"])
    # Ray Train sets the worker's root logger to INFO (its own "Reporting training result" notices
    # reach it under a file-path logger name); the console gets ray.log_level, as Ray Train's own logs do.
    logging.getLogger().setLevel(cfg.ray.log_level)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    # Load data: verified once per node (the launcher verified its own copy).
    if context.get_local_rank() == 0:
        dataset = open_verified(cfg.data)
    else:
        dataset = PreparedDataset.open(prepared_path(cfg.data))

    # Resume from Ray's latest committed checkpoint (a replaced worker, or a relaunch of the same name).
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        restored = Path(tempfile.mkdtemp(prefix="ganops-restore-"))
        checkpoint.to_directory(str(restored))
        resume = restored / CHECKPOINT_NAME

    def wrap(name: str, module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers are synced once, here; not in forward: D runs on real and fake batches separately.
        return DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
        )

    def report(epoch_report: EpochReport, metrics: dict[str, float], run_id: str | None) -> None:
        reported = {**metrics, "epoch": epoch_report.epoch, "step": epoch_report.step}
        reported[STOPPED_EARLY] = float(epoch_report.stopped)
        if run_id is not None:
            reported[EXTRA_KEY] = run_id
        if epoch_report.checkpoint is None:  # other ranks; rank 0 between checkpoint epochs
            ray.train.report(reported)
            return
        with tempfile.TemporaryDirectory(prefix="ganops-commit-") as staging:
            shutil.copy2(epoch_report.checkpoint, Path(staging) / CHECKPOINT_NAME)
            best = epoch_report.checkpoint.parent / BEST_NAME
            if best.exists():  # a replacement worker on another node keeps the best epoch too
                shutil.copy2(best, Path(staging) / BEST_NAME)
            ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(staging))

    checks = Preflight(TrackingTarget(**config["tracking"]) if config["tracking"] else None, config["tags"])
    run_training(
        cfg,
        config["run_name"],
        dataset,
        checks,
        rank=rank,
        world_size=world_size,
        device=device,
        resume=resume,
        wrap=wrap,
        report=report,
    )
