"""In-training evaluation: a carved validation split, scores that leave training alone, the best epoch kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gan_models.data.prepare import carve_split
from gan_models.data.prepared import PreparedDataset, write_prepared
from gan_models.data.sources import RawDataset
from gan_models.errors import ConfigError
from gan_models.training.checkpoint import load_checkpoint, read_resume_info
from gan_models.training.loop import BEST_NAME, CHECKPOINT_NAME, train
from tests.training.conftest import tiny_config, tiny_dataset

EVAL = ("train.eval_every=1", "evaluate.domain_classifier_steps=30", "train.eval_images=150")


def with_validation(path: Path, n: int = 320) -> PreparedDataset:
    plain = tiny_dataset(path / "plain", n=n)
    raw = RawDataset(
        {
            s: (np.asarray(plain.images(s)).transpose(0, 2, 3, 1), np.asarray(plain.labels(s)))
            for s in plain.splits
        },
        plain.class_names,
    )
    return write_prepared(
        carve_split(raw, "val", 160, seed=0),
        path / "val",
        name="tiny",
        labels_per_class=2,
        label_seed=0,
        params={},
    )


def test_validation_is_carved_from_train_seeded_and_never_labelled(tmp_path: Path) -> None:
    ds = with_validation(tmp_path)
    assert ds.manifest["splits"]["val"]["count"] == 160 and ds.manifest["splits"]["train"]["count"] == 160
    train_images = {bytes(x) for x in np.asarray(ds.images("train"))}
    assert not any(bytes(x) in train_images for x in np.asarray(ds.images("val")))  # disjoint
    assert (np.asarray(ds.labeled_indices()) < 160).all()  # the labelled pool indexes train only
    again = with_validation(tmp_path / "again")
    assert np.array_equal(np.asarray(again.images("val")), np.asarray(ds.images("val")))


def test_scoring_during_training_does_not_change_the_weights(tmp_path: Path) -> None:
    ds = with_validation(tmp_path)
    plain = train(tiny_config("model.name=ssgan", "train.epochs=2"), ds, out_dir=tmp_path / "a")
    scored = train(tiny_config("model.name=ssgan", "train.epochs=2", *EVAL), ds, out_dir=tmp_path / "b")
    assert "val_accuracy" in scored.history[-1] and "val_domain_fd" in scored.history[-1]
    assert "val_accuracy" not in plain.history[-1]
    for name, module in plain.models.items():
        for a, b in zip(module.state_dict().values(), scored.models[name].state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_the_best_epoch_is_kept_published_and_survives_a_resume(tmp_path: Path) -> None:
    ds = with_validation(tmp_path)
    cfg = tiny_config("model.name=ssgan", "train.epochs=2", *EVAL)
    train(tiny_config("model.name=ssgan", "train.epochs=1", *EVAL), ds, out_dir=tmp_path / "run")
    result = train(cfg, ds, out_dir=tmp_path / "run", resume=tmp_path / "run" / CHECKPOINT_NAME)
    scores = [h["val_accuracy"] for h in result.history]
    best_epoch = 1 + int(np.argmax(scores))  # ties keep the earlier epoch
    assert result.best == {"epoch": best_epoch, "metric": "val_accuracy", "value": max(scores)}
    assert result.model_epoch == best_epoch
    best = load_checkpoint(tmp_path / "run" / BEST_NAME)
    assert (
        best["epoch"] == best_epoch
        and load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["best"] == result.best
    )
    # What gets published is the best epoch's EMA discriminator.
    published = result.averaged("discriminator").state_dict()
    for key, value in best["ema"]["discriminator"]["shadow"].items():
        assert torch.equal(published[key], value), key


def test_patience_stops_and_says_why_and_a_relaunch_does_not_continue(tmp_path: Path) -> None:
    ds = with_validation(tmp_path)
    # A learning rate of ~0 never improves after the first score: patience 1 stops at epoch 2.
    cfg = tiny_config(
        "model.name=ssgan",
        "train.epochs=6",
        "train.patience=1",
        "train.lr_d=1e-12",
        "train.lr_g=1e-12",
        *EVAL,
    )
    result = train(cfg, ds, out_dir=tmp_path / "run")
    assert (
        result.epoch < 6 and result.stop_reason and "did not improve for 1 evaluations" in result.stop_reason
    )
    info = read_resume_info(tmp_path / "run" / CHECKPOINT_NAME)
    assert info.finished(6) and info.stop_reason == result.stop_reason


def test_validation_needs_a_val_split_and_patience_needs_evaluation(tmp_path: Path) -> None:
    ds = tiny_dataset(tmp_path / "plain")
    with pytest.raises(ConfigError, match=r"needs a 'val' split.*data.val_size"):
        train(tiny_config("train.eval_every=1"), ds, out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"needs more than 128"):
        train(
            tiny_config("train.eval_every=1", "train.eval_images=100"),
            with_validation(tmp_path),
            out_dir=tmp_path / "c",
        )
    with pytest.raises(ConfigError, match=r"train.patience needs train.eval_every"):
        train(tiny_config("train.patience=2"), ds, out_dir=tmp_path / "b")
