"""Small building blocks shared by the model files: noise injection, minibatch discrimination, init."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

ImageShape = tuple[int, int, int]


def image_numel(shape: ImageShape) -> int:
    """Number of values in one image of `shape` (C, H, W)."""
    return math.prod(shape)


def wn(layer: nn.Conv2d | nn.Linear, relu_slope: float | None = None) -> nn.Module:
    """Weight-normalised `layer` (Salimans & Kingma 2016), as in the improved-gan discriminators.

    With `relu_slope` (0 for ReLU) the direction is He-initialised first. improved-gan instead sets the
    scales from a data batch; either way activations keep their scale through deep stacks, where
    torch's default init shrinks them layer after layer.
    """
    if relu_slope is not None:
        nn.init.kaiming_normal_(layer.weight, a=relu_slope, nonlinearity="leaky_relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return weight_norm(layer)


def init_dcgan_weights(module: nn.Module) -> None:
    """Radford et al. init, for `Module.apply`: conv/linear weights N(0, 0.02), BN scales N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class GaussianNoise(nn.Module):
    """Adds N(0, std^2) noise in training mode only; the improved-gan MNIST discriminator's regulariser."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.std == 0:
            return x
        return x + self.std * torch.randn_like(x)


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016, section 3.2: append, per example, how close it is to the rest of the batch.

    With f the (n, A) input and T an (A, B, C) tensor, M_i = f_i T is a (B, C) matrix; kernel b gives
    o_b(x_i) = sum_{j != i} exp(-||M_i,b - M_j,b||_1). The output is [f, o], of width A + B. A collapsed
    generator produces near-identical samples, whose o is large, and the discriminator can see it.
    """

    def __init__(self, in_features: int, num_kernels: int, kernel_dim: int) -> None:
        super().__init__()
        self.num_kernels = num_kernels
        self.kernel_dim = kernel_dim
        # Small init as in improved-gan (Normal(0.05)): large T saturates exp(-d) to 0 for every pair.
        self.T = nn.Parameter(0.05 * torch.randn(in_features, num_kernels * kernel_dim))
        self.out_features = in_features + num_kernels

    def forward(self, x: Tensor) -> Tensor:
        m = (x @ self.T).view(-1, self.num_kernels, self.kernel_dim)  # (n, B, C)
        l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(3)  # (n, n, B)
        # The diagonal distance is exactly 0, so subtracting exp(0) = 1 removes the self-pair exactly.
        closeness = torch.exp(-l1).sum(1) - 1.0  # (n, B)
        return torch.cat([x, closeness], dim=1)
