"""Batches from a prepared dataset held as one uint8 tensor on the training device.

Holding the data on the device and indexing it there means data loading never bounds a GPU. The order
of an epoch is a pure function of (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one, and every rank derives the same permutation and takes its own disjoint block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gan_models.data.prepared import PreparedDataset


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range of the generators' tanh."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded: the inverse of `to_float` (values outside are clipped)."""
    return images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def epoch_permutation(n: int, seed: int, epoch: int, stream: int = 0) -> Tensor:
    """The order of the `n` training examples in `epoch`; identical on every rank.

    `stream` 1 is a second, independent order of the same examples (the generator's batches).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + stream * 0x9E3779B1)  # CPU seeds: 32 bits
    return torch.randperm(n, generator=g)


@dataclass
class DeviceData:
    """The train split on `device`, with labels masked to the semi-supervised label budget."""

    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,), -1 where the label may not be used
    labeled: Tensor  # int64 indices of the usable labels (may be empty)

    @classmethod
    def load(cls, dataset: PreparedDataset, device: torch.device) -> DeviceData:
        images = torch.from_numpy(np.array(dataset.images("train"))).to(device)  # copy out of the mmap
        all_labels = torch.from_numpy(np.array(dataset.labels("train")))
        if dataset.manifest.get("label_split"):
            # Only the labelled split may be seen by the model; every other label is hidden.
            labeled = torch.from_numpy(np.array(dataset.labeled_indices()))
            labels = torch.full_like(all_labels, -1)
            labels[labeled] = all_labels[labeled]
        else:
            labels = all_labels
            labeled = torch.nonzero(all_labels >= 0).squeeze(1)
        return cls(images, labels.to(device), labeled.to(device))

    def __len__(self) -> int:
        return self.images.shape[0]

    def real(self, indices: Tensor) -> Tensor:
        """Images `indices` as floats in [-1, 1] on the data's device."""
        return to_float(self.images[indices.to(self.images.device)])


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    """Full batches each rank runs per epoch (the same on every rank; the remainder is dropped)."""
    steps = n // (batch_size * world_size)
    if steps == 0:
        raise ValueError(
            f"{n} training examples are fewer than one batch of {batch_size} on each of {world_size} ranks"
        )
    return steps


def shard_indices(
    n: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int, stream: int = 0
) -> Tensor:
    """This rank's indices for `epoch`: a contiguous block of the shared permutation (disjoint blocks)."""
    per_rank = steps_per_epoch(n, batch_size, world_size) * batch_size
    return epoch_permutation(n, seed, epoch, stream)[rank * per_rank : (rank + 1) * per_rank]


def labeled_stream(labeled: Tensor, count: int, seed: int, epoch: int, rank: int) -> Tensor:
    """`count` indices drawn from the labelled pool by concatenated permutations (improved-gan's tiling)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 4099 + rank + 1)
    reps = -(-count // len(labeled))
    return torch.cat([labeled.cpu()[torch.randperm(len(labeled), generator=g)] for _ in range(reps)])[:count]


@dataclass(frozen=True)
class Batch:
    """One step's data: real images in [-1, 1] with labels (-1: hidden) for the discriminator step, and
    the generator step's own unlabelled images where the family asks for an independent batch."""

    real: Tensor
    labels: Tensor
    generator_real: Tensor | None = None

    def for_generator(self) -> tuple[Tensor, Tensor]:
        """(images, labels) the generator step sees: its own batch (all unlabelled), else the D batch."""
        if self.generator_real is None:
            return self.real, self.labels
        hidden = torch.full((len(self.generator_real),), -1, dtype=torch.int64, device=self.real.device)
        return self.generator_real, hidden


def iterate_batches(
    data: DeviceData,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    labeled_batch: bool,
    generator_batch: bool = False,
) -> Iterator[Batch]:
    """Yield one epoch of this rank's shard as `Batch`es.

    With `labeled_batch` (the semi-supervised GAN), each batch is a labelled batch from the small pool
    followed by an unlabelled batch from the shard whose labels are hidden (-1), as in improved-gan.
    With `generator_batch`, each also carries an unlabelled batch from a second, independent order of
    the shard's examples (improved-gan's `trainx_unl2`).
    """
    device = data.images.device
    indices = shard_indices(len(data), batch_size, seed, epoch, rank, world_size).to(device)
    second = None
    if generator_batch:
        second = shard_indices(len(data), batch_size, seed, epoch, rank, world_size, stream=1).to(device)
    lab = None
    if labeled_batch and len(data.labeled):
        lab = labeled_stream(data.labeled, len(indices), seed, epoch, rank).to(device)
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        g_real = None if second is None else data.real(second[start : start + batch_size])
        if lab is None:
            yield Batch(data.real(idx), data.labels[idx], g_real)
        else:
            lab_idx = lab[start : start + batch_size]
            labels = torch.cat([data.labels[lab_idx], torch.full_like(idx, -1)])
            yield Batch(data.real(torch.cat([lab_idx, idx])), labels, g_real)
