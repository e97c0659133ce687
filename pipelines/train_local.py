"""Run the training loop in this process, tracked in MLflow: the `ganops train --no-ray` path."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from gan_models.config import Config
from gan_models.data.prepare import open_verified
from gan_models.training.checkpoint import load_checkpoint
from gan_models.training.loop import CHECKPOINT_NAME, EpochReport, TrainHooks, train
from pipelines.tracking import EXTRA_KEY, RunTracker, ensure_experiment, resolve_target, source_tags


def default_run_name(cfg: Config) -> str:
    return f"{cfg.data.dataset}-{cfg.model.name}-{cfg.hash()[:8]}"


def train_local(cfg: Config, run_name: str | None = None) -> str:
    """Verify the data, train (resuming the run's checkpoint if it exists), return a one-line summary."""
    dataset = open_verified(cfg.data)  # corrupted or missing data fails here, before any training
    target = resolve_target(cfg.tracking) if cfg.tracking.enabled else None
    if target is not None:
        ensure_experiment(target)  # so does an unreachable tracking server
    run_dir = Path(cfg.train.output_dir) / (run_name or default_run_name(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    checkpoint = run_dir / CHECKPOINT_NAME
    resume = checkpoint if checkpoint.exists() else None
    state = load_checkpoint(checkpoint) if resume else {}
    done = state.get("epoch", 0)
    if done >= cfg.train.epochs:
        return f"{run_dir}: already trained for {done} epochs (checkpoint {checkpoint})"
    tracker = None
    if target is not None:  # the run id in the checkpoint continues the same MLflow run
        tracker = RunTracker.start(
            target,
            cfg,
            run_dir.name,
            source_tags(dataset, Path.cwd()),
            run_id=state.get("extra", {}).get(EXTRA_KEY),
        )

    bar = tqdm(total=cfg.train.epochs, initial=done, desc=f"train {run_dir.name}", unit="epoch")

    def on_epoch(report: EpochReport) -> None:
        m = report.metrics
        bar.set_postfix(d=f"{m['d_loss']:.3f}", g=f"{m['g_loss']:.3f}", img_s=f"{m['images_per_s']:.0f}")
        bar.update(1)
        if tracker is not None:
            tracker.log_epoch(report.epoch, report.step, m, report.samples)

    extra_state = (lambda: {EXTRA_KEY: tracker.run_id}) if tracker is not None else None
    try:
        result = train(
            cfg,
            dataset,
            out_dir=run_dir,
            resume=resume,
            hooks=TrainHooks(on_epoch=on_epoch, extra_state=extra_state),
            device=None if cfg.train.device != "cpu" else torch.device("cpu"),
        )
    except BaseException as e:
        if tracker is not None:
            tracker.fail(e)
        raise
    finally:
        bar.close()
    if tracker is not None:
        tracker.finish(cfg, result, dataset)
    last = result.history[-1]
    accuracy = f", train accuracy {last['train_accuracy']:.3f}" if "train_accuracy" in last else ""
    return (
        f"{run_dir}: {result.epoch} epochs, {result.step} steps, loss_d {last['d_loss']:.4f}, "
        f"loss_g {last['g_loss']:.4f}{accuracy}; checkpoint {result.checkpoint}"
    )
