"""SNGAN, the family added in one file: its networks, spectral normalisation, hinge loss, and training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gan_models.config import load_config
from gan_models.errors import ConfigError
from gan_models.losses import hinge_discriminator_loss, hinge_generator_loss
from gan_models.nets import build_models, family, sample_latent
from gan_models.training.loop import train
from tests.training.conftest import tiny_config, tiny_dataset


@pytest.mark.parametrize("side", [32, 64])
def test_sngan_shapes_ranges_and_hinge_objectives(side: int) -> None:
    torch.manual_seed(0)
    cfg = load_config(None, ["model.name=sngan", "model.g_features=4", "model.d_features=4"])
    models = build_models(cfg.model, (3, side, side), 0)  # unconditional: no classes needed
    latent = sample_latent(cfg.model, 5, 0, generator=torch.Generator().manual_seed(1))
    assert latent.z.shape == (5, 128)  # the paper's z dimension is the family's default
    images = models["generator"](latent.z)
    assert images.shape == (5, 3, side, side) and images.abs().max() <= 1
    logits, features = models["discriminator"](images)
    assert logits.shape == (5,) and features.shape[0] == 5
    real = torch.rand(5, 3, side, side) * 2 - 1
    d_terms = family(cfg.model).discriminator_objective(
        models, real, torch.full((5,), -1), latent, cfg.model, cfg.train
    )
    assert set(d_terms) == {"loss", "adversarial"} and torch.isfinite(d_terms["loss"])


def test_discriminator_layers_are_spectrally_normalised() -> None:
    torch.manual_seed(0)
    cfg = load_config(None, ["model.name=sngan", "model.g_features=4", "model.d_features=8"])
    d = build_models(cfg.model, (3, 32, 32), 0)["discriminator"].train()
    x = torch.randn(4, 3, 32, 32)
    for _ in range(30):  # each training-mode forward runs one power iteration per layer
        d(x)
    layers = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert len(layers) == 8  # 7 convs and the linear logit
    for layer in layers:
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.02)


def test_hinge_losses_by_hand() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> 2.5 / 3; relu(1 + fake) = [0, 1, 2] -> 1
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(2.5 / 3 + 1.0)
    assert hinge_generator_loss(fake).item() == pytest.approx(2.0 / 3)


def test_sngan_options_are_checked_before_work() -> None:
    with pytest.raises(
        ConfigError, match=r"model.minibatch_discrimination: .*not supported by model.name='sngan'"
    ):
        load_config(None, ["model.name=sngan", "model.minibatch_discrimination=true"])
    with pytest.raises(ConfigError, match=r"model.d_dropout: not an option of model.name='sngan'"):
        load_config(None, ["model.name=sngan", "model.d_dropout=0.1"])


def test_sngan_trains_in_the_one_loop_and_resumes_exactly(tmp_path: Path) -> None:
    ds = tiny_dataset(tmp_path / "data")  # 28x28x1: the cheapest shape the family takes
    cfg = tiny_config("model.name=sngan", "train.epochs=2")
    straight = train(cfg, ds, out_dir=tmp_path / "straight")
    assert all(torch.isfinite(torch.tensor(v)) for v in straight.history[-1].values())
    assert {"d_adversarial", "g_adversarial"} <= set(straight.history[-1])
    train(tiny_config("model.name=sngan", "train.epochs=1"), ds, out_dir=tmp_path / "split")
    resumed = train(cfg, ds, out_dir=tmp_path / "split", resume=tmp_path / "split" / "checkpoint.pt")
    for name, module in straight.models.items():
        for (key, a), b in zip(
            module.state_dict().items(), resumed.models[name].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), f"{name}.{key} differs after a resume"
