"""Losses against values computed by hand on tiny tensors, and their behaviour at extreme logits."""

from __future__ import annotations

import math

import pytest
import torch

from gan_models.losses import (
    dcgan_discriminator_loss,
    dcgan_generator_loss,
    feature_matching_loss,
    gaussian_nll,
    masked_accuracy,
    masked_cross_entropy,
    mutual_information_loss,
    ssgan_discriminator_loss,
    ssgan_generator_loss,
)

T = torch.tensor


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def naive_unsupervised(logits_unl: torch.Tensor, logits_fake: torch.Tensor, s: float = 0.0) -> torch.Tensor:
    """The textbook form, D = Z / (Z + 1), in float64: fine on moderate logits, overflows on large ones."""
    z_unl, z_fake = logits_unl.double().exp().sum(1), logits_fake.double().exp().sum(1)
    d_unl, d_fake = z_unl / (z_unl + 1), z_fake / (z_fake + 1)
    real = -((1 - s) * torch.log(d_unl) + s * torch.log(1 - d_unl)).mean()
    return 0.5 * (real - torch.log(1 - d_fake).mean())


def test_masked_cross_entropy_by_hand() -> None:
    logits = T([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    labels = T([0, -1, 1])
    # Example 0: -log(e / (e + 1)) = log(1 + e^-1); example 2: -log(1/2); example 1 is unlabelled.
    expected = (math.log1p(math.exp(-1)) + math.log(2)) / 2
    assert masked_cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_ssgan_supervised_loss_is_exactly_zero_without_labels() -> None:
    logits = T([[1e4, -1e4, 0.0], [3.0, 2.0, 1.0]], requires_grad=True)
    supervised, unsupervised = ssgan_discriminator_loss(logits, T([-1, -1]), logits, -logits)
    assert supervised.item() == 0.0 and torch.isfinite(unsupervised)
    supervised.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_ssgan_unsupervised_loss_by_hand() -> None:
    # Real: logits (0, 0) -> Z = 2, D = 2/3. Fake: logits (log 3, -inf-ish) -> Z = 3, 1 - D = 1/4.
    logits_unl = T([[0.0, 0.0]])
    logits_fake = T([[math.log(3), -100.0]])
    supervised, unsupervised = ssgan_discriminator_loss(logits_unl, T([1]), logits_unl, logits_fake)
    assert unsupervised.item() == pytest.approx(0.5 * (-math.log(2 / 3) - math.log(1 / 4)), rel=1e-6)
    assert supervised.item() == pytest.approx(math.log(2), rel=1e-6)


def test_ssgan_label_smoothing_by_hand() -> None:
    logits_unl, logits_fake, s = T([[0.0, 0.0]]), T([[math.log(3), -100.0]]), 0.1
    _, smoothed = ssgan_discriminator_loss(logits_unl, T([-1]), logits_unl, logits_fake, label_smoothing=s)
    # Real target 1 - s: -(0.9 log(2/3) + 0.1 log(1/3)); the fake term is unchanged.
    expected = 0.5 * (-(0.9 * math.log(2 / 3) + 0.1 * math.log(1 / 3)) - math.log(1 / 4))
    assert smoothed.item() == pytest.approx(expected, rel=1e-6)
    _, plain = ssgan_discriminator_loss(logits_unl, T([-1]), logits_unl, logits_fake)
    assert smoothed.item() > plain.item()


def test_ssgan_stable_form_equals_naive_form_on_safe_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    logits_unl = 3 * torch.randn(16, 10, generator=gen)
    logits_fake = 3 * torch.randn(16, 10, generator=gen) - 2
    for s in (0.0, 0.2):
        _, stable = ssgan_discriminator_loss(
            logits_unl, -torch.ones(16, dtype=torch.long), logits_unl, logits_fake, label_smoothing=s
        )
        assert stable.item() == pytest.approx(naive_unsupervised(logits_unl, logits_fake, s).item(), rel=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ssgan_losses_stay_finite_on_extreme_logits(sign: float) -> None:
    logits = torch.full((4, 10), sign * 1e4)
    logits[0, 0] = -sign * 1e4  # one row mixes both extremes
    logits.requires_grad_(True)
    labels = T([0, 1, -1, 3])
    supervised, unsupervised = ssgan_discriminator_loss(logits, labels, logits, logits, label_smoothing=0.1)
    g = ssgan_generator_loss(logits)
    for value in (supervised, unsupervised, g):
        assert torch.isfinite(value)
    (supervised + unsupervised + g).backward()
    assert torch.isfinite(logits.grad).all()
    # The naive form is not: exp(1e4) overflows and exp(-1e4) underflows to log(0), even in float64.
    assert not torch.isfinite(naive_unsupervised(logits.detach(), logits.detach()))


def test_ssgan_extreme_values_are_the_right_limits() -> None:
    confident_real, confident_fake = torch.full((2, 3), 1e4), torch.full((2, 3), -1e4)
    # D(real) -> 1 and D(fake) -> 0: the unsupervised loss is 0 exactly.
    _, perfect = ssgan_discriminator_loss(confident_real, T([-1, -1]), confident_real, confident_fake)
    assert perfect.item() == 0.0
    # D(real) = e^L / (e^L + 1) with L = -1e4 + log 3: -log D ~ 1e4 - log 3.
    _, awful = ssgan_discriminator_loss(confident_fake, T([-1, -1]), confident_fake, confident_fake)
    assert awful.item() == pytest.approx(0.5 * (1e4 - math.log(3)), rel=1e-6)


def test_ssgan_generator_loss_by_hand() -> None:
    # Z = 1 -> D = 1/2 -> -log D = log 2; Z = 3 -> -log(3/4).
    logits = T([[0.0, -100.0], [math.log(3), -100.0]])
    assert ssgan_generator_loss(logits).item() == pytest.approx((math.log(2) - math.log(3 / 4)) / 2, rel=1e-6)


def test_masked_accuracy() -> None:
    logits = T([[2.0, 1.0], [0.0, 1.0], [5.0, 0.0], [0.0, 9.0]])
    accuracy, count = masked_accuracy(logits, T([0, 0, -1, 1]))
    assert count.item() == 3 and accuracy.item() == pytest.approx(2 / 3)
    accuracy, count = masked_accuracy(logits, T([-1, -1, -1, -1]))
    assert count.item() == 0 and accuracy.item() == 0.0


def test_feature_matching() -> None:
    real = T([[0.0, 0.0], [2.0, 2.0]])  # mean (1, 1)
    fake = T([[0.0, 1.0], [0.0, 1.0]], requires_grad=True)  # mean (0, 1)
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx((1.0 + 0.0) / 2)
    loss.backward()
    # d/dfake_ij of mean_k (r_k - m_k)^2 = -2 (r_j - m_j) / (2 dims * 2 rows)
    assert torch.allclose(fake.grad, T([[-0.5, 0.0], [-0.5, 0.0]]))
    same = torch.randn(5, 7)
    assert feature_matching_loss(same, same.clone()).item() == 0.0
    real_with_grad = torch.randn(3, 4, requires_grad=True)
    feature_matching_loss(real_with_grad, torch.randn(3, 4, requires_grad=True)).backward()
    assert real_with_grad.grad is None  # the real side is detached


def test_dcgan_discriminator_loss_and_label_smoothing_by_hand() -> None:
    assert dcgan_discriminator_loss(T([0.0]), T([0.0])).item() == pytest.approx(2 * math.log(2))
    real, fake = T([2.0]), T([-1.0])
    plain = -log_sigmoid(2.0) - log_sigmoid(1.0)  # -log s(2) - log(1 - s(-1))
    assert dcgan_discriminator_loss(real, fake).item() == pytest.approx(plain, rel=1e-6)
    # One-sided: only the real target moves to 0.9; the fake term is unchanged.
    smoothed = -(0.9 * log_sigmoid(2.0) + 0.1 * log_sigmoid(-2.0)) - log_sigmoid(1.0)
    assert dcgan_discriminator_loss(real, fake, label_smoothing=0.1).item() == pytest.approx(
        smoothed, rel=1e-6
    )
    assert dcgan_discriminator_loss(T([-3.0]), fake, label_smoothing=0.1).item() == pytest.approx(
        -(0.9 * log_sigmoid(-3.0) + 0.1 * log_sigmoid(3.0)) - log_sigmoid(1.0), rel=1e-6
    )


def test_dcgan_generator_loss_by_hand_and_extremes() -> None:
    assert dcgan_generator_loss(T([0.0, 1.0])).item() == pytest.approx(
        (math.log(2) - log_sigmoid(1.0)) / 2, rel=1e-6
    )
    assert dcgan_generator_loss(T([-1e4])).item() == pytest.approx(1e4)
    assert torch.isfinite(dcgan_discriminator_loss(T([-1e4]), T([1e4])))


def test_gaussian_nll_by_hand() -> None:
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    assert gaussian_nll(T([[1.0]]), T([[0.0]])).item() == pytest.approx(half_log_2pi + 0.5)
    value = gaussian_nll(T([[1.0, 0.0]]), T([[0.0, 0.0]]), T([[math.log(2), 0.0]])).item()
    assert value == pytest.approx((half_log_2pi + math.log(2) + 0.5 * 0.25) + half_log_2pi)


def test_mutual_information_loss_is_ce_plus_gaussian_nll() -> None:
    cat_logits, codes = T([[0.0, 0.0, math.log(2)]]), T([2])  # p(code) = 2/4
    mean, cont = T([[0.5]]), T([[0.0]])
    ce = -math.log(0.5)
    nll = 0.5 * math.log(2 * math.pi) + 0.5 * 0.25
    assert mutual_information_loss(cat_logits, codes, mean, cont).item() == pytest.approx(ce + nll, rel=1e-6)
    assert mutual_information_loss(cat_logits, codes, None, None).item() == pytest.approx(ce, rel=1e-6)
    assert mutual_information_loss(None, None, mean, cont).item() == pytest.approx(nll, rel=1e-6)
    with pytest.raises(ValueError):
        mutual_information_loss(None, None, None, None)


@pytest.mark.parametrize("minibatch", [False, True])
@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
def test_ssgan_discriminator_objective_equals_separate_real_and_fake_passes(
    image_shape: tuple, minibatch: bool
) -> None:
    # The objective scores real and fake in one pass where it can; without noise (eval mode) it must
    # equal scoring them separately, as improved-gan does, also when minibatch discrimination makes
    # each output depend on its batch.
    from gan_models.config import load_config
    from gan_models.nets import build_models, discriminator_objective, sample_latent

    cfg = load_config(
        None,
        [
            "model.name=ssgan",
            "model.d_features=8",
            "model.g_features=8",
            f"model.minibatch_discrimination={str(minibatch).lower()}",
        ],
    )
    torch.manual_seed(0)
    models = {k: m.eval() for k, m in build_models(cfg.model, image_shape, 10).items()}
    real = torch.rand(6, *image_shape) * 2 - 1
    labels = T([3, 7, -1, -1, 1, -1])
    latent = sample_latent(cfg.model, 4, 10, generator=torch.Generator().manual_seed(1))
    terms = discriminator_objective(models, real, labels, latent, cfg.model, cfg.train)

    with torch.no_grad():
        logits_real, _ = models["discriminator"](real)
        logits_fake, _ = models["discriminator"](models["generator"](latent.z))
    # improved-gan's unsupervised term scores the unlabelled batch only (its `x_unl`).
    unlabeled = logits_real[labels < 0]
    supervised, unsupervised = ssgan_discriminator_loss(logits_real, labels, unlabeled, logits_fake)
    torch.testing.assert_close(terms["supervised"], supervised)
    torch.testing.assert_close(terms["unsupervised"], unsupervised)


def test_ssgan_feature_matching_targets_the_unlabelled_real_images() -> None:
    # improved-gan matches the generated features to an unlabelled batch's (on the conv nets by the
    # mean absolute difference); fully labelled batches (no -1) fall back to all real images, as does
    # `feature_matching_target: all`.
    from gan_models.config import load_config
    from gan_models.nets import build_models, generator_objective, sample_latent

    cfg = load_config(None, ["model.name=ssgan", "model.d_features=8", "model.g_features=8"])
    torch.manual_seed(0)
    models = {k: m.eval() for k, m in build_models(cfg.model, (3, 32, 32), 10).items()}
    real = torch.rand(6, 3, 32, 32) * 2 - 1
    latent = sample_latent(cfg.model, 4, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, fake_features = models["discriminator"](models["generator"](latent.z))

        def expected(target: torch.Tensor) -> torch.Tensor:
            return feature_matching_loss(models["discriminator"](target)[1], fake_features, "l1")

        partly = generator_objective(models, real, T([3, 7, -1, -1, 1, -1]), latent, cfg.model, cfg.train)
        fully = generator_objective(models, real, T([3, 7, 0, 2, 1, 9]), latent, cfg.model, cfg.train)
        target_all = cfg.train.model_copy(update={"feature_matching_target": "all"})
        both = generator_objective(models, real, T([3, 7, -1, -1, 1, -1]), latent, cfg.model, target_all)
    torch.testing.assert_close(partly["feature_matching"], expected(real[[2, 3, 5]]))
    torch.testing.assert_close(fully["feature_matching"], expected(real))
    torch.testing.assert_close(both["feature_matching"], expected(real))
    assert partly["feature_matching"] != fully["feature_matching"]


def test_feature_matching_computes_in_float32_from_bfloat16_features() -> None:
    # Under bf16 autocast the features arrive in bfloat16; a mean difference of 2^-10 on values near 1
    # is below bfloat16's resolution there (2^-7), so a bf16 computation would return exactly 0.
    real = torch.ones(256, 4, dtype=torch.bfloat16)
    fake = torch.ones(256, 4, dtype=torch.bfloat16)
    fake[:128] += 2**-7  # representable per element; its batch mean 1 + 2^-8 is not in bfloat16
    loss = feature_matching_loss(real, fake)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((2**-8) ** 2)


def test_ssgan_losses_return_float32_for_bfloat16_logits() -> None:
    logits = torch.randn(8, 10).bfloat16()
    labels = T([1, -1, 3, -1, 0, 9, -1, 2])
    supervised, unsupervised = ssgan_discriminator_loss(logits, labels, logits, logits)
    assert supervised.dtype == unsupervised.dtype == ssgan_generator_loss(logits).dtype == torch.float32
