"""Benchmark: DCGAN on real MNIST; writes the final sample grid and the loss curves to benchmarks/results/.

GANOPS_SOURCE_ROOT=../shared/datasets uv run python benchmarks/dcgan_mnist.py --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SHARED = Path(
    os.environ.get("GANOPS_SOURCE_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["d_loss"] for h in history], marker="o", label="D loss")
    ax.plot(epochs, [h["g_loss"] for h in history], marker="o", label="G loss (non-saturating)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean loss")
    ax.set_title("DCGAN on MNIST")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    from gan_models.config import load_config
    from gan_models.data.prepare import prepare_dataset, prepared_path
    from gan_models.data.prepared import PreparedDataset
    from gan_models.training.loop import train

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
    out = Path("/tmp/ganops-bench/dcgan-mnist")
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = train(cfg, ds, out_dir=out)
    wall = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    shutil.copy(out / "samples" / f"epoch_{args.epochs:04d}.png", RESULTS / "dcgan_mnist_samples.png")
    plot_curves(result.history, RESULTS / "dcgan_mnist_curves.png")
    summary = {"epochs": args.epochs, "wall_s": round(wall, 1), "history": result.history}
    (RESULTS / "dcgan_mnist.json").write_text(json.dumps(summary, indent=1))
    for h in result.history:
        print(
            f"epoch {h['epoch']}: d_loss {h['d_loss']:.3f} g_loss {h['g_loss']:.3f} "
            f"{h['images_per_s']:.0f} img/s {h['epoch_time_s']:.0f} s"
        )
    print(f"total {wall / 60:.1f} min; grid and curves in {RESULTS}")


if __name__ == "__main__":
    main()
