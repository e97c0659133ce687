"""Benchmark: images/s of the semi-supervised GAN step (32x32x3, batch 128) against a straightforward port.

Both sides train the same networks (`gan_models.nets`: the SVHN architecture, or with `--shape 1x28x28`
the MNIST MLPs) with the same losses, in the same process, alternately, after a warm-up:
- `ganops loop`: `gan_models.training.loop.train` (data held as a uint8 tensor on the device, the side
  not being stepped frozen, EMA of G and D, divergence checks every 25 steps);
- reference: the loop as a direct port of improved-gan would be written in PyTorch: a `DataLoader` over
  a float tensor, three separate D passes, the G step back-propagating into D's weights too.
Images/s counts the unlabelled batch (128) per step, as improved-gan's epoch does. `--precision bf16`
and `--channels-last` apply to the project's loop only; the port stays in fp32, the reference.

    uv run python benchmarks/ssgan_throughput.py [--steps 30] [--device cpu|cuda] [--precision bf16]
        [--channels-last] [--shape 1x28x28]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from gan_models.config import Config, load_config
from gan_models.data.prepared import PreparedDataset, write_prepared
from gan_models.data.sources import RawDataset
from gan_models.nets import build_models
from gan_models.training.loop import TrainHooks, train

BATCH = 128


def dataset(root: Path, steps: int, shape: tuple[int, int, int]) -> PreparedDataset:
    rng = np.random.default_rng(0)
    n = BATCH * steps
    channels, height, width = shape
    images = rng.integers(0, 256, size=(n, height, width, channels), dtype=np.uint8)
    labels = np.arange(n) % 10
    raw = RawDataset({"train": (images, labels)}, [str(i) for i in range(10)])
    return write_prepared(
        raw,
        root / "bench",
        name="bench",
        labels_per_class=100 if n >= 1000 else n // 10,
        label_seed=0,
        params={},
    )


def ours(cfg: Config, ds: PreparedDataset, out: Path, warmup: int) -> float:
    """Images/s of the project's loop over the steps after `warmup`."""
    marks: dict[int, float] = {}
    result = train(
        cfg,
        ds,
        out_dir=out,
        hooks=TrainHooks(on_step=lambda step, _: marks.__setitem__(step, time.perf_counter())),
    )
    last = result.step
    return (last - warmup) * BATCH / (marks[last] - marks[warmup])


def reference(cfg: Config, ds: PreparedDataset, warmup: int, device: torch.device) -> float:
    """Images/s of a straightforward port of improved-gan's training step."""
    torch.manual_seed(0)
    nets = build_models(cfg.model, ds.image_shape, ds.num_classes)
    G, D = nets["generator"].to(device), nets["discriminator"].to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=3e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=3e-4, betas=(0.5, 0.999))
    x = torch.from_numpy(np.array(ds.images("train"))).float() / 127.5 - 1
    y = torch.from_numpy(np.array(ds.labels("train")))
    lab = torch.from_numpy(np.array(ds.labeled_indices()))
    unl_loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, drop_last=True)
    lab_x, lab_y = x[lab], y[lab]
    times = []
    for x_unl, _ in unl_loader:
        pick = torch.randint(0, len(lab), (BATCH,))
        x_lab, y_lab = lab_x[pick].to(device), lab_y[pick].to(device)
        x_unl = x_unl.to(device)
        fake = G(torch.randn(BATCH, cfg.model.latent_dim, device=device))
        l_lab, _ = D(x_lab)
        l_unl, _ = D(x_unl)
        l_fake, _ = D(fake.detach())
        z_unl, z_fake = torch.logsumexp(l_unl, 1), torch.logsumexp(l_fake, 1)
        loss_d = F.cross_entropy(l_lab, y_lab) + 0.5 * (
            -z_unl.mean() + F.softplus(z_unl).mean() + F.softplus(z_fake).mean()
        )
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        fake = G(torch.randn(BATCH, cfg.model.latent_dim, device=device))
        _, f_fake = D(fake)
        _, f_real = D(x_unl)
        loss_g = (f_real.detach().mean(0) - f_fake.mean(0)).square().mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        loss_g.item()  # the port logs the loss every step
        times.append(time.perf_counter())
    return (len(times) - warmup) * BATCH / (times[-1] - times[warmup - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurements of each side")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--shape", default="3x32x32", choices=["3x32x32", "1x28x28"], help="C x H x W")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    device = torch.device(args.device)
    cfg = load_config(
        None,
        [
            "model.name=ssgan",
            f"train.batch_size={BATCH}",
            "train.epochs=1",
            f"train.device={args.device}",
            f"train.precision={args.precision}",
            f"train.channels_last={str(args.channels_last).lower()}",
            "train.samples_every=1000",
            "train.checkpoint_every=1000",
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        ds = dataset(Path(tmp), args.steps, shape)  # type: ignore[arg-type]
        rows = []
        for r in range(args.rounds):
            a = ours(cfg, ds, Path(tmp) / f"run{r}", args.warmup)
            b = reference(cfg, ds, args.warmup, device)
            rows.append((a, b))
            print(
                f"round {r + 1}: ganops loop {a:7.1f} img/s   straightforward port {b:7.1f} img/s   ratio {a / b:.2f}x"
            )
    ours_best, ref_best = max(a for a, _ in rows), max(b for _, b in rows)
    print(
        f"best of {args.rounds}: ganops loop {ours_best:.1f} img/s, port {ref_best:.1f} img/s, "
        f"ratio {ours_best / ref_best:.2f}x on {device} ({torch.get_num_threads()} threads, {args.shape}, "
        f"loop in {args.precision}{', channels-last' if args.channels_last else ''}); "
        "improved-gan's TensorFlow code on a GPU: about 2,800 img/s"
    )


if __name__ == "__main__":
    main()
