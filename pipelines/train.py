"""Training: one entry point for one process and for every Ray Train worker, and the `ganops train` paths.

`run_training` does the run wiring once: the run directory and its `config.yaml`, the MLflow run
(started or continued from the checkpoint's run id), per-epoch metrics averaged over ranks, the
replica check before checkpoints, the progress line, and failure or finish. `--no-ray` calls it with
rank 0 (`train_local`); the Ray worker (`pipelines.ray_train`) only turns Ray's context into its
arguments. `train_job` runs `ganops train` as a child process, for the flows.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import io
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gan_models.config import Config
from gan_models.data.prepare import open_verified, prepared_path
from gan_models.data.prepared import MANIFEST, PreparedDataset, sha256_file
from gan_models.errors import DatasetError, GanOpsError
from gan_models.io import write_text
from gan_models.nets import convolutional
from gan_models.training.checkpoint import read_resume_info, resume_source
from gan_models.training.loop import (
    CHECKPOINT_NAME,
    EpochReport,
    TrainHooks,
    TrainResult,
    check_resume,
    check_trainable,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    result_from_checkpoint,
    train,
)
from pipelines.tracking import (
    EXTRA_KEY,
    RunTracker,
    TrackingTarget,
    ensure_experiment,
    logged_epochs,
    mark_failed,
    mark_stopped,
    resolve_target,
    run_status,
    source_tags,
    system_metrics,
    training_key,
)
from pipelines.versioning import DATA_DIR, DVC_FILE


class ReplicaMismatchError(GanOpsError):
    """A rank's parameters differ from rank 0's: DDP replicas went out of sync."""


class TrainingTimeout(GanOpsError):
    """Training ran past `flow.train_timeout_s`; its Ray job was stopped and its MLflow run failed."""


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_name(name: str) -> str:
    """A run name names a folder under train.output_dir and Ray's storage: one plain path component."""
    if not _RUN_NAME.fullmatch(name) or ".." in name:
        raise GanOpsError(
            f"run name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit, "
            "at most 128, no '..'): it names a folder, and may not leave train.output_dir"
        )
    return name


@contextlib.contextmanager
def run_lock(cfg: Config, run_name: str, root: Path | None = None) -> Iterator[None]:
    """Hold run `run_name` for this launcher: a second launcher of the same name (a Prefect retry racing
    the first, two users) fails at once, naming the holder, instead of creating a second MLflow run or
    sharing one checkpoint directory.

    An OS file lock in `root`, the storage that holds the run's checkpoints (default
    `train.output_dir`; the Ray launcher passes `ray.storage_path`), so launchers on other machines
    that share that storage (NFS: Linux takes these locks on the server) see it too. It ends with its
    process: a launcher that was killed holds nothing. Checkpoints on object storage (`s3://...`) have
    no such lock; the launcher's `train.output_dir` then holds it, for that machine alone."""
    from filelock import FileLock, Timeout

    root = Path(root or cfg.train.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{run_name}.lock"), timeout=0)
    holder = root / f".{run_name}.holder"
    try:
        lock.acquire()
    except Timeout:
        who = holder.read_text().strip() if holder.exists() else "another process"
        raise GanOpsError(
            f"run {run_name} is being trained by {who}: wait for it, or choose another --run-name"
        ) from None
    try:
        holder.write_text(f"process {os.getpid()} on {socket.gethostname()}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def run_name_for(cfg: Config, dataset: PreparedDataset | str) -> str:
    """The one run-name rule: dataset, family, what decides the model (`training_key`), and the data
    bytes it trains on (the sha256 of the prepared dataset's manifest, or the dataset itself)."""
    manifest = dataset if isinstance(dataset, str) else sha256_file(Path(dataset.path) / MANIFEST)
    return f"{cfg.data.dataset}-{cfg.model.name}-{training_key(cfg)[:8]}-{manifest[:8]}"


@dataclass(frozen=True)
class Preflight:
    """What a launcher checked before any training starts (plain data: it travels to Ray workers)."""

    target: TrackingTarget | None  # None: tracking disabled
    tags: dict[str, str]  # data version, manifest digest, git commit: recorded on the MLflow run


def preflight(cfg: Config, project: Path, world_size: int = 1) -> tuple[PreparedDataset, Preflight]:
    """Verify the data (and that `cfg` can train on it on `world_size` ranks) and reach the tracking
    store; each failure is one clear `GanOpsError`."""
    path = (project / prepared_path(cfg.data)).resolve()
    versioned = (project / DVC_FILE).exists() and path.is_relative_to((project / DATA_DIR).resolve())
    if versioned and not (path / MANIFEST).exists():
        raise DatasetError(
            f"{path}: no prepared dataset here, and {project / DVC_FILE} versions the data: restore those "
            "exact bytes with `ganops data pull` (or prepare them with `ganops data prepare`)"
        )
    dataset = open_verified(cfg.data)  # corrupted or missing data fails here
    check_trainable(cfg, dataset, world_size)
    target = resolve_target(cfg.tracking, project) if cfg.tracking.enabled else None
    if target is not None:
        ensure_experiment(target)  # so does an unreachable tracking server
    return dataset, Preflight(target, source_tags(dataset, project) if target else {})


# Called on every rank after each epoch with (report, metrics averaged over ranks, MLflow run id).
Reporter = Callable[[EpochReport, dict[str, float], str | None], None]


def run_training(
    cfg: Config,
    run_name: str,
    dataset: PreparedDataset,
    checks: Preflight,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    resume: Path | None = None,
    wrap: Callable[[str, nn.Module], nn.Module] | None = None,
    report: Reporter | None = None,
) -> TrainResult:
    """Train `cfg` as run `run_name` on this rank, tracked in MLflow by rank 0; resume from `resume`."""
    out_dir = Path(cfg.train.output_dir) / run_name
    here = device or torch.device("cpu")  # where this rank's collectives run
    extra = {}
    if resume is not None and rank == 0:
        # Before MLflow: a changed architecture must not reopen (and fail) the run the checkpoint names.
        extra = check_resume(cfg, dataset, resume).get("extra", {})
    tracker = None
    if rank == 0:
        write_text(out_dir / "config.yaml", cfg.to_public_yaml())
        if checks.target is not None:  # the run id in the checkpoint continues the same MLflow run
            tracker = RunTracker.start(checks.target, cfg, run_name, checks.tags, run_id=extra.get(EXTRA_KEY))
            # What `auto` chose on this machine (the same function the loop applies).
            precision = resolve_precision(
                cfg.train.precision,
                device or resolve_device(cfg.train.device),
                convolutional=convolutional(cfg.model, dataset.image_shape, dataset.num_classes),
            )
            channels_last = resolve_channels_last(cfg.train.channels_last, precision)
            tracker.set_tags({"precision": precision, "channels_last": str(channels_last).lower()})
    live: dict[str, nn.Module] = {}
    progress = EpochLine(run_name, cfg.train.epochs) if rank == 0 else None
    curves = EpochTable(out_dir / EPOCHS_FILE) if rank == 0 else None

    def wrap_and_remember(name: str, module: nn.Module) -> nn.Module:
        live[name] = module
        return wrap(name, module) if wrap is not None else module

    def on_epoch(epoch_report: EpochReport) -> None:
        # Training metrics are averaged over the ranks; validation is rank 0's alone.
        metrics = mean_over_ranks(epoch_report.metrics, world_size, here)
        metrics |= epoch_report.validation
        checkpoint_epoch = epoch_report.epoch % cfg.train.checkpoint_every == 0
        last = epoch_report.epoch == cfg.train.epochs or epoch_report.stopped
        if world_size > 1 and (checkpoint_epoch or last):
            check_identical(live, here, f"before the epoch-{epoch_report.epoch} checkpoint")
            metrics["replicas_identical"] = 1.0
        if tracker is not None:
            tracker.log_epoch(epoch_report.epoch, epoch_report.step, metrics, epoch_report.samples)
        if progress is not None:
            progress.update(epoch_report.epoch, metrics)
        if curves is not None:
            curves.add(epoch_report.epoch, metrics)
        if report is not None:
            report(epoch_report, metrics, tracker.run_id if tracker else None)

    hooks = TrainHooks(
        on_epoch=on_epoch,
        wrap=wrap_and_remember if world_size > 1 else None,
        extra_state=(lambda: {EXTRA_KEY: tracker.run_id}) if tracker is not None else None,
        agree=(lambda stop: rank_zero_says(stop, here)) if world_size > 1 else None,
    )
    try:
        with node_metrics(cfg, checks, tracker.run_id if tracker else None, world_size, here):
            result = train(
                cfg,
                dataset,
                out_dir=out_dir,
                device=device,
                rank=rank,
                world_size=world_size,
                resume=resume,
                hooks=hooks,
            )
    except BaseException as e:
        if tracker is not None:
            tracker.fail(e)
        raise
    if tracker is not None:
        tracker.finish(cfg, result, dataset)
    return result


def publish_unpublished(
    cfg: Config, run_name: str, dataset: PreparedDataset, checks: Preflight, checkpoint: Path
) -> str | None:
    """Where a finished training's MLflow run never got its models (tracking failed at its end, or the
    process died there), log them now from `checkpoint`, with any epoch metrics the run lacks, and
    finish the run, without training. The summary, or None where the run is complete (or untracked)."""
    run_id = read_resume_info(checkpoint).extra.get(EXTRA_KEY)
    if checks.target is None or not run_id or run_status(checks.target, run_id) in (None, "FINISHED"):
        return None
    result = result_from_checkpoint(cfg, dataset, checkpoint)
    tracker = RunTracker.start(checks.target, cfg, run_name, checks.tags, run_id=run_id)
    logged = logged_epochs(checks.target, run_id)
    samples = Path(cfg.train.output_dir) / run_name / "samples"
    for entry in result.history:
        if entry["epoch"] not in logged:
            grid = samples / f"epoch_{int(entry['epoch']):04d}.png"
            metrics = {k: v for k, v in entry.items() if k != "epoch"}
            tracker.pending.append((int(entry["epoch"]), None, metrics, grid if grid.exists() else None))
    tracker.finish(cfg, result, dataset)
    return (
        f"{run_name}: trained for {result.epoch} epochs already; its models are now logged to MLflow run "
        f"{run_id} (nothing retrained)"
    )


EPOCHS_FILE = "epochs.csv"  # one row per epoch, the run's metrics: what `dvc plots show` draws


class EpochTable:
    """The per-epoch metrics of a run as a CSV file beside its checkpoints, rewritten whole (atomically)
    each epoch; a resumed run keeps the rows of the epochs before its checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, str]] = []
        if path.exists():
            with open(path, newline="") as f:
                self.rows = list(csv.DictReader(f))

    def add(self, epoch: int, metrics: dict[str, float]) -> None:
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch]
        self.rows.append({"epoch": str(epoch)} | {k: f"{v:.6g}" for k, v in sorted(metrics.items())})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, text.getvalue())


class EpochLine:
    """One line per epoch from rank 0: epoch, losses, accuracy, images/s and the time left."""

    def __init__(self, run_name: str, epochs: int) -> None:
        self.run_name, self.epochs, self.seconds = run_name, epochs, 0.0

    def update(self, epoch: int, metrics: dict[str, float]) -> None:
        self.seconds = metrics.get("epoch_time_s", self.seconds)
        eta = (self.epochs - epoch) * self.seconds
        accuracy = f"  train_acc {metrics['train_accuracy']:.3f}" if "train_accuracy" in metrics else ""
        accuracy += f"  val_acc {metrics['val_accuracy']:.3f}" if "val_accuracy" in metrics else ""
        accuracy += f"  val_fd {metrics['val_domain_fd']:.1f}" if "val_domain_fd" in metrics else ""
        print(
            f"[{self.run_name}] epoch {epoch}/{self.epochs}  d_loss {metrics.get('d_loss', float('nan')):.4f}  "
            f"g_loss {metrics.get('g_loss', float('nan')):.4f}{accuracy}  "
            f"{metrics.get('images_per_s', 0):.0f} img/s  eta {eta:.0f}s",
            flush=True,
        )


def train_local(cfg: Config, run_name: str | None = None, project: Path | None = None) -> str:
    """`ganops train --no-ray`: train in this process (resuming the run's checkpoint), return a summary."""
    project = (project or Path.cwd()).resolve()
    if run_name is not None:
        check_run_name(run_name)  # before any work
    dataset, checks = preflight(cfg, project)
    name = run_name or run_name_for(cfg, dataset)
    with run_lock(cfg, name):
        return _train_local(cfg, name, dataset, checks)


def _train_local(cfg: Config, name: str, dataset: PreparedDataset, checks: Preflight) -> str:
    run_dir = Path(cfg.train.output_dir) / name
    checkpoint = run_dir / CHECKPOINT_NAME
    resume = resume_source(checkpoint)  # the previous checkpoint where the latest is unreadable
    info = read_resume_info(resume or checkpoint)
    if info.finished(cfg.train.epochs) and resume is not None:
        published = publish_unpublished(cfg, name, dataset, checks, resume)
        if published is not None:
            return published
    if info.finished(cfg.train.epochs):
        why = f"; {info.stop_reason}" if info.stop_reason else ""
        return f"{run_dir}: already trained for {info.epoch} epochs (checkpoint {checkpoint}){why}"
    device = torch.device("cpu") if cfg.train.device == "cpu" else None
    checks.tags["ganops.checkpoints"] = str(run_dir.resolve())
    result = run_training(cfg, name, dataset, checks, device=device, resume=resume)
    last = result.history[-1]
    accuracy = f", train accuracy {last['train_accuracy']:.3f}" if "train_accuracy" in last else ""
    best = result.best
    kept = f"; best {best['metric']} {best['value']:.4g} at epoch {best['epoch']}" if best else ""
    stop = f"; {result.stop_reason}" if result.stop_reason else ""
    return (
        f"{run_dir}: {result.epoch} epochs, {result.step} steps, loss_d {last['d_loss']:.4f}, "
        f"loss_g {last['g_loss']:.4f}{accuracy}{kept}{stop}; checkpoint {result.checkpoint}"
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its worker prefixes


def _forward_lines(stream: Any, log: Callable[[str], None]) -> None:
    for line in stream:
        if text := _ANSI.sub("", line).rstrip():
            log(text)


def train_job(
    cfg: Config,
    project: Path,
    run_name: str,
    timeout_s: float | None,
    flow_env: dict[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """Run `ganops train` (Ray Train) in a child process, as MLflow run `run_name`.

    On timeout, or when the caller is cancelled (Prefect's cancellation arrives as a SIGTERM that its
    engine raises here; Ctrl-C as KeyboardInterrupt), the child's whole process group is killed: the Ray
    driver goes, so does its job. A timeout ends the MLflow run FAILED, a cancellation KILLED.
    `flow_env`: extra environment for the child (the flow run it belongs to, `tracking.FLOW_RUN_ENV`);
    `log`: where the child's output lines go (a Prefect task's logger), instead of this terminal.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="ganops-", delete=False) as f:
        f.write(cfg.to_yaml())
    command = [sys.executable, "-m", "pipelines", "train", "--config", f.name, "--run-name", run_name]
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True} if log else {}
    env = os.environ | (flow_env or {})
    child = subprocess.Popen(command, cwd=project, start_new_session=True, env=env, **piped)  # type: ignore[call-overload]
    forwarder = None
    if log is not None:
        # In this context: Prefect's settings and run context (where `log` sends to) are context variables.
        context = contextvars.copy_context()
        forwarder = threading.Thread(
            target=context.run, args=(_forward_lines, child.stdout, log), daemon=True
        )
        forwarder.start()
    try:
        code = child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        error = TrainingTimeout(f"training {run_name} ran past flow.train_timeout_s={timeout_s:g}; stopped")
        if cfg.tracking.enabled:
            mark_failed(resolve_target(cfg.tracking, project), run_name, error)
        raise error from None
    except BaseException as e:  # the flow was cancelled: take the job down with it
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        if cfg.tracking.enabled:
            reason = f"cancelled ({type(e).__name__}) while training"
            mark_stopped(resolve_target(cfg.tracking, project), run_name, reason, by="cancel")
        raise
    finally:
        os.unlink(f.name)
        if forwarder is not None:
            forwarder.join(10)  # the child's last lines
    if code != 0:
        raise GanOpsError(f"training {run_name} failed (`ganops train` exited {code}); see its log above")


# Distributed checks (torch.distributed; any launcher that starts a process group).


def mean_over_ranks(metrics: dict[str, float], world_size: int, device: torch.device) -> dict[str, float]:
    """Each metric averaged over the ranks (losses of disjoint shards; images/s as each rank saw it)."""
    if world_size == 1:
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: v / world_size for k, v in zip(keys, values.tolist(), strict=True)}


def node_metrics(
    cfg: Config, checks: Preflight, run_id: str | None, world_size: int, device: torch.device
) -> contextlib.AbstractContextManager[None]:
    """System metrics of every machine on rank 0's run (`tracking.system_metrics_s`): one monitor per
    machine, on its first local rank; under `system/node<N>/` when the ranks span several machines (as
    Ray Train counts them: by IP address)."""
    if world_size > 1:
        shared = [run_id]
        dist.broadcast_object_list(shared, src=0, device=device)  # every rank calls it: a collective
        run_id = shared[0]
    if run_id is None or checks.target is None or cfg.tracking.system_metrics_s is None:
        return contextlib.nullcontext()
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return contextlib.nullcontext()
    several = os.environ.get("LOCAL_WORLD_SIZE", str(world_size)) != str(world_size)
    node = f"node{os.environ.get('NODE_RANK', '0')}" if several else None
    return system_metrics(checks.target, run_id, cfg.tracking.system_metrics_s, node)


def rank_zero_says(flag: bool, device: torch.device) -> bool:
    """Rank 0's `flag` on every rank (one broadcast)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def check_identical(models: dict[str, nn.Module], device: torch.device, when: str) -> int:
    """Compare every parameter with rank 0's; on any difference every rank raises, naming them.

    One broadcast of all parameters (the same traffic as one gradient all-reduce), so it is cheap at
    checkpoint epochs. Returns the number of values compared.
    """
    named = [(f"{n}.{k}", p.detach()) for n, m in sorted(models.items()) for k, p in m.named_parameters()]
    flat = torch.cat([p.reshape(-1).float() for _, p in named]).to(device)
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    chunks = reference.split([p.numel() for _, p in named])
    differing = [
        name
        for (name, p), ref in zip(named, chunks, strict=True)
        if not torch.equal(p.reshape(-1).float().to(device), ref)
    ]
    count = torch.tensor([len(differing)], device=device)
    dist.all_reduce(count)
    if count.item():
        raise ReplicaMismatchError(
            f"rank {dist.get_rank()}: parameters differ from rank 0's {when}: "
            f"{', '.join(differing[:5]) or '(others)'}; the checkpoint was not committed"
        )
    return flat.numel()
