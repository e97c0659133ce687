"""Benchmark: what Ray Train costs the training loop. One config, in one run: images/s in this process,
under Ray Train with 1 worker and with 2 workers, as ratios to the in-process figure; and the seconds
Ray takes to start, and each launch takes beyond its epochs.

Images/s is the loop's own per-epoch figure (training steps of the epoch, all ranks' images counted),
the median of the epochs after the first. Every process gets the same threads (`--threads`: the
in-process run sets them, a Ray worker gets one per CPU it reserves), so 1 worker vs in-process isolates
Ray's overhead; 2 workers need twice the CPUs. MLflow is off on every side unless `--mlflow` (then every
run is tracked in a SQLite store, models logged, as `ganops train` does). Target: Ray Train with
1 worker at least 0.9x the in-process throughput.

    uv run python benchmarks/ray_overhead.py [--epochs 5] [--images 6400] [--threads 1] [--device cpu]
        [--mlflow] [--bytecode-ab]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gan_models.config import Config, load_config
from gan_models.data.prepared import PreparedDataset, write_prepared
from gan_models.data.sources import RawDataset
from gan_models.training.loop import cpu_model, train

RESULTS = Path(__file__).parent / "results" / "ray_overhead.jsonl"


def dataset(root: Path, n: int) -> PreparedDataset:
    """`n` random 32x32x3 images with 10 classes, prepared where `data.dataset=synthetic-svhn` reads."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % 10
    raw = RawDataset({"train": (images, labels)}, [str(i) for i in range(10)])
    return write_prepared(
        raw, root / "synthetic-svhn", name="bench", labels_per_class=10, label_seed=0, params={}
    )


def in_process(cfg: Config, ds: PreparedDataset, out: Path, threads: int) -> tuple[list[float], float]:
    """Per-epoch images/s and wall seconds of the loop in this process."""
    torch.set_num_threads(threads)
    begin = time.perf_counter()
    result = train(cfg, ds, out_dir=out, device=torch.device(cfg.train.device))
    return [h["images_per_s"] for h in result.history], time.perf_counter() - begin


def under_ray(cfg: Config, workers: int) -> tuple[list[float], float]:
    """Per-epoch images/s (from the committed checkpoints' metrics) and wall seconds of one launch."""
    from ray.train import Result

    from pipelines.ray_train import launch

    cfg = cfg.model_copy(deep=True)
    cfg.ray.num_workers = workers
    name = f"workers-{workers}"
    begin = time.perf_counter()
    launch(cfg, name)
    seconds = time.perf_counter() - begin
    frame = Result.from_path(f"{Path(cfg.train.output_dir) / 'ray'}/{name}").metrics_dataframe
    return list(frame.sort_values("epoch")["images_per_s"]), seconds


def bytecode_ab() -> None:
    """The same benchmark in two child processes, one that finds no compiled bytecode (an empty
    PYTHONPYCACHEPREFIX: what an environment installed without `--compile-bytecode` gets under
    PYTHONDONTWRITEBYTECODE) and one that reads it; Ray's processes inherit each child's setting."""
    argv = [a for a in sys.argv[1:] if a != "--bytecode-ab"]
    rows = []
    for label in ("from source", "from bytecode"):
        with tempfile.TemporaryDirectory() as empty:
            env = dict(os.environ)
            if label == "from source":
                env |= {"PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"}
            subprocess.run([sys.executable, __file__, *argv], env=env, check=True)
        rows.append((label, json.loads(RESULTS.read_text().splitlines()[-1])))
    print("\n| imports | Ray start-up s | beyond epochs, 1 worker s | 2 workers s | in-process s |")
    print("|---|---:|---:|---:|---:|")
    for label, row in rows:
        print(
            f"| {label} | {row['ray_startup_s']:.1f} | {row['launch_overhead_1_s']:.1f} | "
            f"{row['launch_overhead_2_s']:.1f} | {row['in_process_overhead_s']:.1f} |"
        )
    source, compiled = rows[0][1], rows[1][1]
    print(
        f"beyond the epochs, 1 worker: {compiled['launch_overhead_1_s'] / source['launch_overhead_1_s']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--images", type=int, default=6400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--model", default="dcgan")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (CPUs per Ray worker)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--mlflow", action="store_true", help="track every run in MLflow (SQLite), as `ganops train` does"
    )
    parser.add_argument(
        "--bytecode-ab",
        action="store_true",
        help="run the benchmark twice, its imports compiled from source (no .pyc) and from bytecode",
    )
    args = parser.parse_args()
    if args.bytecode_ab:
        return bytecode_ab()
    import ray

    from pipelines.ray_train import ray_session

    with tempfile.TemporaryDirectory() as tmp:
        ds = dataset(Path(tmp) / "data", args.images)
        cfg = load_config(None, [
            f"model.name={args.model}", f"train.batch_size={args.batch}", f"train.epochs={args.epochs}",
            f"train.device={args.device}", "train.samples_every=1000", f"data.root={tmp}/data",
            "data.dataset=synthetic-svhn", f"train.output_dir={tmp}/runs", f"tracking.enabled={str(args.mlflow).lower()}",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"tracking.artifact_root={tmp}/mlruns",
            f"ray.cpus_per_worker={args.threads}", "ray.max_failures=0",
        ])  # fmt: skip
        local, local_s = in_process(cfg, ds, Path(tmp) / "in-process", args.threads)

        # Ray as `ganops train` starts it (a local instance of our own, its dashboard on), held for both.
        begin = time.perf_counter()
        gpus = torch.cuda.device_count() if args.device == "cuda" else 0
        with ray_session(cfg):
            ray.get(ray.remote(lambda: None).remote())
            startup_s = time.perf_counter() - begin
            one, one_s = under_ray(cfg, 1)
            two, two_s = (
                under_ray(cfg, 2) if args.device == "cpu" or gpus >= 2 else ([float("nan")], float("nan"))
            )

    def steady(per_epoch: list[float]) -> float:
        return statistics.median(per_epoch[1:] or per_epoch)

    def beyond_epochs(per_epoch: list[float], seconds: float, workers: int) -> float:
        """Launch seconds not spent in training steps (worker start, process group, data, checkpoints)."""
        n = (args.images // (args.batch * workers)) * args.batch * workers
        return seconds - sum(n / v for v in per_epoch)

    row = {
        "model": args.model, "batch": args.batch, "images": args.images, "epochs": args.epochs,
        "threads": args.threads, "device": args.device, "mlflow": args.mlflow, "cpu": cpu_model(),
        "in_process_img_s": steady(local), "ray_1_img_s": steady(one), "ray_2_img_s": steady(two),
        "ratio_1": steady(one) / steady(local), "ratio_2": steady(two) / steady(local),
        "ray_startup_s": startup_s, "launch_overhead_1_s": beyond_epochs(one, one_s, 1),
        "launch_overhead_2_s": beyond_epochs(two, two_s, 2), "in_process_overhead_s": beyond_epochs(local, local_s, 1),
    }  # fmt: skip
    print(f"in-process      {row['in_process_img_s']:8.1f} img/s")
    print(f"Ray, 1 worker   {row['ray_1_img_s']:8.1f} img/s   {row['ratio_1']:.2f}x   (target >= 0.90x)")
    print(f"Ray, 2 workers  {row['ray_2_img_s']:8.1f} img/s   {row['ratio_2']:.2f}x")
    print(f"Ray start-up {startup_s:.1f} s; seconds beyond the epochs: in-process {row['in_process_overhead_s']:.1f}, "
          f"1 worker {row['launch_overhead_1_s']:.1f}, 2 workers {row['launch_overhead_2_s']:.1f}")  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
