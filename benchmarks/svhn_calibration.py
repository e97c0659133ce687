"""Benchmark: how hard is synthetic-svhn? The SSGAN discriminator trained as a plain supervised classifier.

`SSGANConvDiscriminator` at quarter width (d_features=16: 16/32 channels, dropout 0.2 on the input and
0.5 inside), cross-entropy on its logits, Adam (lr 3e-4 unless `--lr`) beta1 0.5, batch 100, fp32,
one thread, on 20,000 rendered training images (stream seed 0) and 5,000 test images (stream seed 1,
as `prepare` seeds them), in two modes:

* `--mode labels1000`: 100 labels per class, trained until the test error of the weight EMA stops
  falling (no improvement over `--patience` evaluations, one every `--eval-every` steps, and not
  before `--min-steps`: this net sits near chance for its first few hundred steps);
* `--mode all`: all 20,000 labels for `--epochs` epochs.

Targets (issue 13): 1,000 labels end at 15-30% test error (real SVHN's supervised-only range),
all labels under 5%. Prints the curve and appends a JSON row to benchmarks/results/svhn_calibration.jsonl.

    OMP_NUM_THREADS=1 uv run python benchmarks/svhn_calibration.py --mode labels1000
    OMP_NUM_THREADS=1 uv run python benchmarks/svhn_calibration.py --mode all --epochs 6
    OMP_NUM_THREADS=1 uv run python benchmarks/svhn_calibration.py --mode all --epochs 90 --lr 1e-3 --decay 45

`--lr` and `--decay` (the epoch where a linear decay to 0 at the last step starts, stepped every
step where the training loop steps per epoch) set the schedule; the default is a constant 3e-4.
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

RESULTS = Path(__file__).parent / "results" / "svhn_calibration.jsonl"
TRAIN_SIZE, TEST_SIZE = 20_000, 5_000
TRAIN_SEED, TEST_SEED = 0, 1  # prepare's streams for data.synthetic.seed=0: 2*seed, 2*seed + 1


def commit() -> str:
    """HEAD, marked dirty when the code (not results) differs from it."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "gan_models", "*.py")
    return head + ("-dirty" if dirty else "")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], as the training loop feeds the discriminator."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


@torch.no_grad()
def test_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    wrong = sum(
        int((model(x[i : i + 1000])[0].argmax(1) != y[i : i + 1000]).sum()) for i in range(0, len(x), 1000)
    )
    model.train()
    return wrong / len(x)


def labelled_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """The first `per_class` examples of each class in a fixed random order."""
    order = np.random.default_rng(seed).permutation(len(labels))
    picked = [order[labels[order] == c][:per_class] for c in range(10)]
    return np.sort(np.concatenate(picked))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["labels1000", "all"], required=True)
    parser.add_argument("--eval-every", type=int, default=None, help="steps (default 200; 1 epoch for all)")
    parser.add_argument("--patience", type=int, default=4, help="evaluations without improvement")
    parser.add_argument(
        "--min-steps", type=int, default=1500, help="no early stop before (the net sits near chance at first)"
    )
    parser.add_argument("--max-steps", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=6, help="mode all: epochs over the 20,000 labels")
    parser.add_argument("--ema", type=float, default=0.998, help="decay of the evaluated weight average")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam's learning rate")
    parser.add_argument(
        "--decay", type=float, default=None, help="epoch where a linear lr decay to 0 at the end starts"
    )
    parser.add_argument("--seed", type=int, default=0, help="init, label subset and batch order")
    parser.add_argument("--no-record", action="store_true", help="print only, append nothing")
    parser.add_argument(
        "--no-data-init",
        action="store_true",
        help="skip improved-gan's data-dependent init (the default recipe)",
    )
    args = parser.parse_args()

    from gan_models.data.synthetic_svhn import GENERATOR_VERSION, render_split
    from gan_models.nets.layers import data_dependent_init, trainable
    from gan_models.nets.ssgan import INIT_IMAGES, SSGANConvDiscriminator
    from gan_models.training.loop import cpu_model

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    train_images, train_labels = render_split(TRAIN_SIZE, TRAIN_SEED)
    test_images, test_labels = render_split(TEST_SIZE, TEST_SEED)
    render_s = time.perf_counter() - started
    index = (
        labelled_subset(train_labels, 100, args.seed) if args.mode == "labels1000" else np.arange(TRAIN_SIZE)
    )
    x, y = to_tensor(train_images[index]), torch.from_numpy(train_labels[index])
    xt, yt = to_tensor(test_images), torch.from_numpy(test_labels)
    del train_images, test_images

    # The semi-supervised GAN's discriminator as the training loop builds it: hidden weight-norm scales
    # fixed, improved-gan's data-dependent init on 500 training images (labelled or not: no labels
    # are used), Adam with its epsilon.
    model = SSGANConvDiscriminator((3, 32, 32), 10, d_features=16, input_dropout=0.2, dropout=0.5)
    if not args.no_data_init:
        init_images = to_tensor(render_split(INIT_IMAGES, TRAIN_SEED)[0])  # the first 500 of the train stream
        with model.whole_batches():
            data_dependent_init(model, init_images)
    ema = copy.deepcopy(model)
    for q in ema.parameters():
        q.requires_grad_(False)
    opt = torch.optim.Adam(trainable(model), lr=args.lr, betas=(0.5, 0.999), eps=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    batch = 100
    steps_per_epoch = len(x) // batch
    eval_every = args.eval_every or (200 if args.mode == "labels1000" else steps_per_epoch)
    max_steps = args.max_steps if args.mode == "labels1000" else args.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(args.seed)
    decay_step = None if args.decay is None else int(args.decay * steps_per_epoch)

    curve: list[dict] = []
    best, since_best, step = 1.0, 0, 0
    train_started = time.perf_counter()
    order = torch.randperm(len(x), generator=gen)
    # A `timeout` (SIGTERM) or Ctrl-C ends training early but still records the curve so far.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stopped = "max_steps"
    try:
        while step < max_steps:
            k = step % steps_per_epoch
            if k == 0 and step:
                order = torch.randperm(len(x), generator=gen)
            if decay_step is not None and step >= decay_step:
                # The comparison's schedule: constant, then linear to 0 at the last step.
                for group in opt.param_groups:
                    group["lr"] = args.lr * (max_steps - step) / (max_steps - decay_step)
            idx = order[k * batch : (k + 1) * batch]
            logits, _ = model(x[idx])
            loss = loss_fn(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            # EMA with the usual warm-up (decay min(ema, (1 + t) / (10 + t))) so early evaluations are fair.
            decay = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
                    e.mul_(decay).add_(p, alpha=1 - decay) if e.dtype.is_floating_point else e.copy_(p)
            if step % eval_every == 0:
                err_ema, err_raw = test_error(ema, xt, yt), test_error(model, xt, yt)
                curve.append(
                    {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 2),
                        "train_loss": round(loss.item(), 4),
                        "test_error_ema": round(err_ema, 5),
                        "test_error_raw": round(err_raw, 5),
                        "s": round(time.perf_counter() - train_started, 1),
                    }
                )
                print(
                    f"step {step:5d} epoch {step / steps_per_epoch:6.1f} loss {loss.item():.3f} "
                    f"test error ema {100 * err_ema:5.2f}% raw {100 * err_raw:5.2f}%  {curve[-1]['s']:.0f} s",
                    flush=True,
                )
                if err_ema < best - 1e-4:
                    best, since_best = err_ema, 0
                else:
                    since_best += 1
                if args.mode == "labels1000" and since_best >= args.patience and step >= args.min_steps:
                    stopped = "plateau"
                    break
    except KeyboardInterrupt:
        stopped = "interrupted"
    row = {
        "generator_version": GENERATOR_VERSION,
        "mode": args.mode,
        "labels": len(x),
        "seed": args.seed,
        "best_test_error_ema": round(best, 5),
        "final_test_error_ema": curve[-1]["test_error_ema"] if curve else None,
        "final_test_error_raw": curve[-1]["test_error_raw"] if curve else None,
        "steps": step,
        "stopped": stopped,
        "settings": {
            "d_features": 16,
            "input_dropout": 0.2,
            "dropout": 0.5,
            "lr": args.lr,
            "lr_decay_start_epoch": args.decay,
            "betas": [0.5, 0.999],
            "batch": batch,
            "ema": args.ema,
            "eval_every": eval_every,
            "patience": args.patience,
            "min_steps": args.min_steps,
            "train_size": TRAIN_SIZE,
            "test_size": TEST_SIZE,
            "seeds": [TRAIN_SEED, TEST_SEED],
            "threads": torch.get_num_threads(),
            "precision": "fp32",
            "data_init": not args.no_data_init,
            "adam_eps": 1e-4,
            "hidden_scales": "fixed",
        },
        "render_s": round(render_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "commit": commit(),
        "cpu": cpu_model(),
        "curve": curve,
    }
    print(
        f"{args.mode}: best test error (EMA) {100 * best:.2f}%, final EMA "
        f"{100 * (row['final_test_error_ema'] or 0):.2f}% raw {100 * (row['final_test_error_raw'] or 0):.2f}%, "
        f"{step} steps, wall {row['wall_s']:.0f} s (render {render_s:.0f} s)"
    )
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
