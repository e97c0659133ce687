"""GAN losses: pure functions on logits and features (each family's file composes them into objectives).

Every loss is a mean over the batch. Labels use -1 for "unlabelled"; supervised terms skip those.
Every loss computes in float32 whatever its inputs' dtype: under bf16 autocast, logits and features
arrive in bfloat16, whose 8-bit mantissa would round away the small mean differences feature matching
measures.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

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


def feature_matching_loss(real_features: Tensor, fake_features: Tensor, distance: str = "l2") -> Tensor:
    """Mean over feature dims of |batch mean of real - batch mean of fake|, squared for "l2" (improved-gan's
    MNIST script) or not for "l1" (its SVHN and CIFAR scripts); real is not differentiated."""
    difference = real_features.detach().float().mean(0) - fake_features.float().mean(0)
    if distance == "l1":
        return difference.abs().mean()
    if distance == "l2":
        return difference.square().mean()
    raise ValueError(f"feature matching distance must be 'l1' or 'l2', got {distance!r}")


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


# SNGAN's hinge loss (Miyato et al. 2018; Lim & Ye 2017).


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]: no gradient once a logit is past its margin."""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    """-E[D(G(z))]."""
    return -fake_logits.float().mean()


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
