"""Benchmark: do StackedGAN's class-conditional samples show their class, with and without the encoder's
pre-training on the labelled pool?

    GANOPS_SOURCE_ROOT=../shared/datasets uv run python benchmarks/stackedgan_conditional.py --epochs 2

For each setting (`model.encoder_pretrain_steps` = the default and 0) it trains StackedGAN on MNIST with
100 labels per class (1,000 labels among 60,000 images), draws 100 samples per class from the EMA
generator, and reports the project's evaluation classifier's accuracy on them against the class asked
for (chance: 10%), how much the samples of one class differ from each other (per-pixel std, against
the same for 100 real test images per class: a class drawn in a single style follows its class and has
still collapsed), and the encoder's own test accuracy. Rows go to
benchmarks/results/stackedgan_conditional.jsonl and a per-class grid per setting (and seed) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
SHARED = Path(
    os.environ.get("GANOPS_SOURCE_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)
PER_CLASS = 100


def within_class_std(
    images: torch.Tensor, labels: torch.Tensor, k: int, per_class: int | None = None
) -> float:
    """Mean over classes of the per-pixel std across a class's images (the first `per_class` of each),
    on [-1, 1] pixels: how much the images of one class differ from each other."""
    stds = [images[labels == c][:per_class].float().std(0).mean() for c in range(k)]
    return float(torch.stack(stds).mean())


def run(pretrain_steps: int | None, epochs: int, seed: int, width: int, data_root: Path) -> dict:
    from gan_models.config import load_config
    from gan_models.data.prepare import prepare_dataset, prepared_path
    from gan_models.data.prepared import PreparedDataset
    from gan_models.metrics.domain import load_or_train
    from gan_models.nets import family, sample_latent
    from gan_models.training.batches import to_float
    from gan_models.training.loop import train
    from gan_models.training.samples import save_grid

    overrides = [
        "data.dataset=mnist",
        f"data.source={SHARED}",
        f"data.root={data_root}",
        "data.labels_per_class=100",
        "model.name=stackedgan",
        f"model.g_features={width}",
        f"model.d_features={width}",
        f"seed={seed}",
        f"train.epochs={epochs}",
        "train.device=cpu",
        "train.lr_d=2e-4",
        "train.lr_g=2e-4",
    ]
    if pretrain_steps is not None:
        overrides.append(f"model.encoder_pretrain_steps={pretrain_steps}")
    cfg = load_config(None, overrides)
    path = prepared_path(cfg.data)
    ds = PreparedDataset.open(path) if (path / "manifest.json").exists() else prepare_dataset(cfg.data)
    judge = load_or_train(ds)  # the fixed evaluation classifier (trained once per data version)

    started = time.perf_counter()
    result = train(cfg, ds, out_dir=Path("/tmp/ganops-bench") / f"stackedgan-{pretrain_steps}-{seed}")
    train_s = time.perf_counter() - started
    generator = result.averaged("generator")
    k = ds.num_classes
    asked = torch.arange(k).repeat_interleave(PER_CLASS)
    latent = sample_latent(cfg.model, len(asked), k, generator=torch.Generator().manual_seed(1), labels=asked)
    with torch.no_grad():
        samples = generator(latent.z)
        judged = torch.cat([judge.network(b)[0].argmax(1) for b in samples.clamp(-1, 1).split(500)])
    follows = (judged == asked).float().mean().item()
    spec = family(cfg.model)
    models = {n: result.averaged(n) for n in spec.classifier}
    test_images, test_labels = np.asarray(ds.images("test")), np.asarray(ds.labels("test"))
    with torch.no_grad():
        predicted = torch.cat(
            [
                spec.classify(models, to_float(torch.from_numpy(b))).argmax(1)
                for b in np.split(test_images, 10)
            ]
        ).numpy()
    encoder_acc = float((predicted == test_labels).mean())
    grid = RESULTS / (
        f"stackedgan_conditional_{'default' if pretrain_steps is None else pretrain_steps}"
        + (f"_s{seed}" if seed else "")
        + ".png"
    )
    grid_latent = sample_latent(
        cfg.model, k * 8, k, generator=torch.Generator().manual_seed(2), labels=torch.arange(k).repeat(8)
    )
    save_grid(generator, grid_latent, grid, nrow=k)
    return {
        "encoder_pretrain_steps": cfg.model.encoder_pretrain_steps,
        "epochs": epochs,
        "seed": seed,
        "width": width,
        "labels": len(ds.labeled_indices()),
        "samples_follow_class": round(follows, 4),
        # A class drawn in one style follows its class and still has collapsed: the variety within it.
        "within_class_std": round(within_class_std(samples, asked, k), 4),
        "real_within_class_std": round(
            within_class_std(
                to_float(torch.from_numpy(test_images)), torch.from_numpy(test_labels), k, PER_CLASS
            ),
            4,
        ),
        "encoder_test_accuracy": round(encoder_acc, 4),
        "judge_test_accuracy": round(judge.test_accuracy, 4),
        "train_s": round(train_s, 1),
        "threads": torch.get_num_threads(),
        "grid": grid.name,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=32, help="model.g_features and model.d_features")
    parser.add_argument("--data-root", type=Path, default=Path("/tmp/ganops-bench/data"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for steps in (None, 0):
        row = run(steps, args.epochs, args.seed, args.width, args.data_root)
        print(json.dumps(row), flush=True)
        with open(RESULTS / "stackedgan_conditional.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
