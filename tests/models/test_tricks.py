"""Training tricks against hand-computed values: EMA, historical averaging, MBD, clipping, freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_models.tricks import (
    EMA,
    HistoricalAveraging,
    MinibatchDiscrimination,
    clip_gradients,
    set_requires_grad,
)


def linear(weight: list[float], bias: float) -> nn.Linear:
    layer = nn.Linear(len(weight), 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.fill_(bias)
    return layer


def test_ema_update_by_hand() -> None:
    model = linear([1.0, 2.0], 0.5)
    ema = EMA(model, decay=0.75)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, -2.0]]))
        model.bias.fill_(1.5)
    ema.update(model)
    # 0.75 * old + 0.25 * new, all exact in binary floating point.
    assert ema.shadow["weight"].tolist() == [[1.5, 1.0]]
    assert ema.shadow["bias"].tolist() == [0.75]
    ema.update(model)
    assert ema.shadow["weight"].tolist() == [[1.875, 0.25]]  # 0.75 * (1.5, 1) + 0.25 * (3, -2)


def test_ema_is_bit_reproducible_and_matches_the_formula() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    shadows = []
    for _ in range(2):
        copy = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        copy.load_state_dict(model.state_dict())
        ema = EMA(copy, decay=0.999)
        expected = {k: v.clone() for k, v in copy.state_dict().items()}
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            copy(torch.randn(8, 4, generator=gen))  # moves BN running stats and its counter
            with torch.no_grad():
                for p in copy.parameters():
                    p.add_(torch.randn(p.shape, generator=gen))
            ema.update(copy)
            for k, v in copy.state_dict().items():
                expected[k] = 0.999 * expected[k] + 0.001 * v if v.is_floating_point() else v.clone()
        for k in expected:
            assert torch.allclose(ema.shadow[k], expected[k], rtol=1e-6, atol=1e-7), k
        assert ema.shadow["1.num_batches_tracked"].item() == 5  # integer buffers are copied
        shadows.append(ema.state_dict()["shadow"])
    assert all(torch.equal(shadows[0][k], shadows[1][k]) for k in shadows[0])


def test_ema_copy_to_and_state_dict_round_trip() -> None:
    model = linear([1.0, 2.0], 0.5)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.mul_(3)
    ema.update(model)
    restored = EMA(linear([0.0, 0.0], 0.0), decay=0.1)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.5
    target = linear([9.0, 9.0], 9.0)
    restored.copy_to(target)
    assert target.weight.tolist() == [[2.0, 4.0]] and target.bias.item() == 0.5
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)


def test_historical_averaging_penalty_and_average_by_hand() -> None:
    model = linear([1.0, 2.0], 0.0)
    ha = HistoricalAveraging(model, weight=0.5)
    assert ha.penalty(model).item() == 0.0  # the history holds only the current parameters
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 2.0]]))
        model.bias.fill_(-1.0)
    # 0.5 * ((3 - 1)^2 + (2 - 2)^2 + (-1 - 0)^2) = 2.5
    penalty = ha.penalty(model)
    assert penalty.item() == pytest.approx(2.5)
    penalty.backward()
    assert model.weight.grad.tolist() == [[2.0, 0.0]]  # 2 * weight * (theta - mean)
    assert model.bias.grad.tolist() == [-1.0]

    ha.update(model)  # mean of (1, 2, 0) and (3, 2, -1)
    assert ha.average["weight"].tolist() == [[2.0, 2.0]] and ha.average["bias"].tolist() == [-0.5]
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[5.0, 5.0]]))
    ha.update(model)  # mean over three steps
    assert ha.average["weight"].tolist() == [[3.0, 3.0]] and ha.count == 3

    restored = HistoricalAveraging(linear([0.0, 0.0], 0.0), weight=1.0)
    restored.load_state_dict(ha.state_dict())
    assert restored.count == 3 and restored.weight == 0.5
    assert restored.average["weight"].tolist() == [[3.0, 3.0]]


def test_minibatch_discrimination_shape_and_closeness() -> None:
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(in_features=6, num_kernels=4, kernel_dim=3)
    x = torch.randn(5, 6)
    out = layer(x)
    assert out.shape == (5, 6 + 4) and layer.out_features == 10
    assert torch.equal(out[:, :6], x)  # the input passes through

    identical = layer(x[:1].expand(5, 6))[:, 6:]
    distinct = layer(10 * torch.randn(5, 6))[:, 6:]
    # Each of 5 identical samples sees 4 others at distance 0: closeness exactly 4 for every kernel.
    assert torch.equal(identical, torch.full((5, 4), 4.0))
    assert (distinct < identical).all() and (distinct >= 0).all()


def test_minibatch_discrimination_closeness_by_hand() -> None:
    layer = MinibatchDiscrimination(in_features=1, num_kernels=1, kernel_dim=1)
    with torch.no_grad():
        layer.T.fill_(1.0)
    out = layer(torch.tensor([[0.0], [1.0], [3.0]]))[:, 1]
    e = torch.exp
    expected = torch.stack(
        [
            e(-torch.tensor(1.0)) + e(-torch.tensor(3.0)),
            e(-torch.tensor(1.0)) + e(-torch.tensor(2.0)),
            e(-torch.tensor(3.0)) + e(-torch.tensor(2.0)),
        ]
    )
    assert torch.allclose(out, expected)


def test_clip_gradients() -> None:
    model = linear([1.0, 1.0], 0.0)
    model.weight.grad = torch.tensor([[3.0, 0.0]])
    model.bias.grad = torch.tensor([4.0])
    assert clip_gradients(model.parameters(), None) is None
    assert model.bias.grad.item() == 4.0  # untouched without a limit
    norm = clip_gradients(model.parameters(), 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert model.weight.grad[0, 0].item() == pytest.approx(0.6, rel=1e-5)
    assert model.bias.grad.item() == pytest.approx(0.8, rel=1e-5)


def test_set_requires_grad() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    set_requires_grad([a, b], False)
    assert not any(p.requires_grad for p in [*a.parameters(), *b.parameters()])
    set_requires_grad([b], True)
    assert all(p.requires_grad for p in b.parameters()) and not a.weight.requires_grad


def test_ema_warmup_follows_the_weights_early_then_uses_the_decay() -> None:
    model = linear([0.0, 0.0], 0.0)
    ema = EMA(model, decay=0.999, warmup=True)
    with torch.no_grad():
        model.weight.fill_(10.0)
    ema.update(model)  # decay min(0.999, 1/10) = 0.1: 0.1 * 0 + 0.9 * 10
    assert ema.shadow["weight"].tolist() == [[9.0, 9.0]]
    for _ in range(10_000):
        ema.update(model)
    assert ema.updates == 10_001
    assert min(ema.decay, (1 + ema.updates) / (10 + ema.updates)) == 0.999
