"""Benchmark: semi-supervised GAN test error against a supervised-only classifier on the same labels.

One run per invocation (a seed and a mode), appended as a JSON line to benchmarks/results/ssl.jsonl;
`--summary` prints mean +- std per (dataset, mode). Runs the one training loop in this process.

    uv run python benchmarks/ssl_quality.py --dataset mnist --mode ssgan --seed 0 --epochs 20
    uv run python benchmarks/ssl_quality.py --dataset mnist --mode supervised --seed 0 --epochs 5
    uv run python benchmarks/ssl_quality.py --summary
    uv run python benchmarks/ssl_quality.py --dataset mnist --epochs 20 --plot benchmarks/results/curves.png
    uv run python benchmarks/ssl_quality.py --dataset mnist --ablation --seeds 0 1 --epochs 3
    uv run python benchmarks/ssl_quality.py --ablation-summary

`--plot PATH` draws the test-error curves of the recorded runs (both modes, every seed) whose dataset,
schedule and overrides are the command's, instead of running one.

`--ablation` runs improved-gan's recipe (the defaults) and, for each deviation the code can take
instead, the same budget with only that option changed (`ABLATIONS`); rows carry the variant's name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "ssl.jsonl"
ABLATION_RESULTS = Path(__file__).parent / "results" / "ssl_ablation.jsonl"
SHARED = Path(
    os.environ.get("GANOPS_SOURCE_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)

# improved-gan's settings: MNIST 100 labels (lr 3e-3), SVHN/synthetic-svhn 1,000 labels (lr 3e-4).
DATASETS = {
    "mnist": [
        "data.dataset=mnist",
        f"data.source={SHARED}",
        "data.labels_per_class=10",
        "train.lr_d=0.003",
        "train.lr_g=0.003",
    ],
    "synthetic-svhn": [
        "data.dataset=synthetic-svhn",
        "data.labels_per_class=100",
        "model.d_features=64",
        "train.lr_d=0.0003",
        "train.lr_g=0.0003",
    ],
}


# Each of improved-gan's choices against the alternative the code can take (the earlier defaults).
ABLATIONS: dict[str, list[str]] = {
    "improved-gan (defaults)": [],
    "no data-dependent init": ["model.data_init=false"],
    "hidden WN scales trained": ["model.train_hidden_scales=true"],
    "feature matching, other distance": ["train.feature_matching_distance=OTHER"],
    "FM target: D's unlabelled batch": ["train.feature_matching_target=unlabeled"],
    "MNIST input noise 0.3 on [-1, 1]": ["model.input_noise=0.3"],
    "Adam eps 1e-8": ["train.adam_eps=1e-8"],
    "z ~ N(0, I)": ["model.latent=normal"],
    "G batch norm with scale": ["model.g_bn_scale=true"],
    "He init (PyTorch's elsewhere)": ["model.weight_init=he"],
    "DCGAN generator (32x32)": ["model.generator=dcgan"],
    "EMA 0.999": ["train.ema_decay=0.999"],
    "MNIST G output: tanh": ["model.g_output=tanh"],
    "all of the above (the old recipe)": [
        "model.data_init=false",
        "model.train_hidden_scales=true",
        "train.feature_matching_distance=l2",
        "train.feature_matching_target=unlabeled",
        "model.input_noise=0.3",
        "train.adam_eps=1e-8",
        "model.latent=normal",
        "model.g_bn_scale=true",
        "model.weight_init=he",
        "model.g_output=tanh",
        "train.ema_decay=0.999",
        "model.generator=dcgan",
    ],
}
# improved-gan's feature-matching distance per dataset's nets; the ablation takes the other one.
_OTHER_DISTANCE = {"mnist": "l1", "synthetic-svhn": "l2"}
# Options that only one net changes: the MNIST MLPs' (28x28) or the conv nets' (32x32).
_MNIST_ONLY = ("model.input_noise", "model.g_output")
_CONV_ONLY = ("model.generator",)


def ablation_overrides(dataset: str, variant: str) -> list[str]:
    """The overrides of `variant` on `dataset`, without the options its nets do not have."""
    out = []
    for o in ABLATIONS[variant]:
        if o.startswith(_CONV_ONLY if dataset == "mnist" else _MNIST_ONLY):
            continue
        out.append(o.replace("OTHER", _OTHER_DISTANCE[dataset]))
    return out


def prepared(overrides: list[str], data_root: Path) -> tuple:
    """(config, dataset) for `overrides`, the data prepared once per content (sizes, difficulty,
    labels...) under `data_root`, so runs with other data never share a copy."""
    from gan_models.config import load_config
    from gan_models.data.prepare import content_params, prepare_dataset, prepared_path
    from gan_models.data.prepared import PreparedDataset

    content = content_params(load_config(None, overrides).data)
    digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]
    cfg = load_config(None, [*overrides, f"data.root={data_root / digest}"])
    path = prepared_path(cfg.data)
    ds = PreparedDataset.open(path) if (path / "manifest.json").exists() else prepare_dataset(cfg.data)
    return cfg, ds


def read_rows(path: Path) -> list[dict]:
    """The JSON rows of the JSON-lines file `path`."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    """Print `row` and append it to the JSON-lines file `path`."""
    print(json.dumps(row), flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def run(
    dataset: str, mode: str, seed: int, epochs: int, decay: int | None, data_root: Path, extra: list[str]
) -> dict:
    from gan_models.metrics.accuracy import classifier_accuracy
    from gan_models.nets import convolutional
    from gan_models.training.loop import TrainHooks, resolve_precision, train

    overrides = DATASETS[dataset] + [
        f"seed={seed}",
        f"data.root={data_root}",
        "model.name=ssgan",
        f"train.epochs={epochs}",
        "train.batch_size=100",
        "train.device=cpu",
    ]
    overrides += [f"train.lr_decay_start={decay}"] if decay is not None else []
    overrides += ["train.unlabeled_weight=0"] if mode == "supervised" else []
    cfg, ds = prepared(overrides + extra, data_root)

    test_images, test_labels = ds.images("test"), ds.labels("test")
    curve: list[dict] = []
    trained_s = [0.0]

    def on_epoch(report) -> None:  # noqa: ANN001
        # Test error of the EMA classifier after every epoch, against training time alone.
        m = report.metrics
        trained_s[0] += m["epoch_time_s"]
        error = classifier_accuracy(
            report.averaged("discriminator"), test_images, test_labels, ds.class_names
        ).error
        curve.append(
            {"epoch": report.epoch, "train_s": round(trained_s[0], 1), "test_error_ema": round(error, 5)}
        )
        print(
            f"epoch {report.epoch}: loss_d {m['d_loss']:.3f} train_acc {m.get('train_accuracy', 0):.3f} "
            f"test_err {100 * error:.2f}% {m['images_per_s']:.0f} img/s {m['epoch_time_s']:.0f} s",
            flush=True,
        )

    # One directory per run: the loop resumes from a checkpoint it finds there.
    runs = hashlib.sha1(json.dumps([epochs, decay, extra]).encode()).hexdigest()[:8]
    out = Path("/tmp/ganops-bench") / f"{dataset}-{mode}-{seed}-{runs}"
    commit = _commit()  # at the start: the code this run imported
    started = time.perf_counter()
    result = train(cfg, ds, out_dir=out, hooks=TrainHooks(on_epoch=on_epoch))
    wall = time.perf_counter() - started
    raw = classifier_accuracy(result.models["discriminator"], test_images, test_labels, ds.class_names)
    ema = classifier_accuracy(result.averaged("discriminator"), test_images, test_labels, ds.class_names)
    return {
        "dataset": dataset,
        "mode": mode,
        "seed": seed,
        "epochs": epochs,
        "lr_decay_start": decay,
        "labels": len(ds.labeled_indices()),
        "train_s": round(trained_s[0], 1),
        "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "precision": resolve_precision(
            cfg.train.precision,
            torch.device("cpu"),
            convolutional=convolutional(cfg.model, ds.image_shape, ds.num_classes),
        ),
        "test_error": round(raw.error, 5),
        "test_error_ema": round(ema.error, 5),
        "overrides": extra,
        "commit": commit,
        "curve": curve,
    }


def _commit() -> str:
    """The code a row was measured with: HEAD, marked dirty when the code differs from it."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode:
        return "unknown"
    # Results files (this one's rows, RESULTS.md) and tests change while runs go on; only the code a
    # run imports counts.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "gan_models", "benchmarks/*.py")
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _mean_std(rows: list[dict], key: str) -> str:
    values = [100 * r[key] for r in rows]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {sd:.2f}"


def summary() -> None:
    rows = read_rows(RESULTS)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        # Rows are comparable when the schedule, the precision (recorded since 2026-12-04) and every
        # override match; seeds are what varies.
        key = (
            r["dataset"],
            r["mode"],
            r["labels"],
            r["epochs"],
            r["lr_decay_start"] or 0,
            r.get("precision", "-"),
            " ".join(r["overrides"]),
        )
        groups.setdefault(key, []).append(r)
    print(
        f"{'dataset':15s} {'mode':10s} {'labels':>6s} {'epochs':>6s} {'decay':>5s} {'seeds':>5s} "
        f"{'error % (EMA D)':>18s} {'error % (raw D)':>18s} {'train min':>10s} {'prec':>4s}  overrides"
    )
    for (dataset, mode, labels, epochs, decay, precision, overrides), rs in sorted(groups.items()):
        minutes = statistics.mean(r.get("train_s", r.get("train_wall_s", 0)) for r in rs) / 60
        print(
            f"{dataset:15s} {mode:10s} {labels:6d} {epochs:6d} {decay:5d} {len(rs):5d} "
            f"{_mean_std(rs, 'test_error_ema'):>18s} {_mean_std(rs, 'test_error'):>18s} {minutes:10.1f} "
            f"{precision:>4s}  {overrides}"
        )


def plot(dataset: str, epochs: int, decay: int | None, extra: list[str], path: Path) -> None:
    """Per-epoch test error (EMA D) of every recorded run of this dataset, schedule and overrides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        r
        for r in read_rows(RESULTS)
        if (r["dataset"], r["epochs"], r["lr_decay_start"], r["overrides"]) == (dataset, epochs, decay, extra)
    ]
    if not rows:
        raise SystemExit(f"no run in {RESULTS} has this dataset, schedule and overrides")
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {"ssgan": "tab:blue", "supervised": "tab:orange"}
    for r in sorted(rows, key=lambda r: (r["mode"], r["seed"])):
        curve = r["curve"]
        label = f"{r['mode']}, seed {r['seed']}: {100 * r['test_error_ema']:.1f}%"
        ax.plot(
            [c["epoch"] for c in curve],
            [100 * c["test_error_ema"] for c in curve],
            color=colours.get(r["mode"]),
            alpha=0.4 + 0.2 * (r["seed"] % 4),
            marker=".",
            label=label,
        )
    ax.set_xlabel(f"epoch (lr decays linearly to 0 from epoch {decay})" if decay else "epoch")
    ax.set_ylabel("test error %, EMA classifier")
    ax.set_title(f"{dataset}, {rows[0]['labels']} labels", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"{len(rows)} runs -> {path}")


def dataset_skips(dataset: str, variant: str) -> bool:
    """A variant that changes nothing on `dataset` (an option its nets do not have)."""
    return bool(ABLATIONS[variant]) and not ablation_overrides(dataset, variant)


def ablation_summary() -> None:
    """Per dataset and budget: each variant's mean +- std error, and its difference to the defaults
    measured at the same commit (rows of other code are other lines, never averaged together)."""
    rows = read_rows(ABLATION_RESULTS)
    groups: dict[tuple, dict[tuple[str, str], list[dict]]] = {}
    for r in rows:
        budget = (r["dataset"], r["labels"], r["epochs"], r["lr_decay_start"] or 0)
        groups.setdefault(budget, {}).setdefault((r["variant"], r["commit"]), []).append(r)
    order = {v: i for i, v in enumerate(ABLATIONS)}
    for (dataset, labels, epochs, decay), variants in sorted(groups.items()):
        print(f"\n{dataset}, {labels} labels, {epochs} epochs (decay from {decay}):")
        print("| variant | commit | seeds | test error % (EMA D) | per seed | vs defaults | train s/run |")
        print("|---|---|---:|---:|---|---:|---:|")
        for variant, commit in sorted(variants, key=lambda vc: (order.get(vc[0], len(order)), vc[1])):
            rs = variants[variant, commit]
            reference = variants.get(("improved-gan (defaults)", commit))
            mean = statistics.mean(100 * r["test_error_ema"] for r in rs)
            ref_mean = statistics.mean(100 * r["test_error_ema"] for r in reference) if reference else None
            delta = f"{mean - ref_mean:+.2f}" if ref_mean is not None else "n/a"
            seeds = ", ".join(f"{100 * r['test_error_ema']:.2f}" for r in sorted(rs, key=lambda r: r["seed"]))
            train_s = statistics.mean(r["train_s"] for r in rs)
            print(
                f"| {variant} | {commit} | {len(rs)} | {_mean_std(rs, 'test_error_ema')} | {seeds} | {delta} "
                f"| {train_s:.0f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    parser.add_argument("--mode", choices=["ssgan", "supervised"], default="ssgan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--decay", type=int, default=None, help="epoch where the linear lr decay starts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=Path("/tmp/ganops-bench/data"))
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra config override")
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--ablation", action="store_true", help="run every variant of ABLATIONS")
    parser.add_argument("--variants", nargs="*", default=None, help="only these ABLATIONS entries")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--ablation-summary", action="store_true")
    parser.add_argument("--plot", type=Path, default=None, help="draw the matching runs' curves to PATH")
    args = parser.parse_args()
    if args.plot:
        plot(args.dataset, args.epochs, args.decay, args.extra, args.plot)
        return
    if args.summary:
        summary()
        return
    if args.ablation_summary:
        ablation_summary()
        return
    torch.set_num_threads(args.threads)
    if args.ablation:
        for variant in args.variants or ABLATIONS:
            if dataset_skips(args.dataset, variant):
                continue
            for seed in args.seeds:
                extra = ablation_overrides(args.dataset, variant) + args.extra
                row = run(args.dataset, args.mode, seed, args.epochs, args.decay, args.data_root, extra)
                row["variant"] = variant
                append_row(ABLATION_RESULTS, row)
        return
    append_row(
        RESULTS, run(args.dataset, args.mode, args.seed, args.epochs, args.decay, args.data_root, args.extra)
    )


if __name__ == "__main__":
    main()
