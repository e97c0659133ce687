"""Small building blocks shared by the model files: noise injection, minibatch discrimination, init."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

ImageShape = tuple[int, int, int]
# A layer's initial weights: ("normal", std), ("he", leaky-ReLU slope), ("glorot", 0) or None (PyTorch's).
WeightInit = tuple[Literal["normal", "he", "glorot"], float] | None


def image_numel(shape: ImageShape) -> int:
    """Number of values in one image of `shape` (C, H, W)."""
    return math.prod(shape)


def init_weights(layer: nn.Conv2d | nn.ConvTranspose2d | nn.Linear, init: WeightInit) -> None:
    """Set `layer`'s weight by `init` and zero its bias (a `WeightInit` of None: PyTorch's default).

    Under weight norm the weight's size is the step size's scale: Adam moves each entry by about the
    learning rate, so a direction of norm |v| turns by about lr * sqrt(fan_in) / |v| per step. The
    reference's N(0, std) weights make that lr / std in every layer; He's make it grow with fan-in.
    """
    if init is None:
        return
    kind, value = init
    if kind == "normal":
        nn.init.normal_(layer.weight, 0.0, value)
    elif kind == "he":
        nn.init.kaiming_normal_(layer.weight, a=value, nonlinearity="leaky_relu")
    else:
        nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def wn(
    layer: nn.Conv2d | nn.ConvTranspose2d | nn.Linear,
    init: WeightInit = None,
    *,
    init_scale: float | None = 1.0,
    train_scale: bool = True,
) -> nn.Module:
    """Weight-normalised `layer` (Salimans & Kingma 2016), as in the improved-gan networks.

    `init` sets the weight first (`init_weights`); its norm becomes the initial scale, which
    `data_dependent_init` then sets from a data batch so that the pre-activations have mean 0 and std
    `init_scale` per channel (`init_scale=None`: a layer that init leaves alone).
    `train_scale=False` keeps the scale where that init put it (improved-gan's hidden layers,
    `train_g=False`): only the direction and bias learn.
    """
    init_weights(layer, init)
    # ConvTranspose2d keeps its output channels in dim 1 of the weight.
    normed = weight_norm(layer, dim=1 if isinstance(layer, nn.ConvTranspose2d) else 0)
    # Along dim 1 the scale comes out with strides (1, 1, 1, 1); DDP's gradient buckets follow a
    # parameter's strides and autograd's gradients are dense, so give it dense strides.
    scale = normed.parametrizations.weight.original0
    scale.data = scale.data.clone(memory_format=torch.contiguous_format)
    if init_scale is not None:
        normed.wn_init_scale = init_scale  # type: ignore[assignment]
    if not train_scale:
        fix(normed.parametrizations.weight.original0)
    return normed


def fix(parameter: nn.Parameter) -> None:
    """Keep `parameter` out of training for good (`gan_models.tricks.set_requires_grad` skips it)."""
    parameter.requires_grad_(False)
    parameter.fixed = True  # type: ignore[attr-defined]


def is_fixed(parameter: nn.Parameter) -> bool:
    return bool(getattr(parameter, "fixed", False))


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of `module` an optimiser steps (every one not `fix`ed)."""
    return [p for p in module.parameters() if not is_fixed(p)]


@torch.no_grad()
def data_dependent_init(module: nn.Module, *inputs: Tensor) -> None:
    """improved-gan's init (`nn.py`, `init_updates`): one forward pass of `inputs` that, layer by layer,
    sets each weight-normed layer's scale g and bias b so its pre-activations on this batch have mean 0
    and std `wn_init_scale` per output channel; later layers see the normalised outputs of earlier ones.

    Runs in the module's current mode (improved-gan initialises with dropout and noise on).
    """

    done: set[nn.Module] = set()

    def normalise(layer: nn.Module, _: tuple[Tensor, ...], out: Tensor) -> Tensor:
        if layer in done:  # a second call would re-normalise on a part of the batch
            raise RuntimeError(f"data_dependent_init: {type(layer).__name__} ran twice in one forward pass")
        done.add(layer)
        axes = [d for d in range(out.dim()) if d != 1]
        shape = [1] * out.dim()
        shape[1] = -1
        bias = layer.bias if layer.bias is not None else torch.zeros(out.shape[1], device=out.device)
        pre = out - bias.view(shape)
        mean = pre.mean(axes)
        inv_std = layer.wn_init_scale / (pre - mean.view(shape)).square().mean(axes).add(1e-12).sqrt()
        g = layer.parametrizations.weight.original0
        g.mul_(inv_std.view(g.shape))
        if layer.bias is not None:
            layer.bias.copy_(-mean * inv_std)
        return (pre - mean.view(shape)) * inv_std.view(shape)

    handles = [m.register_forward_hook(normalise) for m in module.modules() if hasattr(m, "wn_init_scale")]
    try:
        module(*inputs)
    finally:
        for handle in handles:
            handle.remove()


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


class SymmetricSigmoid(nn.Module):
    """2 sigmoid(x) - 1: a sigmoid output layer for images in [-1, 1] instead of [0, 1]."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(0.5 * x)  # the same function, without sigmoid's cancellation near 1


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
