"""Benchmark: DCGAN or SNGAN on the real CelebA faces at 64x64; Inception FID curve, sample grid, wall time.

    GANOPS_SOURCE_ROOT=../shared/datasets uv run python benchmarks/celeba_fid.py --model dcgan --epochs 30

The 12,000 faces in `../shared/datasets/celeba` are prepared at 64x64 (largest centre square, resized)
with 2,100 of them held back as the test split (`data.holdout_test_size`): the model never sees them.
Every `--fid-every` epochs the EMA generator's 2,100 images are scored against those held-out faces with
the project's Inception FID (pytorch-fid's network and weights; 2,100 images each, since a 2,048-d
covariance needs more than 2,048). A reference from the same run puts the number on a scale: 2,100 real
*training* faces against the same held-out faces (what a perfect generator would get at this sample
size). Rows go to benchmarks/results/celeba_fid.jsonl, the grid and the curve beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from ssl_quality import prepared

RESULTS = Path(__file__).parent / "results"
SHARED = Path(
    os.environ.get("GANOPS_SOURCE_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)
HELD_OUT = 2100  # faces never trained on; also the number of generated images per FID

# Each family's recipe: the papers' optimiser settings at 64x64, one D step per G step (a CPU budget).
RECIPES: dict[str, list[str]] = {
    # Radford et al. 2016: Adam 2e-4, beta1 0.5, batch 128, ngf = ndf = 64.
    "dcgan": ["model.name=dcgan", "train.lr_d=0.0002", "train.lr_g=0.0002", "train.beta1=0.5"],
    # Miyato et al. 2018's hinge loss and standard CNN; with one D step per G step the two-timescale
    # rates of Heusel et al. / SAGAN (D 4e-4, G 1e-4, betas 0 and 0.9) stand in for n_dis = 5.
    "sngan": [
        "model.name=sngan",
        "train.lr_d=0.0004",
        "train.lr_g=0.0001",
        "train.beta1=0.0",
        "train.beta2=0.9",
    ],
}


def plot(epochs: list[dict], floor: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([e["epoch"] for e in epochs], [e["fid"] for e in epochs], marker="o", label="EMA generator")
    ax.axhline(floor, color="grey", linestyle="--", label="real training faces")
    ax.axhline(40, color="red", linestyle=":", label="aim (40)")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"Inception FID vs {HELD_OUT} held-out faces")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    from gan_models.io import write_text
    from gan_models.metrics.feature_cache import real_features, subset_indices
    from gan_models.metrics.frechet import FeatureStats, stats_distance
    from gan_models.metrics.inception import InceptionFeatures
    from gan_models.nets import sample_latent
    from gan_models.training.batches import to_uint8
    from gan_models.training.checkpoint import read_resume_info
    from gan_models.training.loop import TrainHooks, cpu_model, train
    from gan_models.training.samples import generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(RECIPES), default="dcgan")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fid-every", type=int, default=5)
    parser.add_argument("--width", type=int, default=64, help="g_features = d_features")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path, default=Path("/tmp/ganops-bench/data"))
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    parser.add_argument(
        "--resume", action="store_true", help="continue this run's latest checkpoint and its curve so far"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # One prepared copy per content (size, hold-out...), as the other benchmarks: never a stale one.
    cfg, ds = prepared(
        [
            "data.dataset=celeba",
            f"data.source={SHARED}",
            "data.image_size=64",
            f"data.holdout_test_size={HELD_OUT}",
            *RECIPES[args.model],
            f"model.g_features={args.width}",
            f"model.d_features={args.width}",
            f"train.batch_size={args.batch_size}",
            "train.adam_eps=1e-8",  # torch's default: improved-gan's 1e-4 is the SSGAN's
            "train.ema_decay=0.999",
            f"train.epochs={args.epochs}",
            f"train.samples_every={args.fid_every}",
            f"train.checkpoint_every={args.fid_every}",
            "train.device=cpu",
            f"seed={args.seed}",
            *args.set,
        ],
        args.data_root,
    )

    # The instrument and its reference before training: held-out faces against training faces.
    extractor = InceptionFeatures(device="cpu")
    real_test = FeatureStats.from_features(real_features(ds, "test", extractor, HELD_OUT))
    train_images = ds.images("train")
    real_train = extractor.features(train_images[subset_indices(len(train_images), HELD_OUT, 1)])
    floor = stats_distance(real_test, FeatureStats.from_features(real_train))
    print(
        f"{len(train_images)} training faces; FID of {HELD_OUT} real training faces: {floor:.2f}", flush=True
    )
    latent = sample_latent(cfg.model, HELD_OUT, ds.num_classes, generator=torch.Generator().manual_seed(7))

    name = f"celeba64_{args.model}_w{args.width}_b{args.batch_size}_s{args.seed}"
    out = Path("/tmp/ganops-bench") / name
    checkpoint = out / "checkpoint.pt"
    epochs: list[dict] = []
    if args.resume and checkpoint.exists():
        # The curve up to the checkpoint: a run stopped while scoring has a checkpoint but not its point.
        done = read_resume_info(checkpoint).epoch
        curve = RESULTS / f"{name}.json"
        saved = json.loads(curve.read_text())["per_epoch"] if curve.exists() else []
        epochs = [e for e in saved if e["epoch"] <= done]
        print(f"resuming {checkpoint} after epoch {done}", flush=True)
    else:
        if args.resume:
            print(f"no checkpoint at {checkpoint}: starting afresh", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        checkpoint = None
    # Wall time since training began, cumulative over resumed parts (the reference before it left out).
    started = time.perf_counter() - (epochs[-1]["train_s"] if epochs else 0.0)

    def on_epoch(report) -> None:  # noqa: ANN001
        m = report.metrics
        line = f"epoch {report.epoch}: d_loss {m['d_loss']:.3f} g_loss {m['g_loss']:.3f} {m['images_per_s']:.0f} img/s"
        print(line, flush=True)  # before the FID: scoring 2,100 images takes minutes on a CPU
        if report.epoch % args.fid_every == 0 or report.epoch == args.epochs:
            t = time.perf_counter()
            fake = extractor.features(to_uint8(generate(report.averaged("generator"), latent)).numpy())
            fid = stats_distance(real_test, FeatureStats.from_features(fake))
            row = {"epoch": report.epoch, "step": report.step, "fid": fid, "train_s": round(t - started, 1)}
            epochs.append(row)
            print(
                f"  FID {fid:.2f} (real {floor:.2f}; scored in {time.perf_counter() - t:.0f} s)", flush=True
            )
            # Everything at every point, so a run stopped early (a session's end) still has its figures.
            write_text(RESULTS / f"{name}.json", json.dumps({"floor": floor, "per_epoch": epochs}, indent=1))
            if report.samples is not None:  # the loop's own EMA grid of this epoch (samples_every)
                shutil.copy(report.samples, RESULTS / f"{name}_samples.png")
            plot(epochs, floor, f"{args.model.upper()} on CelebA 64x64", RESULTS / f"{name}_fid.png")

    train(cfg, ds, out_dir=out, resume=checkpoint, hooks=TrainHooks(on_epoch=on_epoch))
    wall = time.perf_counter() - started

    best = min(epochs, key=lambda e: e["fid"])
    row = {
        "model": args.model,
        "width": args.width,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "epochs": args.epochs,
        "train_images": len(train_images),
        "held_out": HELD_OUT,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "wall_s": round(wall, 1),
        "fid_real_train": floor,
        "fid_last": epochs[-1]["fid"],
        "fid_best": best["fid"],
        "best_epoch": best["epoch"],
        "per_epoch": epochs,
        "overrides": args.set,
    }
    with (RESULTS / "celeba_fid.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        f"best FID {best['fid']:.2f} at epoch {best['epoch']}; last {epochs[-1]['fid']:.2f}; {wall / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
