"""Benchmark: DCGAN on real MNIST; sample grid, loss curves and a per-epoch domain FD in benchmarks/results/.

    GANOPS_SOURCE_ROOT=../shared/datasets uv run python benchmarks/dcgan_mnist.py --epochs 5

After every epoch, 2,000 images from the EMA generator are scored against 2,000 MNIST test images with
the project's domain metric (Fréchet distance in the evaluation classifier's 128-d feature space). Two
references from the same run put that number on a scale: 2,000 real *training* images against the
same test images (what a perfect generator would get) and the untrained generator.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
SHARED = Path(
    os.environ.get("GANOPS_SOURCE_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)
EVAL_IMAGES = 2000
SMOOTH_STEPS = 50  # moving-average window of the per-step loss curves


def plot(steps: list[dict], epochs: list[dict], floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_fd) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in (("d_loss", "D loss"), ("g_loss", "G loss (non-saturating)")):
        values = np.array([s[key] for s in steps])
        kernel = np.ones(SMOOTH_STEPS) / SMOOTH_STEPS
        ax_loss.plot(np.convolve(values, kernel, mode="valid"), label=label)
    ax_loss.set_xlabel(f"step (moving average of {SMOOTH_STEPS})")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_fd.plot([e["epoch"] for e in epochs], [e["domain_fd"] for e in epochs], marker="o", label="generator")
    ax_fd.axhline(floor, color="grey", linestyle="--", label="real train images")
    ax_fd.set_yscale("log")
    ax_fd.set_xlabel("epoch")
    ax_fd.set_ylabel(f"domain FD vs {EVAL_IMAGES} test images")
    ax_fd.legend()
    fig.suptitle("DCGAN on MNIST")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    from gan_models.config import load_config
    from gan_models.data.prepare import prepare_dataset, prepared_path
    from gan_models.data.prepared import PreparedDataset
    from gan_models.io import write_text
    from gan_models.metrics.domain import load_or_train
    from gan_models.metrics.feature_cache import real_features, subset_indices
    from gan_models.metrics.frechet import FeatureStats, stats_distance
    from gan_models.nets import build_models, sample_latent
    from gan_models.training.batches import to_uint8
    from gan_models.training.loop import TrainHooks, train
    from gan_models.training.samples import generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=Path("/tmp/ganops-bench/data"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(
        None,
        [
            "data.dataset=mnist",
            f"data.source={SHARED}",
            f"data.root={args.data_root}",
            "model.name=dcgan",
            "model.g_features=32",
            "model.d_features=32",
            "train.batch_size=128",
            "train.lr_d=0.0002",
            "train.lr_g=0.0002",
            f"train.epochs={args.epochs}",
            "train.device=cpu",
        ],
    )
    path = prepared_path(cfg.data)
    ds = PreparedDataset.open(path) if (path / "manifest.json").exists() else prepare_dataset(cfg.data)

    # The measuring instrument and its references, before training starts.
    extractor = load_or_train(ds)
    real_test = FeatureStats.from_features(real_features(ds, "test", extractor, EVAL_IMAGES))
    train_images = ds.images("train")
    real_train = extractor.features(train_images[subset_indices(len(train_images), EVAL_IMAGES, 1)])
    latent = sample_latent(cfg.model, EVAL_IMAGES, ds.num_classes, generator=torch.Generator().manual_seed(7))

    def domain_fd(generator: torch.nn.Module) -> float:
        fake = extractor.features(to_uint8(generate(generator, latent)).numpy())
        return stats_distance(real_test, FeatureStats.from_features(fake))

    floor = stats_distance(real_test, FeatureStats.from_features(real_train))
    torch.manual_seed(cfg.seed)  # the loop builds its networks from this seed too
    untrained = domain_fd(build_models(cfg.model, ds.image_shape, ds.num_classes)["generator"])

    steps: list[dict] = []
    epochs: list[dict] = []

    def on_step(step: int, terms: dict[str, torch.Tensor]) -> None:
        steps.append({"step": step, "d_loss": terms["d_loss"].item(), "g_loss": terms["g_loss"].item()})

    def on_epoch(report) -> None:  # noqa: ANN001
        fd = domain_fd(report.averaged("generator"))
        epochs.append({"epoch": report.epoch, "domain_fd": fd, **report.metrics})
        m = report.metrics
        print(
            f"epoch {report.epoch}: d_loss {m['d_loss']:.3f} g_loss {m['g_loss']:.3f} domain FD {fd:.2f} "
            f"(real {floor:.2f}) {m['images_per_s']:.0f} img/s {m['epoch_time_s']:.0f} s",
            flush=True,
        )

    out = Path("/tmp/ganops-bench/dcgan-mnist")
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    train(cfg, ds, out_dir=out, hooks=TrainHooks(on_step=on_step, on_epoch=on_epoch))
    wall = time.perf_counter() - started

    RESULTS.mkdir(exist_ok=True)
    shutil.copy(out / "samples" / f"epoch_{args.epochs:04d}.png", RESULTS / "dcgan_mnist_samples.png")
    plot(steps, epochs, floor, RESULTS / "dcgan_mnist_curves.png")
    summary = {
        "epochs": args.epochs,
        "threads": torch.get_num_threads(),
        "wall_s": round(wall, 1),
        "eval_images": EVAL_IMAGES,
        "domain_fd_real_train": floor,
        "domain_fd_untrained": untrained,
        "extractor_id": extractor.extractor_id,
        "per_epoch": epochs,
    }
    write_text(RESULTS / "dcgan_mnist.json", json.dumps(summary, indent=1))
    print(f"untrained generator domain FD {untrained:.2f}; real train images {floor:.2f}")
    print(f"total {wall / 60:.1f} min; grid and curves in {RESULTS}")


if __name__ == "__main__":
    main()
