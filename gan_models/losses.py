"""GAN losses: pure functions on logits and features, then one objective per family for the loop.

Every loss is a mean over the batch. Labels use -1 for "unlabelled"; supervised terms skip those.
Every loss computes in float32 whatever its inputs' dtype: under bf16 autocast, logits and features
arrive in bfloat16, whose 8-bit mantissa would round away the small mean differences feature matching
measures.
The objectives at the bottom (`discriminator_objective`, `generator_objective`) compose these for each
model family, so one training loop can drive all of them (see `gan_models.nets`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_models.nets import Latent
from gan_models.nets.stackedgan import split_stacked_latent

if TYPE_CHECKING:
    from gan_models.config import ModelConfig, TrainConfig

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# Semi-supervised GAN (Salimans et al. 2016, section 5).


def masked_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over the examples with labels >= 0; exactly 0 (and finite) when none are."""
    logits, mask = logits.float(), labels >= 0
    # Clamp -1 to a valid class so cross_entropy sees no bad index; those terms are then zeroed by `where`.
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    return torch.where(mask, ce, torch.zeros_like(ce)).sum() / mask.sum().clamp(min=1)


def masked_accuracy(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(accuracy over the labelled examples, their number); accuracy is 0 when none are labelled."""
    mask = labels >= 0
    count = mask.sum()
    correct = ((logits.argmax(1) == labels) & mask).sum()
    return correct.float() / count.clamp(min=1), count


def ssgan_discriminator_loss(
    logits_lab: Tensor,
    labels: Tensor,
    logits_unl: Tensor,
    logits_fake: Tensor,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """(supervised, unsupervised) loss of the K-class discriminator-classifier.

    Supervised: cross-entropy on `logits_lab` over examples whose label is not -1.
    Unsupervised: with Z = sum_k exp(l_k), D(x) = Z / (Z + 1), so with L = logsumexp(l)
        log D(x) = L - softplus(L) = -softplus(-L)   and   log(1 - D(x)) = -softplus(L);
    the loss is improved-gan's 0.5 * (-E[log D(x_unl)] - E[log(1 - D(G(z)))]). One-sided label smoothing
    s makes the real target 1 - s: the real term becomes -(1 - s) log D - s log(1 - D).
    """
    supervised = masked_cross_entropy(logits_lab, labels)
    lse_unl = torch.logsumexp(logits_unl.float(), dim=1)
    lse_fake = torch.logsumexp(logits_fake.float(), dim=1)
    # -softplus(-L) equals L - softplus(L) but does not cancel two large numbers when L is large.
    log_d_real = -F.softplus(-lse_unl)
    log_not_d_real = -F.softplus(lse_unl)
    log_not_d_fake = -F.softplus(lse_fake)
    real_term = -((1 - label_smoothing) * log_d_real + label_smoothing * log_not_d_real).mean()
    unsupervised = 0.5 * (real_term - log_not_d_fake.mean())
    return supervised, unsupervised


def ssgan_generator_loss(logits_fake: Tensor) -> Tensor:
    """Non-saturating generator loss -E[log D(G(z))] with D(x) = Z / (Z + 1): E[softplus(-L)]."""
    return F.softplus(-torch.logsumexp(logits_fake.float(), dim=1)).mean()


def feature_matching_loss(real_features: Tensor, fake_features: Tensor) -> Tensor:
    """Mean over feature dims of (batch mean of real - batch mean of fake)^2; real is not differentiated."""
    return (real_features.detach().float().mean(0) - fake_features.float().mean(0)).square().mean()


# DCGAN and other single-logit discriminators.


def dcgan_discriminator_loss(
    real_logits: Tensor, fake_logits: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """BCE(real, 1 - s) + BCE(fake, 0): one-sided label smoothing moves only the real target."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, 1 - label_smoothing))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def dcgan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss BCE(fake, 1) = E[softplus(-l)]."""
    return F.softplus(-fake_logits.float()).mean()


# InfoGAN (and StackedGAN's entropy loss, its Gaussian special case).


def gaussian_nll(x: Tensor, mean: Tensor, log_std: Tensor | None = None) -> Tensor:
    """-log N(x; mean, exp(log_std)^2) summed over code dims, averaged over the batch; std 1 if None."""
    x, mean = x.float(), mean.float()
    log_std = torch.zeros_like(mean) if log_std is None else log_std.float()
    nll = _HALF_LOG_2PI + log_std + 0.5 * ((x - mean) * torch.exp(-log_std)).square()
    return nll.sum(1).mean()


def mutual_information_loss(
    cat_logits: Tensor | None,
    cat_codes: Tensor | None,
    cont_mean: Tensor | None,
    cont_codes: Tensor | None,
    cont_log_std: Tensor | None = None,
) -> Tensor:
    """InfoGAN's variational bound on -I(c; G(z, c)), up to the constant H(c): CE + Gaussian NLL.

    Either part may be absent (None). With a fixed std the Gaussian part is 0.5 * squared error plus a
    constant; the caller weights the result by lambda (`train.info_weight`).
    """
    terms: list[Tensor] = []
    if cat_logits is not None and cat_codes is not None:
        terms.append(F.cross_entropy(cat_logits.float(), cat_codes))
    if cont_mean is not None and cont_codes is not None:
        terms.append(gaussian_nll(cont_codes, cont_mean, cont_log_std))
    if not terms:
        raise ValueError("mutual_information_loss needs a categorical or a continuous code")
    return torch.stack(terms).sum()


# Per-family objectives: what one training step backpropagates, for any model family.

Models = dict[str, nn.Module]
Terms = dict[str, Tensor]


def discriminator_objective(
    models: Models,
    real: Tensor,
    labels: Tensor,
    latent: Latent,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
) -> Terms:
    """Loss of the discriminator side (D and every non-generator module) for one batch.

    `real` are images in [-1, 1], `labels` class indices or -1, `latent` from `nets.sample_latent`.
    The generator runs under no_grad. Returns {"loss": scalar to backpropagate, <term>: detached}.
    """
    return _OBJECTIVES[model_cfg.name][0](models, real, labels, latent, model_cfg, train_cfg)


def generator_objective(
    models: Models,
    real: Tensor,
    labels: Tensor,
    latent: Latent,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
) -> Terms:
    """Loss of the generator for one batch; `real` feeds feature matching and StackedGAN's E0 features.

    Gradients flow through the discriminator side into G; freeze it (requires_grad False) first.
    """
    return _OBJECTIVES[model_cfg.name][1](models, real, labels, latent, model_cfg, train_cfg)


def _terms(loss: Tensor, **parts: Tensor) -> Terms:
    return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}


def _ssgan_d(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, mcfg: ModelConfig, cfg: TrainConfig
) -> Terms:
    with torch.no_grad():
        fake = models["generator"](latent.z)
    # improved-gan scores labelled and unlabelled batches separately; here both are `real` (labels -1
    # for the unlabelled part), and every real image also counts as unlabelled data. One pass over
    # real and fake together when each example's output is its own (no batch norm, no minibatch
    # discrimination): it halves the weight-norm and cast work and gives the matmuls larger batches.
    discriminator = models["discriminator"]
    if getattr(discriminator, "module", discriminator).mixes_examples:  # `.module` under DDP
        logits_real, _ = discriminator(real)
        logits_fake, _ = discriminator(fake)
    else:
        logits, _ = discriminator(torch.cat([real, fake.to(real.dtype)]))
        logits_real, logits_fake = logits.split([len(real), len(fake)])
    supervised, unsupervised = ssgan_discriminator_loss(
        logits_real, labels, logits_real, logits_fake, cfg.label_smoothing
    )
    accuracy, _ = masked_accuracy(logits_real, labels)
    return _terms(
        supervised + cfg.unlabeled_weight * unsupervised,
        supervised=supervised,
        unsupervised=unsupervised,
        accuracy=accuracy,
    )


def _ssgan_g(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, mcfg: ModelConfig, cfg: TrainConfig
) -> Terms:
    fake = models["generator"](latent.z)
    logits_fake, fake_features = models["discriminator"](fake)
    if not cfg.feature_matching:
        loss = ssgan_generator_loss(logits_fake)
        return _terms(loss, adversarial=loss)
    # The target is the unlabelled real batch (labels -1), as in improved-gan: it skips a third of
    # this step's discriminator forward work. `all` adds the labelled batch, which was steadier across
    # seeds on MNIST with 100 labels (benchmarks/RESULTS.md). Fully labelled batches match all.
    unlabeled = labels < 0
    if cfg.feature_matching_target == "unlabeled" and bool(unlabeled.any()):
        target = real[unlabeled]
    else:
        target = real
    with torch.no_grad():
        _, real_features = models["discriminator"](target)
    loss = feature_matching_loss(real_features, fake_features)
    return _terms(loss, feature_matching=loss)


def _dcgan_d(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, mcfg: ModelConfig, cfg: TrainConfig
) -> Terms:
    with torch.no_grad():
        fake = models["generator"](latent.z)
    real_logits, _ = models["discriminator"](real)
    fake_logits, _ = models["discriminator"](fake)
    loss = dcgan_discriminator_loss(real_logits, fake_logits, cfg.label_smoothing)
    return _terms(loss, adversarial=loss)


def _dcgan_g(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, mcfg: ModelConfig, cfg: TrainConfig
) -> Terms:
    fake_logits, _ = models["discriminator"](models["generator"](latent.z))
    loss = dcgan_generator_loss(fake_logits)
    return _terms(loss, adversarial=loss)


def _info_loss(models: Models, features: Tensor, latent: Latent) -> Tensor:
    q = models["q_head"](features)
    return mutual_information_loss(q.logits, latent.labels, q.mean, latent.continuous, q.log_std)


def _infogan_d(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, mcfg: ModelConfig, cfg: TrainConfig
) -> Terms:
    with torch.no_grad():
        fake = models["generator"](latent.z)
    real_logits, _ = models["discriminator"](real)
    fake_logits, fake_features = models["discriminator"](fake)
    adversarial = dcgan_discriminator_loss(real_logits, fake_logits, cfg.label_smoothing)
    # Q (and D's shared trunk) learn to recover the codes of the detached fakes.
    info = _info_loss(models, fake_features, latent)
    return _terms(adversarial + cfg.info_weight * info, adversarial=adversarial, mutual_information=info)


def _infogan_g(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, mcfg: ModelConfig, cfg: TrainConfig
) -> Terms:
    fake_logits, fake_features = models["discriminator"](models["generator"](latent.z))
    adversarial = dcgan_generator_loss(fake_logits)
    info = _info_loss(models, fake_features, latent)
    return _terms(adversarial + cfg.info_weight * info, adversarial=adversarial, mutual_information=info)


def _entropy_loss(q_head: nn.Module, features: Tensor, noise: Tensor) -> Tensor:
    # Atienza's entropy loss: mean squared error of the recovered noise (a unit-std Gaussian NLL up to
    # scale and constant), averaged over dims so its size does not grow with latent_dim.
    return F.mse_loss(q_head(features).mean, noise)


def _stackedgan_d(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, mcfg: ModelConfig, cfg: TrainConfig
) -> Terms:
    _, z1, z0 = split_stacked_latent(latent.z, mcfg.latent_dim)
    real_features = models["encoder"](real)
    encoder = masked_cross_entropy(models["classifier"](real_features), labels)
    real_features = real_features.detach()
    with torch.no_grad():
        # G0 draws on E0's real features, G1 on labels: the stages train independently (Atienza).
        fake, fake_features = models["generator"](latent.z, features=real_features, return_features=True)
    d1_real, _ = models["feature_discriminator"](real_features)
    d1_fake, h1 = models["feature_discriminator"](fake_features)
    d0_real, _ = models["discriminator"](real)
    d0_fake, h0 = models["discriminator"](fake)
    adversarial_features = dcgan_discriminator_loss(d1_real, d1_fake, cfg.label_smoothing)
    adversarial = adversarial_features + dcgan_discriminator_loss(d0_real, d0_fake, cfg.label_smoothing)
    entropy = _entropy_loss(models["feature_q_head"], h1, z1) + _entropy_loss(models["q_head"], h0, z0)
    loss = adversarial + cfg.info_weight * entropy + encoder
    return _terms(loss, adversarial=adversarial, entropy=entropy, encoder=encoder)


def _stackedgan_g(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, mcfg: ModelConfig, cfg: TrainConfig
) -> Terms:
    _, z1, z0 = split_stacked_latent(latent.z, mcfg.latent_dim)
    with torch.no_grad():
        real_features = models["encoder"](real)
    fake, fake_features = models["generator"](latent.z, features=real_features, return_features=True)
    d1_fake, h1 = models["feature_discriminator"](fake_features)
    d0_fake, h0 = models["discriminator"](fake)
    adversarial = dcgan_generator_loss(d1_fake) + dcgan_generator_loss(d0_fake)
    entropy = _entropy_loss(models["feature_q_head"], h1, z1) + _entropy_loss(models["q_head"], h0, z0)
    # Conditional losses: G1's features must classify as the asked-for label, and G0's image must
    # encode back to the features it was drawn from.
    conditional_labels = F.cross_entropy(models["classifier"](fake_features), latent.labels)
    conditional = conditional_labels + F.mse_loss(models["encoder"](fake), real_features)
    loss = adversarial + cfg.info_weight * entropy + cfg.conditional_weight * conditional
    return _terms(loss, adversarial=adversarial, entropy=entropy, conditional=conditional)


_Objective = Callable[[Models, Tensor, Tensor, Latent, "ModelConfig", "TrainConfig"], Terms]
_OBJECTIVES: dict[str, tuple[_Objective, _Objective]] = {
    "ssgan": (_ssgan_d, _ssgan_g),
    "dcgan": (_dcgan_d, _dcgan_g),
    "mlp-gan": (_dcgan_d, _dcgan_g),
    "infogan": (_infogan_d, _infogan_g),
    "stackedgan": (_stackedgan_d, _stackedgan_g),
}
