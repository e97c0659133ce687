"""The training core: real (tiny) training runs, exact resume, divergence guard, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gan_models.config import load_config
from gan_models.data.prepared import PreparedDataset
from gan_models.training.batches import shard_indices
from gan_models.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gan_models.training.loop import CHECKPOINT_NAME, DivergenceError, TrainHooks, train
from tests.training.conftest import tiny_config, tiny_dataset

SHAPES = {
    "ssgan": [(28, 28, 1), (32, 32, 3)],
    "dcgan": [(28, 28, 1), (32, 32, 3), (64, 64, 3)],
    "mlp-gan": [(28, 28, 1)],
    "infogan": [(28, 28, 1)],
    "stackedgan": [(28, 28, 1)],
}


@pytest.mark.parametrize(("model", "shape"), [(m, s) for m, shapes in SHAPES.items() for s in shapes])
def test_short_real_training_run(model: str, shape: tuple[int, int, int], tmp_path: Path) -> None:
    ds = tiny_dataset(tmp_path / "data", shape, n=60 if shape[0] == 64 else 120)
    cfg = tiny_config(f"model.name={model}", "train.epochs=2")
    before = {k: v.clone() for k, v in _build_weights(cfg, ds).items()}
    result = train(cfg, ds, out_dir=tmp_path / "run")
    assert result.epoch == 2 and result.step == 2 * (len(ds.labels("train")) // 20)
    first, last = result.history
    assert first["d_loss"] != last["d_loss"] and first["g_loss"] != last["g_loss"]  # it learns, not idles
    after = result.models["generator"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        result.models["generator"].eval()
        images = result.averaged("generator")(torch.randn(4, result.models["generator"].input_dim))
    assert images.shape == (4, shape[2], shape[0], shape[1]) and torch.isfinite(images).all()
    assert (tmp_path / "run" / "samples" / "epoch_0002.png").stat().st_size > 0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == result.step


def _build_weights(cfg, ds: PreparedDataset) -> dict[str, torch.Tensor]:  # noqa: ANN001
    from gan_models.nets import build_models

    torch.manual_seed(cfg.seed)
    return build_models(cfg.model, ds.image_shape, ds.num_classes)["generator"].state_dict()


def _all_tensors(result) -> dict[str, torch.Tensor]:  # noqa: ANN001
    out = {f"{n}.{k}": v for n, m in result.models.items() for k, v in m.state_dict().items()}
    out |= {f"ema.{n}.{k}": v for n, e in result.ema.items() for k, v in e.shadow.items()}
    return out


@pytest.mark.parametrize("model", ["ssgan", "infogan"])
def test_resume_is_exact(model: str, mnist_like: PreparedDataset, tmp_path: Path) -> None:
    tricks = ["train.historical_averaging=0.01", "train.lr_decay_start=1", "train.grad_clip=5.0"]
    cfg = tiny_config(f"model.name={model}", "train.epochs=3", *tricks)
    straight = train(cfg, mnist_like, out_dir=tmp_path / "straight")

    part = train(
        tiny_config(f"model.name={model}", "train.epochs=1", *tricks), mnist_like, out_dir=tmp_path / "split"
    )
    assert part.epoch == 1
    resumed = train(cfg, mnist_like, out_dir=tmp_path / "split", resume=tmp_path / "split" / CHECKPOINT_NAME)
    assert resumed.step == straight.step and resumed.epoch == 3
    a, b = _all_tensors(straight), _all_tensors(resumed)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert [h["d_loss"] for h in straight.history] == [h["d_loss"] for h in resumed.history]


def test_same_seed_same_weights_other_seed_other_weights(mnist_like: PreparedDataset, tmp_path: Path) -> None:
    cfg = tiny_config("model.name=mlp-gan", "train.epochs=1")
    a = _all_tensors(train(cfg, mnist_like, out_dir=tmp_path / "a"))
    b = _all_tensors(train(cfg, mnist_like, out_dir=tmp_path / "b"))
    c = _all_tensors(
        train(
            tiny_config("model.name=mlp-gan", "train.epochs=1", "seed=1"), mnist_like, out_dir=tmp_path / "c"
        )
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_with_another_architecture_names_the_key(mnist_like: PreparedDataset, tmp_path: Path) -> None:
    train(tiny_config("model.name=dcgan", "train.epochs=1"), mnist_like, out_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"model.g_features: checkpoint 8, config 16"):
        train(
            tiny_config("model.name=dcgan", "model.g_features=16"),
            mnist_like,
            out_dir=tmp_path / "run",
            resume=tmp_path / "run" / CHECKPOINT_NAME,
        )


def test_resume_that_turns_a_trick_on_or_changes_the_classes_is_one_clear_error(
    mnist_like: PreparedDataset, tmp_path: Path
) -> None:
    train(
        tiny_config("model.name=dcgan", "train.epochs=1", "train.ema_decay=0"),
        mnist_like,
        out_dir=tmp_path / "run",
    )
    checkpoint = tmp_path / "run" / CHECKPOINT_NAME
    with pytest.raises(CheckpointError, match=r"train.ema_decay is on here but was off when it was written"):
        train(
            tiny_config("model.name=dcgan", "train.epochs=2"),
            mnist_like,
            out_dir=tmp_path / "run",
            resume=checkpoint,
        )
    with pytest.raises(CheckpointError, match=r"train.historical_averaging is on here but was off"):
        train(
            tiny_config(
                "model.name=dcgan", "train.epochs=2", "train.ema_decay=0", "train.historical_averaging=0.1"
            ),
            mnist_like,
            out_dir=tmp_path / "run",
            resume=checkpoint,
        )
    state = load_checkpoint(checkpoint)  # as if written by a run on a 5-class dataset
    state["num_classes"] = 5
    save_checkpoint(checkpoint, {k: v for k, v in state.items() if k != "format_version"})
    with pytest.raises(CheckpointError, match=r"classes: checkpoint 5, dataset 10"):
        train(
            tiny_config("model.name=dcgan", "train.epochs=2", "train.ema_decay=0"),
            mnist_like,
            out_dir=tmp_path / "run",
            resume=checkpoint,
        )


def test_divergence_stops_with_step_and_loss_and_keeps_last_good_checkpoint(
    mnist_like: PreparedDataset, tmp_path: Path
) -> None:
    cfg = tiny_config("model.name=dcgan", "train.epochs=3")
    state: dict[str, object] = {}

    def poison(step: int, terms: dict[str, torch.Tensor]) -> None:
        if step == 8:  # epoch 2 (6 steps per epoch): the first epoch's checkpoint is already written
            generator = state["models"]["discriminator"]  # type: ignore[index]
            with torch.no_grad():
                next(generator.parameters()).fill_(float("nan"))

    def on_epoch(report) -> None:  # noqa: ANN001
        state["epochs"] = report.epoch

    import gan_models.training.loop as loop

    original = loop.build_models

    def capture(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        state["models"] = original(*args, **kwargs)
        return state["models"]

    loop.build_models = capture
    try:
        with pytest.raises(DivergenceError, match=r"diverged at step 9: d_loss = nan"):
            train(
                cfg, mnist_like, out_dir=tmp_path / "run", hooks=TrainHooks(on_step=poison, on_epoch=on_epoch)
            )
    finally:
        loop.build_models = original
    assert state["epochs"] == 1
    saved = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert saved["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for m in saved["models"].values() for v in m.values() if v.is_floating_point()
    )


def test_checkpoint_refuses_non_finite_values(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    with pytest.raises(CheckpointError, match=r"non-finite values in models.g.w"):
        save_checkpoint(path, {"models": {"g": {"w": torch.tensor([1.0, float("inf")])}}})
    assert not path.exists()


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def crash(obj, f, *a, **k) -> None:  # noqa: ANN001, ANN002, ANN003
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.prev.pt", "ck.pt"]  # no temporary left


def test_rank_shards_are_disjoint_and_cover_the_epoch() -> None:
    shards = [shard_indices(1000, 10, seed=3, epoch=5, rank=r, world_size=4) for r in range(4)]
    flat = torch.cat(shards)
    assert len(flat) == 1000 and len(set(flat.tolist())) == 1000
    assert not torch.equal(shard_indices(1000, 10, 3, 6, 0, 4), shards[0])  # a new order each epoch


def test_semi_supervised_loop_only_sees_the_labelled_split(mnist_like: PreparedDataset) -> None:
    from gan_models.training.batches import DeviceData

    data = DeviceData.load(mnist_like, torch.device("cpu"))
    assert (data.labels >= 0).sum() == 20 and sorted(data.labeled.tolist()) == sorted(
        mnist_like.labeled_indices()
    )


def test_bf16_autocast_and_channels_last_train_and_stay_finite(tmp_path: Path) -> None:
    ds = tiny_dataset(tmp_path / "data", (32, 32, 3))
    cfg = tiny_config(
        "model.name=ssgan", "train.epochs=1", "train.precision=bf16", "train.channels_last=true"
    )
    result = train(cfg, ds, out_dir=tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(v)) for v in result.history[0].values())
    weights = result.models["discriminator"].state_dict().values()
    assert all(w.dtype == torch.float32 for w in weights if w.is_floating_point())  # master weights stay fp32


def test_channels_last_leaves_1x1_kernels_in_the_layout_of_their_gradients() -> None:
    """A 1x1 kernel's gradient comes back contiguous; a channels-last weight then makes DDP warn
    ("grad strides do not match bucket view strides") and copy every step."""
    from gan_models.nets import build_models, parse_options
    from gan_models.training.loop import to_layout

    options = parse_options({"name": "ssgan", "d_features": 16})
    net = to_layout(build_models(options, (3, 32, 32), 10)["discriminator"], torch.channels_last)
    kernels = [p for p in net.parameters() if p.dim() == 4]
    pointwise = [p for p in kernels if p.shape[2:] == (1, 1)]
    assert pointwise and all(p.stride() == torch.empty(p.shape).stride() for p in pointwise)
    spatial = [p for p in kernels if p.shape[2:] != (1, 1)]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in spatial)


def test_precision_auto_takes_bf16_only_on_cpus_with_bf16_units() -> None:
    from gan_models.training.loop import resolve_channels_last, resolve_precision

    cpu = torch.device("cpu")
    avx2 = frozenset({"sse4_2", "avx", "avx2", "fma", "avx512f"})  # AVX-512 without its BF16 extension
    assert resolve_precision("auto", cpu, avx2) == "fp32"
    assert resolve_precision("auto", cpu, avx2 | {"avx512_bf16"}) == "bf16"
    assert resolve_precision("auto", cpu, avx2 | {"amx_bf16"}) == "bf16"
    assert (
        resolve_precision("bf16", cpu, avx2) == "bf16"
        and resolve_precision("fp32", cpu, {"amx_bf16"}) == "fp32"
    )
    assert resolve_channels_last("auto", "bf16") and not resolve_channels_last("auto", "fp32")
    assert resolve_channels_last(True, "fp32")


@pytest.mark.parametrize(
    ("overrides", "shape", "convolves"),
    [
        (["model.name=ssgan"], (1, 28, 28), False),  # improved-gan's MNIST MLPs
        (["model.name=mlp-gan"], (1, 28, 28), False),
        (["model.name=ssgan"], (3, 32, 32), True),
        (["model.name=dcgan"], (1, 28, 28), True),
        (["model.name=sngan"], (3, 32, 32), True),
        (["model.name=stackedgan"], (1, 28, 28), True),
    ],
)
def test_precision_auto_keeps_mlp_nets_in_fp32(overrides: list[str], shape: tuple, convolves: bool) -> None:
    """bf16 buys the MLPs little on a CPU, and the MNIST semi-supervised GAN collapsed under it."""
    from gan_models.nets import convolutional
    from gan_models.training.loop import resolve_precision

    cfg = load_config(None, overrides)
    assert convolutional(cfg.model, shape, 10) == convolves
    bf16_cpu = frozenset({"avx2", "avx512_bf16"})
    chosen = resolve_precision("auto", torch.device("cpu"), bf16_cpu, convolutional=convolves)
    assert chosen == ("bf16" if convolves else "fp32")
    assert resolve_precision("bf16", torch.device("cpu"), bf16_cpu, convolutional=False) == "bf16"


def test_the_loop_clips_the_gradients_it_steps_with(mnist_like: PreparedDataset, tmp_path: Path) -> None:
    # Clipped to a norm of 1e-9, Adam (eps 1e-4) moves no weight by more than ~1e-8 per step; unclipped,
    # every step moves them by about the learning rate. So only a loop that clips leaves them in place.
    def moved(*overrides: str) -> float:
        cfg = tiny_config("model.name=dcgan", "train.epochs=1", "train.ema_decay=0", *overrides)
        before = _build_weights(cfg, mnist_like)
        generator = train(cfg, mnist_like, out_dir=tmp_path / str(len(overrides))).models["generator"]
        # Parameters only: batch-norm running statistics move without any gradient.
        return max((p.detach() - before[k]).abs().max().item() for k, p in generator.named_parameters())

    assert moved() > 1e-4
    assert moved("train.grad_clip=1e-9") < 1e-6
