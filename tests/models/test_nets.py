"""The model zoo: shapes, ranges, the latent interface and the factory's errors, with tiny widths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gan_models.config import TrainConfig
from gan_models.errors import ConfigError
from gan_models.nets import (
    FAMILIES,
    GENERATOR_KEYS,
    ModelOptions,
    build_models,
    discriminator_objective,
    generator_input_dim,
    generator_objective,
    sample_latent,
    split_modules,
)
from gan_models.nets.layers import trainable
from gan_models.nets.ssgan import SSGANConvDiscriminator, SSGANMLPDiscriminator
from gan_models.tricks import MinibatchDiscrimination, set_requires_grad

NUM_CLASSES = 10
N = 3

SUPPORTED = [
    ("ssgan", (1, 28, 28)),
    ("ssgan", (3, 32, 32)),
    ("ssgan", (1, 32, 32)),
    ("ssgan", (3, 64, 64)),
    ("dcgan", (1, 28, 28)),
    ("dcgan", (3, 32, 32)),
    ("dcgan", (1, 32, 32)),
    ("dcgan", (3, 64, 64)),
    ("mlp-gan", (1, 28, 28)),
    ("mlp-gan", (3, 32, 32)),
    ("infogan", (1, 28, 28)),
    ("infogan", (3, 32, 32)),
    ("infogan", (3, 64, 64)),
    ("stackedgan", (1, 28, 28)),
    ("stackedgan", (3, 32, 32)),
]


def options(family: str, **fields: object) -> ModelOptions:
    """The options of `family` from `fields`, keeping the ones that family has."""
    known = FAMILIES[family].options.model_fields
    return FAMILIES[family].options(**{k: v for k, v in fields.items() if k in known and k != "name"})


def tiny(name: str, **overrides: object) -> ModelOptions:
    fields = dict(
        name=name,
        latent_dim=6,
        g_features=4,
        d_features=4,
        stacked_feature_dim=12,
        info_categories=3,
        info_continuous=2,
        mbd_kernels=3,
        mbd_kernel_dim=2,
    )
    return options(name, **{**fields, **overrides})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(("name", "shape"), SUPPORTED)
def test_generator_and_discriminator_shapes_and_ranges(name: str, shape: tuple[int, int, int]) -> None:
    cfg = tiny(name)
    models = build_models(cfg, shape, NUM_CLASSES)
    latent = sample_latent(cfg, N, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    assert latent.z.shape == (N, generator_input_dim(cfg, NUM_CLASSES))

    # Train mode (batch statistics) and eval mode (running statistics) both give images in [-1, 1].
    for train in (True, False):
        models["generator"].train(train)
        images = models["generator"](latent.z)
        assert images.shape == (N, *shape)
        assert images.dtype == torch.float32
        assert images.abs().max() <= 1.0
        assert images.std() > 0  # not a constant output

    logits, features = models["discriminator"](images)
    assert logits.shape == ((N, NUM_CLASSES) if name == "ssgan" else (N,))
    assert features.ndim == 2 and features.shape[0] == N
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_infogan_q_head_predicts_every_code(shape: tuple[int, int, int]) -> None:
    cfg = tiny("infogan")
    models = build_models(cfg, shape, NUM_CLASSES)
    _, features = models["discriminator"](torch.rand(N, *shape) * 2 - 1)
    q = models["q_head"](features)
    assert q.logits.shape == (N, 3)
    assert q.mean.shape == q.log_std.shape == (N, 2)
    q_fixed = build_models(tiny("infogan", info_learn_std=False), shape, NUM_CLASSES)["q_head"](features)
    assert q_fixed.log_std is None and q_fixed.mean.shape == (N, 2)


def test_stackedgan_stages_and_encoder() -> None:
    cfg = tiny("stackedgan")
    models = build_models(cfg, (1, 28, 28), NUM_CLASSES)
    assert set(models) == {
        "generator",
        "discriminator",
        "feature_discriminator",
        "q_head",
        "feature_q_head",
        "encoder",
        "classifier",
    }
    real = torch.rand(N, 1, 28, 28) * 2 - 1
    f1 = models["encoder"](real)
    assert f1.shape == (N, 12) and (f1 >= 0).all()
    assert models["classifier"](f1).shape == (N, NUM_CLASSES)
    latent = sample_latent(cfg, N, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    generator = models["generator"].eval()
    image, fake_f1 = generator(latent.z, return_features=True)
    assert fake_f1.shape == (N, 12) and torch.equal(image, generator(latent.z))
    # Conditioning G0 on other features changes the image, not G1's features.
    image2, fake_f1_again = generator(latent.z, features=f1, return_features=True)
    assert torch.equal(fake_f1, fake_f1_again) and not torch.allclose(image, image2)
    logit1, h1 = models["feature_discriminator"](fake_f1)
    assert logit1.shape == (N,) and models["feature_q_head"](h1).mean.shape == (N, 6)


def test_ssgan_discriminators_are_deterministic_in_eval_and_noisy_in_train() -> None:
    x = torch.rand(N, 1, 28, 28) * 2 - 1
    for d in (SSGANMLPDiscriminator((1, 28, 28), 10), SSGANConvDiscriminator((1, 28, 28), 10, 4, 0.2, 0.5)):
        d.eval()
        assert torch.equal(d(x)[0], d(x)[0])
        d.train()
        assert not torch.equal(d(x)[0], d(x)[0])  # dropout / Gaussian noise are on


def test_ssgan_conv_discriminator_in_cpu_chunks_equals_one_pass() -> None:
    # Above cpu_chunk images the trunk runs in chunks on a CPU; the outputs must not change.
    d = SSGANConvDiscriminator((3, 32, 32), 10, 4, 0.2, 0.5).eval()
    x = torch.rand(2 * d.cpu_chunk + 3, 3, 32, 32) * 2 - 1
    logits, features = d(x)
    assert logits.shape == (len(x), 10)
    d.cpu_chunk = len(x)  # one pass
    torch.testing.assert_close(d(x), (logits, features))


def test_ssgan_minibatch_discrimination_widens_the_head() -> None:
    plain = build_models(tiny("ssgan"), (3, 32, 32), NUM_CLASSES)["discriminator"]
    mbd = build_models(tiny("ssgan", minibatch_discrimination=True), (3, 32, 32), NUM_CLASSES)[
        "discriminator"
    ]
    assert plain.head.in_features == 8
    assert mbd.head.in_features == 8 + 3
    logits, features = mbd(torch.rand(N, 3, 32, 32))
    assert logits.shape == (N, NUM_CLASSES) and features.shape == (N, 8)  # features are before the MBD layer


def test_ssgan_widths_scale_with_d_features() -> None:
    d = build_models(tiny("ssgan", d_features=6), (3, 32, 32), NUM_CLASSES)["discriminator"]
    assert d.feature_dim == 12 and d.trunk[1].weight.shape == (6, 3, 3, 3)
    g = build_models(tiny("ssgan", g_features=5), (3, 32, 32), NUM_CLASSES)["generator"]
    assert g.net[0].out_features == 5 * 8 * 4 * 4  # 4x4 x (g_features*8), improved-gan's 512 at 64
    dcgan_g = build_models(tiny("ssgan", g_features=5, generator="dcgan"), (3, 32, 32), NUM_CLASSES)[
        "generator"
    ]
    assert dcgan_g.project[0].out_features == 5 * 8 * 4 * 4


def test_sample_latent_layout_and_determinism() -> None:
    cfg = tiny("infogan")
    a = sample_latent(cfg, 5, NUM_CLASSES, generator=torch.Generator().manual_seed(3))
    b = sample_latent(cfg, 5, NUM_CLASSES, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.z, b.z) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.z[:, 6:9], F.one_hot(a.labels, 3).float())
    assert torch.equal(a.z[:, 9:], a.continuous) and a.continuous.abs().max() <= 1

    fixed = sample_latent(cfg, 3, NUM_CLASSES, labels=torch.tensor([2, 0, 1]))
    assert fixed.labels.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="labels"):
        sample_latent(cfg, 3, NUM_CLASSES, labels=torch.tensor([3, 0, 1]))

    stacked = sample_latent(tiny("stackedgan"), 4, NUM_CLASSES, labels=torch.tensor([9, 0, 1, 2]))
    assert stacked.z.shape == (4, NUM_CLASSES + 12)
    assert torch.equal(stacked.z[:, :NUM_CLASSES].argmax(1), stacked.labels)
    plain = sample_latent(tiny("dcgan"), 4, NUM_CLASSES)
    assert plain.z.shape == (4, 6) and plain.labels is None and plain.continuous is None


@pytest.mark.parametrize(
    ("name", "shape", "num_classes"),
    [
        ("dcgan", (3, 48, 48), 10),
        ("infogan", (3, 32, 28), 10),
        ("stackedgan", (3, 16, 16), 10),
        ("ssgan", (3, 48, 48), 10),
        ("mlp-gan", (3, 128, 128), 10),
        ("dcgan", (2, 32, 32), 10),
    ],
)
def test_unsupported_shape_names_model_and_shape(
    name: str, shape: tuple[int, int, int], num_classes: int
) -> None:
    with pytest.raises(ConfigError) as err:
        build_models(tiny(name), shape, num_classes)
    assert f"model.name={name!r}" in str(err.value)
    assert str(shape) in str(err.value)


@pytest.mark.parametrize("name", ["ssgan", "stackedgan"])
def test_label_hungry_models_need_classes(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        build_models(tiny(name), (3, 32, 32), 1)


@pytest.mark.parametrize(("name", "shape"), [s for s in SUPPORTED if s[1] in ((1, 28, 28), (3, 32, 32))])
def test_objectives_drive_every_family(name: str, shape: tuple[int, int, int]) -> None:
    """One loop body for all five families: the D step never touches G, the G step reaches G."""
    cfg, train = tiny(name), TrainConfig(label_smoothing=0.1)
    models = build_models(cfg, shape, NUM_CLASSES)
    g_side, d_side = split_modules(models)
    assert set(g_side) == set(GENERATOR_KEYS) and set(g_side) | set(d_side) == set(models)
    rng = torch.Generator().manual_seed(0)
    real, labels = torch.rand(4, *shape) * 2 - 1, torch.tensor([1, -1, 7, -1])

    set_requires_grad(g_side.values(), False)
    set_requires_grad(d_side.values(), True)
    d_terms = discriminator_objective(
        models, real, labels, sample_latent(cfg, 4, NUM_CLASSES, generator=rng), cfg, train
    )
    d_terms["loss"].backward()
    assert d_terms["loss"].ndim == 0 and torch.isfinite(d_terms["loss"])
    assert all(not t.requires_grad for k, t in d_terms.items() if k != "loss")
    d_grads = [p.grad for m in d_side.values() for p in trainable(m)]  # fixed scales take none
    assert all(g is not None and torch.isfinite(g).all() for g in d_grads)
    assert all(p.grad is None for m in g_side.values() for p in m.parameters())

    for m in models.values():
        m.zero_grad(set_to_none=True)
    set_requires_grad(g_side.values(), True)
    set_requires_grad(d_side.values(), False)
    g_terms = generator_objective(
        models, real, labels, sample_latent(cfg, 4, NUM_CLASSES, generator=rng), cfg, train
    )
    g_terms["loss"].backward()
    g_grads = [p.grad for p in trainable(models["generator"])]
    assert all(g is not None and torch.isfinite(g).all() for g in g_grads)
    assert sum(g.abs().sum() for g in g_grads) > 0
    assert all(p.grad is None for m in d_side.values() for p in m.parameters())


@pytest.mark.parametrize(
    ("name", "shape"), [("dcgan", (3, 32, 32)), ("mlp-gan", (1, 28, 28)), ("ssgan", (1, 28, 28))]
)
def test_minibatch_discrimination_is_wired_into_the_discriminator(
    name: str, shape: tuple[int, int, int]
) -> None:
    cfg = options(name, g_features=8, d_features=8, minibatch_discrimination=True, mbd_kernels=7)
    d = build_models(cfg, shape, 10)["discriminator"]
    assert isinstance(d.minibatch, MinibatchDiscrimination) and d.minibatch.num_kernels == 7
    x = torch.randn(4, *shape)
    logits, _ = d(x)
    # The logit of an example depends on the rest of the batch only through minibatch discrimination.
    alone, _ = d(x[:1])
    assert logits.shape[0] == 4 and not torch.allclose(logits[:1], alone)
