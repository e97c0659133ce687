"""Benchmark: which semi-supervised GAN recipe learns in the demo's budget (about 1,000 CPU steps)?

`make demo` must promote a champion whose classifier reaches 80% test accuracy and whose generator's
domain FD is at most a quarter of an untrained generator's, in six minutes on a 2-core machine. This
runs the one training loop in this process on the demo's data (synthetic-svhn at difficulty 0.5,
21,000 renders less 1,000 for validation, 2,000 test, 1,000 labels) and the demo's nets and schedule,
one recipe (`RECIPES`) per invocation, and records per epoch the test error of the EMA classifier and
the domain FD of the EMA generator (the untrained generator's FD once, as the reference), plus a grid
of 64 fixed-seed samples (`results/demo_recipe_<recipe>.png`). Rows go to results/demo_recipe.jsonl.

    OMP_NUM_THREADS=1 uv run python benchmarks/demo_recipe.py --recipe demo
    OMP_NUM_THREADS=1 uv run python benchmarks/demo_recipe.py --recipe "supervised only"
    uv run python benchmarks/demo_recipe.py --summary
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from ssl_quality import _commit, append_row, prepared, read_rows

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "demo_recipe.jsonl"

# The demo's data, nets and schedule (the Makefile's DEMO_SET, less what only the pipeline reads).
DEMO_DATA = [
    "data.dataset=synthetic-svhn",
    "data.synthetic.train_size=21000",
    "data.synthetic.test_size=2000",
    "data.val_size=1000",
    "data.synthetic.difficulty=0.5",
    "data.synthetic.workers=1",
    "data.labels_per_class=100",
]
DEMO_NETS = [
    "model.name=ssgan",
    "model.g_features=16",
    "model.d_features=16",
    "model.d_input_dropout=0",
    "model.d_dropout=0",
    "train.batch_size=100",
    "train.lr_d=1e-3",
    "train.lr_g=1e-3",
    "train.device=cpu",
]
# What the demo takes, and each alternative it was chosen against (one change at a time where it can).
RECIPES: dict[str, list[str]] = {
    "demo": [
        "model.generator=dcgan",
        "model.latent=normal",
        "train.feature_matching=false",
        "train.unlabeled_rampup=400",
    ],
    "supervised only": ["model.generator=dcgan", "model.latent=normal", "train.unlabeled_weight=0"],
    "demo, unsupervised weight 0.3": [
        "model.generator=dcgan",
        "model.latent=normal",
        "train.feature_matching=false",
        "train.unlabeled_weight=0.3",
        "train.unlabeled_rampup=400",
    ],
    "demo, unsupervised weight 0.3, feature matching": [
        "model.generator=dcgan",
        "model.latent=normal",
        "train.unlabeled_weight=0.3",
        "train.unlabeled_rampup=400",
    ],
    "demo, no ramp-up": [
        "model.generator=dcgan",
        "model.latent=normal",
        "train.feature_matching=false",
    ],
    "demo, improved-gan G": ["train.feature_matching=false", "train.unlabeled_rampup=400"],
    "improved-gan recipe (feature matching, its G, no ramp-up)": [],
}
EVAL_IMAGES = 2000  # test images and generated images behind each FD
INSTRUMENT_STEPS = 500  # the demo's evaluate.domain_classifier_steps: FDs here are on the demo's scale


def run(recipe: str, seed: int, epochs: int, decay: int | None, data_root: Path) -> dict:
    from gan_models.metrics.accuracy import classifier_accuracy
    from gan_models.metrics.domain import ClassifierSpec, load_or_train
    from gan_models.metrics.feature_cache import real_features
    from gan_models.metrics.frechet import FeatureStats, stats_distance
    from gan_models.nets import build_models, sample_latent
    from gan_models.training.batches import to_uint8
    from gan_models.training.loop import TrainHooks, cpu_model, train
    from gan_models.training.samples import fixed_latent, generate, save_grid

    overrides = [*DEMO_DATA, *DEMO_NETS, *RECIPES[recipe], f"seed={seed}", f"train.epochs={epochs}"]
    overrides += [f"train.lr_decay_start={decay}"] if decay is not None else []
    cfg, ds = prepared(overrides, data_root)  # one copy of the demo's data, shared by every recipe

    # The measuring instrument and the references, before training.
    extractor = load_or_train(ds, spec=ClassifierSpec(steps=INSTRUMENT_STEPS))
    real = FeatureStats.from_features(real_features(ds, "test", extractor, EVAL_IMAGES))
    latent = sample_latent(cfg.model, EVAL_IMAGES, ds.num_classes, generator=torch.Generator().manual_seed(7))

    def domain_fd(generator: torch.nn.Module) -> float:
        fake = extractor.features(to_uint8(generate(generator, latent)).numpy())
        return stats_distance(real, FeatureStats.from_features(fake))

    torch.manual_seed(cfg.seed)  # the loop builds its networks from this seed too
    untrained = domain_fd(build_models(cfg.model, ds.image_shape, ds.num_classes)["generator"])
    test_images, test_labels = ds.images("test"), ds.labels("test")
    curve: list[dict] = []

    def on_epoch(report) -> None:  # noqa: ANN001
        m = report.metrics
        error = classifier_accuracy(
            report.averaged("discriminator"), test_images, test_labels, ds.class_names
        ).error
        fd = domain_fd(report.averaged("generator"))
        curve.append({"epoch": report.epoch, "test_error_ema": round(error, 5), "domain_fd": round(fd, 2)})
        print(
            f"{recipe}: epoch {report.epoch} test error {100 * error:.2f}% domain FD {fd:.1f} "
            f"(untrained {untrained:.1f}) {m['images_per_s']:.0f} img/s {m['epoch_time_s']:.0f} s",
            flush=True,
        )

    started = time.perf_counter()
    result = train(
        cfg,
        ds,
        out_dir=Path("/tmp/ganops-bench/demo_recipe") / Path(cfg.data.root).name,
        hooks=TrainHooks(on_epoch=on_epoch),
    )
    wall = time.perf_counter() - started
    generator = result.averaged("generator")
    grid = HERE / "results" / f"demo_recipe_{recipe.replace(' ', '_').replace(',', '')}.png"
    save_grid(generator, fixed_latent(cfg, ds.num_classes), grid)
    spread = generate(generator, fixed_latent(cfg, ds.num_classes)).std(0).mean().item()
    return {
        "recipe": recipe,
        "overrides": RECIPES[recipe],
        "seed": seed,
        "epochs": epochs,
        "lr_decay_start": decay,
        "test_error_ema": curve[-1]["test_error_ema"],
        "domain_fd": curve[-1]["domain_fd"],
        "domain_fd_untrained": round(untrained, 2),
        "sample_spread": round(spread, 4),  # per-pixel std over the 64 grid samples: ~0 is collapse
        "curve": curve,
        "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "commit": _commit(),
        "grid": grid.name,
    }


def summary() -> None:
    rows = read_rows(RESULTS)
    print(
        "| recipe | seed | epochs | test error % per epoch (EMA D) | domain FD per epoch | untrained FD | spread | s |"
    )
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for r in rows:
        errors = ", ".join(f"{100 * c['test_error_ema']:.1f}" for c in r["curve"])
        fds = ", ".join(f"{c['domain_fd']:.0f}" for c in r["curve"])
        print(
            f"| {r['recipe']} | {r['seed']} | {r['epochs']} | {errors} | {fds} | {r['domain_fd_untrained']:.0f} "
            f"| {r['sample_spread']:.3f} | {r['wall_s']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--decay", type=int, default=3, help="epoch where the linear lr decay starts")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", type=Path, default=Path("/tmp/ganops-bench/data"))
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    if args.summary:
        summary()
        return
    torch.set_num_threads(args.threads)
    append_row(RESULTS, run(args.recipe, args.seed, args.epochs, args.decay, args.data_root))


if __name__ == "__main__":
    main()
