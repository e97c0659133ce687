"""Ray glue: `ganops train` runs the one training loop on Ray Train workers, under DDP.

Before Ray starts, the launcher validates the config, verifies the dataset, checks that the MLflow store
answers and that the cluster has the workers and GPUs asked for; each failure is a `GanOpsError`. Each
worker runs `gan_models.training.loop.train` with its rank, every network in its own DDP module (gloo
on CPUs, NCCL on GPUs). At checkpoint epochs the workers check that their parameters equal rank 0's,
then rank 0's checkpoint is committed with `ray.train.report`; a replaced worker, or a new launch with
the same run name, resumes from the latest one (`ray.train.get_checkpoint`). Rank 0 alone writes
MLflow (Ray Train V2 has no logger callbacks).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gan_models.config import Config
from gan_models.data.prepare import open_verified, prepared_path
from gan_models.data.prepared import PreparedDataset
from gan_models.errors import GanOpsError
from gan_models.training.checkpoint import load_checkpoint
from gan_models.training.loop import CHECKPOINT_NAME, EpochReport, TrainHooks, train
from pipelines.tracking import (
    EXTRA_KEY,
    RunTracker,
    TrackingTarget,
    ensure_experiment,
    mark_failed,
    resolve_target,
    source_tags,
)
from pipelines.train_local import default_run_name


class ClusterError(GanOpsError):
    """The Ray cluster cannot run the requested workers, or training failed on it."""


class ReplicaMismatchError(GanOpsError):
    """A rank's parameters differ from rank 0's: DDP replicas went out of sync."""


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


def finished_epochs(storage_path: str, run_name: str) -> int:
    """Epochs in the latest committed checkpoint of Ray run `run_name` (0 without one)."""
    from ray.train import Result

    try:
        result = Result.from_path(f"{storage_path.rstrip('/')}/{run_name}")
    except RuntimeError:  # no such run, or no checkpoint committed yet
        return 0
    return int((result.metrics or {}).get("epoch", 0))


def launch(cfg: Config, run_name: str | None = None, project: Path | None = None) -> str:
    """Validate, start (or join) Ray, train with Ray Train, return a one-line summary."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    # Validate before Ray starts: data, tracking store, resources of a local instance.
    project = (project or Path.cwd()).resolve()
    name = run_name or default_run_name(cfg)
    cfg = absolute_paths(cfg, project)
    dataset = open_verified(cfg.data)
    target = resolve_target(cfg.tracking, project) if cfg.tracking.enabled else None
    if target is not None:
        ensure_experiment(target)
    done = finished_epochs(cfg.ray.storage_path, name)
    if done >= cfg.train.epochs:
        return f"{name}: already trained for {done} epochs (Ray run {cfg.ray.storage_path}/{name})"
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address is None and not ray.is_initialized():
        local = local_resources()
        check_resources(cfg, wants_gpu(cfg, local["GPU"]), local, "this machine")

    # Start or join Ray; check the cluster's resources.
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        except ConnectionError as e:
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {e}") from None
    try:
        available = ray.cluster_resources()
        use_gpu = wants_gpu(cfg, available.get("GPU", 0))
        check_resources(cfg, use_gpu, available, f"the Ray cluster ({address or 'local'})")

        # Train.
        per_worker = {"CPU": cfg.ray.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={
                "cfg": cfg.to_dict(),
                "run_name": name,
                "use_gpu": use_gpu,
                "tracking": asdict(target) if target else None,
                "tags": source_tags(dataset, project) if target else {},
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.ray.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker
            ),
            run_config=RunConfig(
                name=name,
                storage_path=cfg.ray.storage_path,
                failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            ),
        )
        try:
            result = trainer.fit()
        except TrainingFailedError as e:
            if target is not None:
                mark_failed(target, name, e)
            raise ClusterError(f"Ray Train run {name} failed: {e}") from e
    finally:
        if started:
            ray.shutdown()
    metrics = result.metrics or {}
    return (
        f"{name}: {metrics.get('epoch')} epochs, {metrics.get('step')} steps on {cfg.ray.num_workers} "
        f"workers, loss_d {metrics.get('d_loss', float('nan')):.4f}, loss_g "
        f"{metrics.get('g_loss', float('nan')):.4f}; checkpoint {result.checkpoint.path if result.checkpoint else None}"
    )


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's function on every worker: the one training loop, DDP-wrapped, checkpointed through Ray."""
    import ray.train
    import ray.train.torch

    cfg = Config.model_validate(config["cfg"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    # Load data: verified once per node (the launcher verified its own copy).
    if context.get_local_rank() == 0:
        dataset = open_verified(cfg.data)
    else:
        dataset = PreparedDataset.open(prepared_path(cfg.data))
    out_dir = Path(cfg.train.output_dir) / config["run_name"]

    # Resume from Ray's latest committed checkpoint (a replaced worker, or a relaunch of the same name).
    resume, extra = None, {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        restored = Path(tempfile.mkdtemp(prefix="ganops-restore-"))
        checkpoint.to_directory(str(restored))
        resume = restored / CHECKPOINT_NAME
        extra = load_checkpoint(resume).get("extra", {}) if rank == 0 else {}

    tracker = None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(cfg.to_yaml())
    if rank == 0 and config["tracking"]:
        tracker = RunTracker.start(
            TrackingTarget(**config["tracking"]),
            cfg,
            config["run_name"],
            config["tags"],
            run_id=extra.get(EXTRA_KEY),
        )

    live: dict[str, nn.Module] = {}

    def wrap(name: str, module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        live[name] = module
        # Buffers are synced once, here; not in forward: D runs on real and fake batches separately.
        return DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
        )

    def on_epoch(report: EpochReport) -> None:
        metrics = mean_over_ranks(report.metrics, world_size, device)
        if report.epoch % cfg.train.checkpoint_every == 0 or report.epoch == cfg.train.epochs:
            if world_size > 1:
                check_identical(live, device, f"before the epoch-{report.epoch} checkpoint")
                metrics["replicas_identical"] = 1.0
        if tracker is not None:
            tracker.log_epoch(report.epoch, report.step, metrics, report.samples)
        reported = {**metrics, "epoch": report.epoch, "step": report.step}
        if tracker is not None:
            reported[EXTRA_KEY] = tracker.run_id
        if report.checkpoint is None:  # other ranks; rank 0 between checkpoint epochs
            ray.train.report(reported)
            return
        with tempfile.TemporaryDirectory(prefix="ganops-commit-") as staging:
            shutil.copy2(report.checkpoint, Path(staging) / CHECKPOINT_NAME)
            ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(staging))

    hooks = TrainHooks(
        on_epoch=on_epoch,
        wrap=wrap if world_size > 1 else None,
        extra_state=(lambda: {EXTRA_KEY: tracker.run_id}) if tracker is not None else None,
    )
    try:
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


def mean_over_ranks(metrics: dict[str, float], world_size: int, device: torch.device) -> dict[str, float]:
    """Each metric averaged over the ranks (losses of disjoint shards; images/s as each rank saw it)."""
    if world_size == 1:
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: v / world_size for k, v in zip(keys, values.tolist(), strict=True)}


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
