"""The config tree: params.yaml is valid, and bad keys or types are rejected by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from gan_models.config import Config, load_config
from gan_models.errors import ConfigError

PROJECT = Path(__file__).resolve().parents[1]


def test_params_yaml_is_the_embedded_defaults() -> None:
    assert load_config(PROJECT / "params.yaml") == Config()


def test_overrides_are_typed() -> None:
    cfg = load_config(
        None, ["train.lr_g=2e-4", "data.labels_per_class=null", "model.minibatch_discrimination=true"]
    )
    assert cfg.train.lr_g == pytest.approx(2e-4) and isinstance(cfg.train.lr_g, float)
    assert cfg.data.labels_per_class is None and cfg.model.minibatch_discrimination is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", r"train.lrr: unknown key"),
        ("train.epochs=ten", r"train.epochs: .*valid integer.*'ten'"),
        ("train.epochs=1.5", r"train.epochs: .*integer"),
        ("model.name=biggan", r"model.name: Input should be 'ssgan'"),
        ("data.synthetic.train_size=0", r"data.synthetic.train_size: .*greater than 0"),
        ("train.epochs.x=1", r"train.epochs: Input should be a valid integer"),
        ("nokey", r"not of the form key.path=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  batch_size: -3\n  bogus: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "train.batch_size: Input should be greater than 0 (got -3)" in str(err.value)
    assert "train.bogus: unknown key" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_config_hash_is_stable_and_sensitive() -> None:
    assert Config().hash() == load_config(None, []).hash()
    assert Config().hash() != load_config(None, ["seed=1"]).hash()


def test_one_familys_option_on_another_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(PROJECT / "params.yaml", ["model.name=dcgan", "model.info_categories=5"])
    assert "model.info_categories: not an option of model.name='dcgan'" in str(err.value)


def test_switching_family_starts_from_its_defaults_keeping_shared_options(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("model:\n  name: ssgan\n  latent_dim: 32\n  d_dropout: 0.3\n")
    cfg = load_config(path, ["model.name=infogan"])
    assert cfg.model.name == "infogan" and cfg.model.latent_dim == 32 and cfg.model.info_categories == 10
    assert not hasattr(cfg.model, "d_dropout")
    assert load_config(path).model.d_dropout == 0.3  # the file's own family keeps its options
