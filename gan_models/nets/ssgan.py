"""Semi-supervised GAN (Salimans et al. 2016, "Improved Techniques for Training GANs").

The discriminator is a K-class classifier; "real" is the implicit class K+1 with logit 0, so
D(x) = Z / (Z + 1) with Z = sum_k exp(l_k) (see `gan_models.losses`). It returns the K logits and its
penultimate features, which the generator matches under feature matching.

The networks and the recipe follow the official code (openai/improved-gan, `mnist_svhn_cifar10/`);
each deviation that could change learning is an option whose default is the reference's:
- 32x32 (SVHN, CIFAR): a weight-normalised conv D with dropout and global average pooling (SVHN's
  64/128 channels at `d_features=64`; CIFAR's script uses 96/192), and a generator of 5x5 transposed
  convs with batch norm without a learned scale, ending in a weight-normed tanh layer
  (`SSGANConvGenerator`; `generator=dcgan` takes `DCGANGenerator` instead);
- 28x28 (MNIST): an MLP D with Gaussian noise on every layer's input (`input_noise` 0.6 on [-1, 1]
  pixels is the reference's 0.3 on [0, 1]) and the 500-500 softplus MLP generator;
- the weights start as the reference's do (`weight_init`: N(0, 0.1) in the MNIST D, N(0, 0.05) in the
  conv nets, Glorot in the MNIST G; under weight norm their size sets each layer's step size), every
  weight-normed layer gets improved-gan's data-dependent init before the first step (`data_init`),
  and only the output layers train their scales (`train_hidden_scales`);
- the generator's noise is uniform on [0, 1] (`latent`); feature matching is the mean |difference| of
  mean features on the conv nets and its square on the MLP (`train.feature_matching_distance`), against
  an independent unlabelled batch (`train.feature_matching_target`); Adam's epsilon and the test-time
  weight average are `train.adam_eps` and `train.ema_decay`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from gan_models.losses import (
    feature_matching_loss,
    masked_accuracy,
    ssgan_discriminator_loss,
    ssgan_generator_loss,
)
from gan_models.nets.dcgan import BASE_SIDE, DCGANGenerator, num_doublings
from gan_models.nets.family import (
    Draws,
    Family,
    Latent,
    ModelOptions,
    Models,
    Terms,
    TrainingData,
    gaussian_latent,
    require_classes,
    terms,
    unsupported,
)
from gan_models.nets.layers import (
    GaussianNoise,
    ImageShape,
    MinibatchDiscrimination,
    SymmetricSigmoid,
    WeightInit,
    data_dependent_init,
    fix,
    image_numel,
    init_weights,
    wn,
)

if TYPE_CHECKING:
    from gan_models.config import TrainConfig

# improved-gan's MNIST discriminator widths and noise levels (the input's is an option: `input_noise`).
MLP_HIDDEN = (1000, 500, 250, 250, 250)
MLP_HIDDEN_NOISE = 0.5
# improved-gan initialises on 500 training images (`init_param(trainx[:500])`).
INIT_IMAGES = 500

WeightInitName = Literal["improved-gan", "he"]
# Each net's initial weights (`SSGANOptions.weight_init`): improved-gan's scripts (its MNIST `DenseLayer`
# draws N(0, 0.1), the SVHN script N(0, 0.05), Lasagne's default is Glorot), or the earlier code's He
# init of the D's hidden layers and PyTorch's defaults elsewhere. The conv G is N(0, 0.05) under both.
WEIGHT_INITS: dict[str, dict[str, WeightInit]] = {
    "improved-gan": {
        "mlp_d": ("normal", 0.1),
        "mlp_d_head": ("normal", 0.1),
        "mlp_g": ("glorot", 0.0),
        "conv_d": ("normal", 0.05),
        "conv_d_head": ("normal", 0.05),
    },
    "he": {
        "mlp_d": ("he", 0.0),
        "mlp_d_head": None,
        "mlp_g": None,
        "conv_d": ("he", 0.2),
        "conv_d_head": None,
    },
}


def _classifier_head(
    in_features: int, num_classes: int, minibatch: tuple[int, int] | None, init_scale: float, init: WeightInit
) -> tuple[nn.Module, nn.Module]:
    """(optional minibatch discrimination, weight-normed linear to K logits, its scale trained)."""
    mbd: nn.Module = nn.Identity()
    if minibatch is not None:
        mbd = MinibatchDiscrimination(in_features, *minibatch)
        in_features = mbd.out_features
    return mbd, wn(nn.Linear(in_features, num_classes), init, init_scale=init_scale)


class _SSGANDiscriminator(nn.Module):
    minibatch: nn.Module
    cpu_chunk: int | None = None  # split larger CPU batches into chunks of this many (None: never)

    @contextlib.contextmanager
    def whole_batches(self) -> Iterator[None]:
        """Run each batch in one pass (the data-dependent init needs one batch's statistics)."""
        chunk, self.cpu_chunk = self.cpu_chunk, None
        try:
            yield
        finally:
            self.cpu_chunk = chunk

    @property
    def mixes_examples(self) -> bool:
        """Whether an example's output depends on the rest of its batch (minibatch discrimination)."""
        return isinstance(self.minibatch, MinibatchDiscrimination)


class SSGANConvDiscriminator(_SSGANDiscriminator):
    """improved-gan's SVHN/CIFAR discriminator-classifier; returns (logits (n, K), features (n, 2*df)).

    No batch norm anywhere: the features feed feature matching, and BN would make each example's
    features depend on the rest of its batch. Global average pooling makes it work at 64x64 too.
    """

    # On a CPU, convolutions over more images than this fall out of cache: three chunks of 128 train
    # 30% faster than one pass of 384 in fp32 (benchmarks/RESULTS.md). The trunk treats every example
    # on its own, so chunks give the same features.
    cpu_chunk: int | None = 128

    def __init__(
        self,
        image_shape: ImageShape,
        num_classes: int,
        d_features: int,
        input_dropout: float,
        dropout: float,
        minibatch: tuple[int, int] | None = None,
        train_hidden_scales: bool = False,
        weight_init: WeightInitName = "improved-gan",
    ) -> None:
        super().__init__()
        inits = WEIGHT_INITS[weight_init]
        nc = image_shape[0]
        df, df2 = d_features, 2 * d_features
        self.image_shape = image_shape
        self.num_classes = num_classes

        def conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 1) -> list[nn.Module]:
            layer = wn(nn.Conv2d(cin, cout, k, stride, pad), inits["conv_d"], train_scale=train_hidden_scales)
            return [layer, nn.LeakyReLU(0.2, True)]

        self.trunk = nn.Sequential(
            nn.Dropout(input_dropout),
            *conv(nc, df, 3),  # df x 32 x 32
            *conv(df, df, 3),  # df x 32 x 32
            *conv(df, df, 3, stride=2),  # df x 16 x 16
            nn.Dropout(dropout),
            *conv(df, df2, 3),  # (df*2) x 16 x 16
            *conv(df2, df2, 3),  # (df*2) x 16 x 16
            *conv(df2, df2, 3, stride=2),  # (df*2) x 8 x 8
            nn.Dropout(dropout),
            *conv(df2, df2, 3, pad=0),  # (df*2) x 6 x 6
            *conv(df2, df2, 1, pad=0),  # (df*2) x 6 x 6, network-in-network
            *conv(df2, df2, 1, pad=0),  # (df*2) x 6 x 6
            nn.AdaptiveAvgPool2d(1),  # (df*2) x 1 x 1
            nn.Flatten(),  # df*2
        )
        self.feature_dim = df2
        # improved-gan's output layer: init std 0.1, its scale trained.
        self.minibatch, self.head = _classifier_head(
            df2, num_classes, minibatch, init_scale=0.1, init=inits["conv_d_head"]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.device.type == "cpu" and self.cpu_chunk is not None and len(x) > self.cpu_chunk:
            features = torch.cat([self.trunk(chunk) for chunk in x.split(self.cpu_chunk)])
        else:
            features = self.trunk(x)
        return self.head(self.minibatch(features)), features


class SSGANMLPDiscriminator(_SSGANDiscriminator):
    """improved-gan's MNIST discriminator: dense 1000-500-250-250-250 ReLU with Gaussian input noise.

    Returns (logits (n, K), features (n, 250)); the features are the last hidden layer, before its noise.
    """

    def __init__(
        self,
        image_shape: ImageShape,
        num_classes: int,
        minibatch: tuple[int, int] | None = None,
        hidden: tuple[int, ...] = MLP_HIDDEN,
        input_noise: float = 0.6,
        train_hidden_scales: bool = False,
        weight_init: WeightInitName = "improved-gan",
    ) -> None:
        super().__init__()
        inits = WEIGHT_INITS[weight_init]
        self.image_shape = image_shape
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten(), GaussianNoise(input_noise)]
        width = image_numel(image_shape)
        for i, out in enumerate(hidden):
            if i > 0:
                layers.append(GaussianNoise(MLP_HIDDEN_NOISE))
            layers += [
                wn(nn.Linear(width, out), inits["mlp_d"], train_scale=train_hidden_scales),
                nn.ReLU(True),
            ]
            width = out
        self.trunk = nn.Sequential(*layers)
        self.feature_dim = width
        self.head_noise = GaussianNoise(MLP_HIDDEN_NOISE)
        # improved-gan's MNIST output layer (its older `DenseLayer`): init std 1, its scale trained.
        self.minibatch, self.head = _classifier_head(
            width, num_classes, minibatch, init_scale=1.0, init=inits["mlp_d_head"]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        return self.head(self.minibatch(self.head_noise(features))), features


def _batch_norm(cls: type[nn.BatchNorm1d] | type[nn.BatchNorm2d], width: int, scale: bool) -> nn.Module:
    """Batch norm with a learned shift; its scale fixed at 1 unless `scale` (improved-gan: `g=None`)."""
    bn = cls(width)
    if not scale:
        fix(bn.weight)
    return bn


class SSGANMLPGenerator(nn.Module):
    """improved-gan's MNIST generator: z -> 500 -> 500 (BN, softplus) -> image in [-1, 1].

    `output="sigmoid"` (`SSGANOptions.g_output`'s default) is improved-gan's sigmoid on [0, 1] pixels
    mapped to [-1, 1] (2 sigmoid(a) - 1, the same function of the same weights); `"tanh"` is tanh(a).
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: ImageShape,
        hidden: int = 500,
        bn_scale: bool = False,
        output: Literal["sigmoid", "tanh"] = "sigmoid",
        weight_init: WeightInitName = "improved-gan",
    ) -> None:
        super().__init__()
        init = WEIGHT_INITS[weight_init]["mlp_g"]
        self.input_dim = latent_dim
        self.image_shape = image_shape
        out = wn(nn.Linear(hidden, image_numel(image_shape)), init, init_scale=None)
        first, second = nn.Linear(latent_dim, hidden, bias=False), nn.Linear(hidden, hidden, bias=False)
        init_weights(first, init)
        init_weights(second, init)
        # improved-gan's `l2normalize` starts every output unit's weight norm at 1.
        nn.init.ones_(out.parametrizations.weight.original0)
        self.net = nn.Sequential(
            first,
            _batch_norm(nn.BatchNorm1d, hidden, bn_scale),
            nn.Softplus(),
            second,
            _batch_norm(nn.BatchNorm1d, hidden, bn_scale),
            nn.Softplus(),
            out,
            SymmetricSigmoid() if output == "sigmoid" else nn.Tanh(),
            nn.Unflatten(1, image_shape),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class SSGANConvGenerator(nn.Module):
    """improved-gan's SVHN/CIFAR generator: dense to (8g) x 4 x 4 (BN per unit, ReLU), then 5x5 stride-2
    transposed convs halving the width (BN per channel, ReLU), then a weight-normed 5x5 transposed conv
    to the image and tanh.

    At g_features=64 this is the reference's 512 x 4 x 4 -> 256 x 8 x 8 -> 128 x 16 x 16 -> 3 x 32 x 32
    (64x64 images get one more block). Weights start N(0, 0.05) as there; the output layer's scale is
    then set by the data-dependent init (std 0.1) and trained.
    """

    def __init__(
        self, latent_dim: int, image_shape: ImageShape, g_features: int, bn_scale: bool = False
    ) -> None:
        super().__init__()
        nc, side, _ = image_shape
        base, n = BASE_SIDE[side], num_doublings(side)
        width = g_features * 8
        self.input_dim = latent_dim
        self.image_shape = image_shape
        # The dense layer's batch norm is per unit (improved-gan's DenseLayer), not per channel: each of
        # the 8g x 4 x 4 units loses its own mean over the batch, so what is left varies with z. Per
        # channel, a fixed 4 x 4 pattern survives the norm, and the generator collapsed onto it.
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, width * base * base, bias=False),
            _batch_norm(nn.BatchNorm1d, width * base * base, bn_scale),
            nn.ReLU(True),
            nn.Unflatten(1, (width, base, base)),
        ]
        for _ in range(n - 1):
            out = max(width // 2, g_features)
            layers += [
                nn.ConvTranspose2d(width, out, 5, 2, 2, output_padding=1, bias=False),
                _batch_norm(nn.BatchNorm2d, out, bn_scale),
                nn.ReLU(True),
            ]
            width = out
        head = nn.ConvTranspose2d(width, nc, 5, 2, 2, output_padding=1)
        for m in [*layers, head]:
            if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.05)
        nn.init.zeros_(head.bias)
        layers += [wn(head, init_scale=0.1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


# The family.


class SSGANOptions(ModelOptions):
    name: Literal["ssgan"] = "ssgan"
    d_input_dropout: float = Field(0.2, ge=0, lt=1, description="dropout on the conv D's input images")
    d_dropout: float = Field(0.5, ge=0, lt=1, description="dropout after each conv D's stride-2 block")
    input_noise: float = Field(
        0.6,
        ge=0,
        description="std of the MNIST D's input noise on [-1, 1] pixels (improved-gan: 0.3 on [0, 1])",
    )
    data_init: bool = Field(
        True, description="improved-gan's data-dependent init of the weight-normed layers"
    )
    train_hidden_scales: bool = Field(
        False,
        description="train the hidden weight-normed layers' scales too (improved-gan: output layers only)",
    )
    latent: Literal["uniform", "normal"] = Field(
        "uniform", description="z ~ U[0, 1] (improved-gan) or N(0, I)"
    )
    generator: Literal["improved-gan", "dcgan"] = Field(
        "improved-gan", description="32x32/64x64 generator: improved-gan's 5x5 one, or the DCGAN generator"
    )
    g_bn_scale: bool = Field(False, description="learn the generator's batch-norm scales (improved-gan: no)")
    weight_init: WeightInitName = Field(
        "improved-gan",
        description="initial weights: improved-gan's (N(0, 0.1) MNIST D, N(0, 0.05) conv D, Glorot MNIST G) "
        "or He's in the D's hidden layers and PyTorch's defaults elsewhere",
    )
    # improved-gan's sigmoid. It was tanh while the sigmoid's runs collapsed: they ran in bf16, and in
    # fp32 neither output collapses and the sigmoid learns about twice as fast (benchmarks/RESULTS.md).
    g_output: Literal["sigmoid", "tanh"] = Field(
        "sigmoid",
        description="MNIST generator's output: improved-gan's sigmoid as 2 sigmoid(a) - 1 on [-1, 1], or tanh(a)",
    )


def build(options: SSGANOptions, image_shape: ImageShape, num_classes: int) -> Models:
    require_classes(options.name, num_classes)
    _, h, w = image_shape
    if (h, w) == (28, 28):
        return {
            "generator": SSGANMLPGenerator(
                options.latent_dim,
                image_shape,
                bn_scale=options.g_bn_scale,
                output=options.g_output,
                weight_init=options.weight_init,
            ),
            "discriminator": SSGANMLPDiscriminator(
                image_shape,
                num_classes,
                options.minibatch,
                input_noise=options.input_noise,
                train_hidden_scales=options.train_hidden_scales,
                weight_init=options.weight_init,
            ),
        }
    if h == w and h in (32, 64):
        generator: nn.Module
        if options.generator == "improved-gan":
            generator = SSGANConvGenerator(
                options.latent_dim, image_shape, options.g_features, bn_scale=options.g_bn_scale
            )
        else:
            generator = DCGANGenerator(options.latent_dim, image_shape, options.g_features)
        return {
            "generator": generator,
            "discriminator": SSGANConvDiscriminator(
                image_shape,
                num_classes,
                options.d_features,
                options.d_input_dropout,
                options.d_dropout,
                options.minibatch,
                train_hidden_scales=options.train_hidden_scales,
                weight_init=options.weight_init,
            ),
        }
    raise unsupported(options.name, image_shape, "square sides 28 (MLP nets), 32, 64")


def sample_latent(options: SSGANOptions, draws: Draws, num_classes: int) -> Latent:
    if options.latent == "uniform":
        return Latent(draws.uniform(options.latent_dim, 0.0, 1.0))
    return gaussian_latent(options, draws, num_classes)


def initialize(
    models: Models, data: TrainingData, options: SSGANOptions, cfg: TrainConfig, rng: torch.Generator
) -> None:
    """improved-gan's data-dependent init: D's weight-normed layers on 500 training images, G's output
    layer on a batch of its own samples (both in training mode, as there)."""
    if not options.data_init:
        return
    device = data.images.device
    picked = torch.randperm(len(data.images), generator=rng)[:INIT_IMAGES].to(device)
    generator, discriminator = models["generator"], models["discriminator"]
    generator.train()
    discriminator.train()
    z = sample_latent(options, Draws(cfg.batch_size, rng), 0).z.to(device)
    data_dependent_init(generator, z)
    with getattr(discriminator, "module", discriminator).whole_batches():
        data_dependent_init(discriminator, data.real(picked))


def discriminator_objective(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, options: SSGANOptions, cfg: TrainConfig
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
    # The unsupervised term scores the unlabelled batch, as improved-gan's `x_unl` (fully labelled
    # batches: all of it).
    logits_unl = _unlabeled(logits_real, labels)
    supervised, unsupervised = ssgan_discriminator_loss(
        logits_real, labels, logits_unl, logits_fake, cfg.label_smoothing
    )
    accuracy, _ = masked_accuracy(logits_real, labels)
    return terms(
        supervised + cfg.unlabeled_weight * unsupervised,
        supervised=supervised,
        unsupervised=unsupervised,
        accuracy=accuracy,
    )


def generator_objective(
    models: Models, real: Tensor, labels: Tensor, latent: Latent, options: SSGANOptions, cfg: TrainConfig
) -> Terms:
    fake = models["generator"](latent.z)
    logits_fake, fake_features = models["discriminator"](fake)
    if not cfg.feature_matching:
        loss = ssgan_generator_loss(logits_fake)
        return terms(loss, adversarial=loss)
    # The target is an unlabelled real batch (labels -1): with `independent` (improved-gan's
    # `trainx_unl2`) the loop hands this step its own batch, all unlabelled; with `unlabeled` it is
    # the D step's unlabelled part. `all` adds the labelled batch. Fully labelled batches match all.
    target = real if cfg.feature_matching_target == "all" else _unlabeled(real, labels)
    with torch.no_grad():
        _, real_features = models["discriminator"](target)
    loss = feature_matching_loss(real_features, fake_features, _distance(models, cfg))
    return terms(loss, feature_matching=loss)


def _unlabeled(x: Tensor, labels: Tensor) -> Tensor:
    """The rows of `x` whose label is hidden (-1); all of `x` when every row is labelled."""
    unlabeled = labels < 0
    return x[unlabeled] if bool(unlabeled.any()) else x


def _distance(models: Models, cfg: TrainConfig) -> str:
    """`train.feature_matching_distance`; auto: l2 on the MNIST MLP, l1 on the conv nets (improved-gan)."""
    if cfg.feature_matching_distance != "auto":
        return cfg.feature_matching_distance
    discriminator = getattr(models["discriminator"], "module", models["discriminator"])  # DDP
    return "l2" if isinstance(discriminator, SSGANMLPDiscriminator) else "l1"


def _independent_generator_batch(options: SSGANOptions, cfg: TrainConfig) -> bool:
    return cfg.feature_matching and cfg.feature_matching_target == "independent"


def classify(models: Models, images: Tensor) -> Tensor:
    logits, _ = models["discriminator"](images)
    return logits


FAMILY = Family(
    "ssgan",
    SSGANOptions,
    build,
    discriminator_objective,
    generator_objective,
    sample_latent=sample_latent,
    classifier=("discriminator",),
    classify=classify,
    needs_labeled_batch=True,
    initialize=initialize,
    independent_generator_batch=_independent_generator_batch,
)
