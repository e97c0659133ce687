"""The one training loop: every model family, one process or one rank of many (Ray Train wraps it).

`train()` alternates a discriminator-side step and a generator step on each batch, keeps EMA copies,
writes a fixed-noise sample grid and a complete checkpoint at epoch ends, and reports per-epoch metrics
through hooks. Distributed training supplies `rank`, `world_size` and a `wrap` hook (DDP); the loop
itself never imports a distributed framework.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import platform
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gan_models.config import Config, TrainConfig
from gan_models.data.prepared import PreparedDataset
from gan_models.errors import DatasetError, GanOpsError
from gan_models.io import remove_stale_temporaries, write_with
from gan_models.nets import build_models, family, has_convolutions, sample_latent, split_modules
from gan_models.nets.family import Objective
from gan_models.nets.layers import trainable
from gan_models.training.batches import DeviceData, iterate_batches, steps_per_epoch
from gan_models.training.checkpoint import TrainState, check_compatible, load_checkpoint, save_checkpoint
from gan_models.training.samples import fixed_latent, save_grid
from gan_models.training.validation import Score, check_validation, score, validate
from gan_models.tricks import EMA, HistoricalAveraging, clip_gradients, set_requires_grad, sigmoid_rampup

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "checkpoint_best.pt"  # the state at the best validation score (with train.eval_every)
_CHECK_EVERY = 25  # steps between divergence checks: one device sync per check, not per step


class DivergenceError(GanOpsError):
    """A loss became NaN or infinite; the message names the step and the loss."""


@dataclass
class EpochReport:
    """What a finished epoch hands to `TrainHooks.on_epoch`."""

    epoch: int  # epochs completed, 1-based
    step: int  # optimizer steps completed (per rank)
    metrics: dict[str, float]
    checkpoint: Path | None  # written this epoch (rank 0), else None
    samples: Path | None  # sample grid PNG written this epoch (rank 0), else None
    averaged: Callable[[str], nn.Module] | None = None  # a copy of a network with its EMA weights, eval mode
    validation: dict[str, float] = field(default_factory=dict)  # rank 0's validation metrics, if scored
    best: Path | None = None  # the best checkpoint, written this epoch (rank 0), else None
    stopped: bool = False  # training stops after this epoch (train.patience)


@dataclass
class TrainHooks:
    """Optional callbacks; all default to doing nothing."""

    on_step: Callable[[int, dict[str, Tensor]], None] | None = None  # (step, detached loss terms)
    on_epoch: Callable[[EpochReport], None] | None = None
    wrap: Callable[[str, nn.Module], nn.Module] | None = None  # e.g. DistributedDataParallel per network
    extra_state: Callable[[], dict[str, Any]] | None = None  # stored in every checkpoint under "extra"
    # Rank 0's "stop now" to every rank (a broadcast under DDP); only called when train.patience is set.
    agree: Callable[[bool], bool] | None = None


@dataclass
class TrainResult:
    epoch: int
    step: int
    history: list[dict[str, float]]
    models: dict[str, nn.Module]
    ema: dict[str, EMA] = field(default_factory=dict)
    checkpoint: Path | None = None
    # The weights to publish (train.keep=best: the best validation epoch's, EMA applied); None: the last.
    published: dict[str, dict[str, Tensor]] | None = None
    model_epoch: int = 0  # the epoch `averaged` weights come from
    best: dict[str, Any] | None = None
    stop_reason: str | None = None

    def averaged(self, name: str) -> nn.Module:
        """A copy of network `name` with the weights to publish (EMA applied where EMA is on)."""
        module = copy.deepcopy(self.models[name])
        if self.published is not None:
            module.load_state_dict(self.published[name])
        elif name in self.ema:
            self.ema[name].copy_to(module)
        return module.eval()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GanOpsError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def _cpuinfo(*keys: str) -> str:
    """The value of the first `/proc/cpuinfo` line starting with one of `keys` ("" where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    line = next((ln for ln in text.splitlines() if ln.startswith(keys)), "")
    return line.partition(":")[2].strip()


def cpu_flags() -> frozenset[str]:
    """The feature flags of this machine's CPU (`/proc/cpuinfo`; empty where there is none)."""
    return frozenset(_cpuinfo("flags", "Features").split())


def cpu_model() -> str:
    """This machine's CPU model, the name figures measured on it go with."""
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


def resolve_precision(
    requested: str, device: torch.device, flags: frozenset[str] | None = None, *, convolutional: bool = True
) -> str:
    """ "fp32" or "bf16" for `train.precision` on `device`; `auto` takes bf16 only for convolutional nets
    where they run on bf16 units.

    On CPUs without AVX512-BF16 or AMX, bf16 autocast is emulated and slower than fp32 (an AVX2 machine:
    benchmarks/RESULTS.md); `flags` defaults to this machine's CPU flags. MLP nets gain about 1.1x from
    bf16 on a CPU, and the MNIST semi-supervised GAN's training collapsed under it where fp32 learned
    (RESULTS.md), so `auto` keeps them in fp32.
    """
    if requested != "auto":
        return requested
    if not convolutional:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if (cpu_flags() if flags is None else flags) & BF16_CPU_FLAGS else "fp32"


def to_layout(module: nn.Module, layout: torch.memory_format) -> nn.Module:
    """`module.to(memory_format=layout)`, except 1x1 kernels: their gradients come back contiguous
    whatever the weight's layout, and DDP warns ("grad strides do not match") and copies each step."""
    module.to(memory_format=layout)
    for p in module.parameters():
        if p.dim() == 4 and p.shape[2:] == (1, 1):
            p.data = p.data.clone(memory_format=torch.contiguous_format)  # .contiguous() keeps 1x1 strides
    return module


def resolve_channels_last(requested: str | bool, precision: str) -> bool:
    """`train.channels_last`: auto follows bf16, where the channels-last conv kernels are the fast ones."""
    return precision == "bf16" if requested == "auto" else bool(requested)


def _no_sync(modules: Iterable[nn.Module]) -> contextlib.ExitStack:
    """Skip gradient synchronisation of DDP-wrapped modules that are frozen for this step."""
    stack = contextlib.ExitStack()
    for m in modules:
        if hasattr(m, "no_sync"):
            stack.enter_context(m.no_sync())
    return stack


def _lr_factor(cfg: Config) -> Callable[[int], float]:
    """Constant, then (with train.lr_decay_start) linear decay to zero at the last epoch."""
    start, total = cfg.train.lr_decay_start, cfg.train.epochs

    def factor(epoch: int) -> float:
        if start is None or epoch < start:
            return 1.0
        return max(0.0, (total - epoch) / max(1, total - start))

    return factor


@dataclass(frozen=True)
class Phase:
    """One side of a training step (stylegan2-ada's phases): what it trains, with what, on which loss."""

    name: str  # "d" or "g": the prefix of its logged terms
    trained: dict[str, nn.Module]  # modules whose parameters this phase steps
    frozen: dict[str, nn.Module]  # the other side: no gradients accumulate in it ...
    unsynced: dict[str, nn.Module]  # ... and its DDP wrappers skip their gradient sync
    objective: Objective
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    averaging: tuple[str, HistoricalAveraging] | None  # (network, its historical average) if enabled


def train(
    cfg: Config,
    dataset: PreparedDataset,
    *,
    out_dir: Path,
    device: torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    resume: Path | None = None,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Train `cfg.model` on `dataset` for `cfg.train.epochs` epochs (in total, counting a resumed part).

    Rank 0 writes checkpoints and sample grids under `out_dir`. With `resume`, training continues from
    that checkpoint exactly: on the CPU, k epochs + resume + (N - k) epochs give the same weights as N.
    """
    hooks = hooks or TrainHooks()
    tc = cfg.train
    device = device or resolve_device(tc.device)
    out_dir = Path(out_dir)
    spec = family(cfg.model)
    check_trainable(cfg, dataset, world_size)

    # Resume: read and check the checkpoint before building anything.
    saved = check_resume(cfg, dataset, resume) if resume else None

    # Construct networks: weights start identical on every rank (one seed), noise streams per rank.
    torch.manual_seed(cfg.seed)
    models = {
        name: m.to(device)
        for name, m in build_models(cfg.model, dataset.image_shape, dataset.num_classes).items()
    }
    noise = torch.Generator()

    # Load data.
    data = DeviceData.load(dataset, device)
    steps = steps_per_epoch(len(data), tc.batch_size, world_size)

    # Initialise from data (improved-gan's weight-norm init, StackedGAN's encoder pre-training): once,
    # before the first step; a resumed run's weights already carry it. Every rank draws the same.
    if saved is None and spec.initialize is not None:
        torch.manual_seed(cfg.seed)  # dropout and noise during the init pass
        spec.initialize(models, data, cfg.model, tc, torch.Generator().manual_seed(cfg.seed))

    # Construct optimizers and tricks.
    g_side, d_side = split_modules(models)
    # The fused kernel updates every parameter in one pass (CPU and CUDA); on the small MNIST nets the
    # per-tensor loops of the default implementation cost about a tenth of a step.
    adam = functools.partial(torch.optim.Adam, betas=(tc.beta1, tc.beta2), eps=tc.adam_eps, fused=True)
    d_params = [p for m in d_side.values() for p in trainable(m)]
    g_params = [p for m in g_side.values() for p in trainable(m)]
    opt_d, opt_g = adam(d_params, lr=tc.lr_d), adam(g_params, lr=tc.lr_g)
    main_nets = ("generator", "discriminator")
    state = TrainState(models, {"g": opt_g, "d": opt_d})
    if tc.ema_decay > 0:
        state.ema = {n: EMA(models[n], tc.ema_decay, warmup=True) for n in main_nets}
    if tc.historical_averaging > 0:
        state.averaging = {n: HistoricalAveraging(models[n], tc.historical_averaging) for n in main_nets}
    lr_factor = _lr_factor(cfg)
    # bf16 autocast (no loss scaling needed, unlike fp16) and channels-last layouts for tensor cores.
    precision = resolve_precision(tc.precision, device, convolutional=has_convolutions(models))
    autocast = functools.partial(torch.autocast, device.type, torch.bfloat16, precision == "bf16")
    layout = (
        torch.channels_last if resolve_channels_last(tc.channels_last, precision) else torch.contiguous_format
    )
    for m in models.values():
        to_layout(m, layout)
    if saved is not None:
        state.load_state_dict(saved, str(resume))

    # Wrap for distributed training (after loading: DDP broadcasts rank 0's weights at construction).
    wrapped = {name: hooks.wrap(name, m) if hooks.wrap else m for name, m in models.items()}
    g_wrapped, d_wrapped = split_modules(wrapped)

    def averaging(net: str) -> tuple[str, HistoricalAveraging] | None:
        return (net, state.averaging[net]) if net in state.averaging else None

    # The discriminator side first, then the generator against the updated discriminator.
    phases = (
        Phase(
            "d",
            d_side,
            g_side,
            g_wrapped,
            spec.discriminator_objective,
            opt_d,
            d_params,
            averaging("discriminator"),
        ),
        Phase(
            "g", g_side, d_side, d_wrapped, spec.generator_objective, opt_g, g_params, averaging("generator")
        ),
    )
    sample_z = fixed_latent(cfg, dataset.num_classes)
    own_g_batch = spec.independent_generator_batch is not None and spec.independent_generator_batch(
        cfg.model, tc
    )
    best_path = out_dir / BEST_NAME
    if rank == 0:
        remove_stale_temporaries(out_dir)  # what a writer killed mid-save (SIGKILL) left behind
    restored_best = Path(resume).parent / BEST_NAME if resume is not None else None
    if rank == 0 and restored_best is not None and restored_best.exists():
        if restored_best.resolve() != best_path.resolve():  # restored elsewhere (Ray): bring it along
            write_with(best_path, lambda tmp: shutil.copyfile(restored_best, tmp))

    # Train.
    while state.epoch < tc.epochs and state.stop_reason is None:
        epoch = state.epoch
        # Each epoch's randomness (noise, dropout) is a function of (seed, rank, epoch) alone, so a run
        # resumed at an epoch boundary continues exactly, on any number of ranks.
        _seed_epoch(cfg.seed, rank, world_size, epoch, noise)
        # The schedule is a function of the epoch and the config, so resuming (or extending) follows it.
        _set_lr(opt_g, tc.lr_g * lr_factor(epoch))
        _set_lr(opt_d, tc.lr_d * lr_factor(epoch))
        for m in models.values():
            m.train()
        sums: dict[str, Tensor] = {}
        pending: list[tuple[int, dict[str, Tensor]]] = []
        started = time.perf_counter()
        batches = iterate_batches(
            data, tc.batch_size, cfg.seed, epoch, rank, world_size, spec.needs_labeled_batch, own_g_batch
        )
        for batch in batches:
            step_terms: dict[str, Tensor] = {}
            losses: dict[str, Tensor] = {}
            step_cfg = _ramped(tc, state.step)
            for phase in phases:
                real, labels = batch.for_generator() if phase.name == "g" else (batch.real, batch.labels)
                real = real.contiguous(memory_format=layout)
                set_requires_grad(phase.trained.values(), True)
                set_requires_grad(phase.frozen.values(), False)
                latent = sample_latent(
                    cfg.model, tc.batch_size, dataset.num_classes, generator=noise, device=device
                )
                with _no_sync(phase.unsynced.values()), autocast():
                    result = phase.objective(wrapped, real, labels, latent, cfg.model, step_cfg)
                loss = result["loss"]
                if phase.averaging is not None:
                    net, average = phase.averaging
                    loss = loss + average.penalty(models[net])
                phase.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_gradients(phase.params, tc.grad_clip)
                phase.optimizer.step()
                step_terms |= {f"{phase.name}_{k}": v.detach() for k, v in result.items()}
                losses[f"{phase.name}_loss"] = loss.detach()

            # Update EMA and historical averages.
            for name, e in state.ema.items():
                e.update(models[name])
            for name, h in state.averaging.items():
                h.update(models[name])

            state.step += 1
            for k, v in step_terms.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            pending.append((state.step, losses))
            if len(pending) >= _CHECK_EVERY:
                _check_finite(pending)
            if hooks.on_step:
                hooks.on_step(state.step, step_terms)
        _check_finite(pending)
        set_requires_grad(models.values(), True)
        state.epoch += 1
        epoch = state.epoch

        # Epoch metrics.
        seconds = time.perf_counter() - started
        metrics = {k: v.item() / steps for k, v in sums.items()}
        if "d_accuracy" in metrics:
            metrics["train_accuracy"] = metrics.pop("d_accuracy")  # over the labelled examples seen
        metrics |= {
            "epoch_time_s": seconds,
            "images_per_s": steps * tc.batch_size * world_size / seconds,
            "lr_g": opt_g.param_groups[0]["lr"],
            "lr_d": opt_d.param_groups[0]["lr"],
        }
        # Evaluate metrics (rank 0): the EMA nets on the validation split; the best epoch is kept.
        validation: dict[str, float] = {}
        improved = False
        if rank == 0 and tc.eval_every and (epoch % tc.eval_every == 0 or epoch == tc.epochs):
            validation = validate(cfg, dataset, lambda n: _averaged(models[n], state.ema.get(n)), device)
            current = score(validation)
            held = Score(state.best["metric"], state.best["value"]) if state.best else None
            improved = current is not None and current.beats(held)
            if improved:
                state.best = {"epoch": epoch, "metric": current.metric, "value": current.value}
                state.evals_since_best = 0
            else:
                state.evals_since_best += 1
            if tc.patience and state.best and state.evals_since_best >= tc.patience:
                state.stop_reason = (
                    f"early stop at epoch {epoch}: {state.best['metric']} did not improve for "
                    f"{tc.patience} evaluations (best {state.best['value']:.4g} at epoch {state.best['epoch']})"
                )
        if tc.patience and hooks.agree is not None and hooks.agree(state.stop_reason is not None):
            state.stop_reason = state.stop_reason or "early stop (decided by rank 0)"
        state.history.append({"epoch": epoch, **metrics, **validation})

        # Save snapshot and sample grid (rank 0).
        checkpoint = samples = best = None
        if rank == 0 and (epoch % tc.samples_every == 0 or epoch == tc.epochs):
            generator = _averaged(models["generator"], state.ema.get("generator"))
            samples = save_grid(generator, sample_z, out_dir / "samples" / f"epoch_{epoch:04d}.png")
        last_epoch = epoch == tc.epochs or state.stop_reason is not None
        if rank == 0 and (epoch % tc.checkpoint_every == 0 or last_epoch or improved):
            extra = hooks.extra_state() if hooks.extra_state else {}
            snapshot = state.state_dict(cfg.to_dict(), dataset.image_shape, dataset.num_classes, extra)
            if improved:
                save_checkpoint(best_path, snapshot, keep_previous=False)
                best = best_path
            if epoch % tc.checkpoint_every == 0 or last_epoch:
                checkpoint = out_dir / CHECKPOINT_NAME
                save_checkpoint(checkpoint, snapshot)
        if hooks.on_epoch:
            hooks.on_epoch(
                EpochReport(
                    epoch,
                    state.step,
                    metrics,
                    checkpoint,
                    samples,
                    lambda name: _averaged(models[name], state.ema.get(name)).eval(),
                    validation,
                    best,
                    state.stop_reason is not None,
                )
            )

    # The weights to publish: the best validation epoch's (train.keep=best), else the last.
    last = out_dir / CHECKPOINT_NAME
    result = TrainResult(
        state.epoch,
        state.step,
        state.history,
        models,
        state.ema,
        last if rank == 0 and last.exists() else None,
    )
    result.model_epoch, result.best, result.stop_reason = state.epoch, state.best, state.stop_reason
    if rank == 0 and tc.keep == "best" and state.best and best_path.exists():
        result.published = _published(load_checkpoint(best_path))
        result.model_epoch = state.best["epoch"]
    return result


def check_trainable(cfg: Config, dataset: PreparedDataset, world_size: int) -> None:
    """What `train` would refuse in `cfg` for `dataset` on `world_size` ranks, checked by launchers before
    anything starts (under Ray a user error raised in a worker would only be retried): the validation
    split `train.eval_every` needs, and a full batch per rank."""
    check_validation(cfg, dataset)
    n = len(dataset.labels("train"))
    if n < cfg.train.batch_size * world_size:
        ranks = f" x {world_size} ranks (ray.num_workers)" if world_size > 1 else ""
        raise DatasetError(
            f"train.batch_size={cfg.train.batch_size}{ranks} needs at least "
            f"{cfg.train.batch_size * world_size} training examples; the train split of {dataset.path} "
            f"holds {n}: lower train.batch_size{' or ray.num_workers' if world_size > 1 else ''}, or prepare more data"
        )


def check_resume(cfg: Config, dataset: PreparedDataset, resume: Path) -> dict[str, Any]:
    """The checkpoint at `resume`, if `cfg` on `dataset` can continue it (else a `CheckpointError` naming
    every difference): callers check before they touch anything else, MLflow included."""
    saved = load_checkpoint(resume)
    config = cfg.to_dict() | {"_data_shape": list(dataset.image_shape), "_num_classes": dataset.num_classes}
    check_compatible(saved, config, str(resume))
    return saved


def result_from_checkpoint(cfg: Config, dataset: PreparedDataset, path: Path) -> TrainResult:
    """The `TrainResult` a finished training at checkpoint `path` returned (its networks, EMA weights,
    and the weights to publish under `train.keep`), rebuilt without training: for publishing a run
    whose models never reached the tracking store."""
    saved = check_resume(cfg, dataset, path)
    torch.manual_seed(cfg.seed)
    models = build_models(cfg.model, dataset.image_shape, dataset.num_classes)
    for name, module in models.items():
        module.load_state_dict(saved["models"][name])
    ema = {}
    for name, state in saved["ema"].items():
        ema[name] = EMA(models[name], cfg.train.ema_decay, warmup=True)
        ema[name].load_state_dict(state)
    result = TrainResult(
        int(saved["epoch"]), int(saved["step"]), list(saved["history"]), models, ema, Path(path)
    )
    result.best, result.stop_reason, result.model_epoch = (
        saved.get("best"),
        saved.get("stop_reason"),
        result.epoch,
    )
    best_path = Path(path).parent / BEST_NAME
    if cfg.train.keep == "best" and result.best and best_path.exists():
        result.published = _published(load_checkpoint(best_path))
        result.model_epoch = result.best["epoch"]
    return result


def _published(saved: dict[str, Any]) -> dict[str, dict[str, Tensor]]:
    """Each network's weights from a checkpoint, with its EMA weights where it has them."""
    weights = {name: dict(sd) for name, sd in saved["models"].items()}
    for name, ema_state in saved["ema"].items():
        weights[name].update(ema_state["shadow"])
    return weights


def _ramped(tc: TrainConfig, step: int) -> TrainConfig:
    """`tc` with the unsupervised weight of step `step` under `train.unlabeled_rampup` (a function of
    the step alone, so a resumed run follows the same ramp)."""
    factor = sigmoid_rampup(step, tc.unlabeled_rampup)
    return tc if factor == 1.0 else tc.model_copy(update={"unlabeled_weight": tc.unlabeled_weight * factor})


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _check_finite(pending: list[tuple[int, dict[str, Tensor]]]) -> None:
    """Raise at the first step whose loss is NaN or infinite; one device sync for the whole window."""
    if pending and not torch.stack([v for _, t in pending for v in t.values()]).isfinite().all():
        for step, terms in pending:
            for name, value in terms.items():
                if not torch.isfinite(value):
                    raise DivergenceError(
                        f"training diverged at step {step}: {name} = {value.item()}; no checkpoint was written "
                        "for this epoch (lower the learning rate or enable train.grad_clip)"
                    )
    pending.clear()


def _averaged(module: nn.Module, ema: EMA | None) -> nn.Module:
    """A copy of `module` holding its EMA weights (a plain copy when EMA is off)."""
    copy_ = copy.deepcopy(module)
    if ema is not None:
        ema.copy_to(copy_)
    return copy_


def _seed_epoch(seed: int, rank: int, world_size: int, epoch: int, noise: torch.Generator) -> None:
    """Seed dropout (torch's global RNG) and the latent-noise generator for one epoch of one rank."""
    stream = ((seed * world_size + rank) * 1_000_003 + epoch) * 2
    torch.manual_seed(stream)
    noise.manual_seed(stream + 1)
