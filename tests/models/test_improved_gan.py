"""Fidelity to improved-gan: the data-dependent init, fixed hidden scales, and the feature-matching forms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gan_models.config import load_config
from gan_models.losses import feature_matching_loss
from gan_models.nets import build_models, family
from gan_models.nets.layers import data_dependent_init, is_fixed, trainable
from gan_models.training.batches import DeviceData, iterate_batches
from gan_models.training.loop import TrainHooks, train
from gan_models.tricks import sigmoid_rampup
from tests.training.conftest import tiny_config, tiny_dataset


def _weight_normed(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if hasattr(m, "wn_init_scale")]


def _pre_activations(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each weight-normed layer's output (before its nonlinearity) on `x`, in forward order."""
    seen: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(out.clone())) for m in _weight_normed(module)
    ]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_data_dependent_init_normalises_each_layers_pre_activations(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    cfg = load_config(None, ["model.d_features=8", "model.d_input_dropout=0", "model.d_dropout=0"])
    d = build_models(cfg.model, shape, 10)["discriminator"]
    if shape[1] == 28:  # the MLP: its noise layers would blur the check
        for m in d.modules():
            if hasattr(m, "std"):
                m.std = 0.0
    x = torch.rand(200, *shape) * 2 - 1
    with d.whole_batches():  # the conv D splits CPU batches over 128; init needs the whole batch
        before = _pre_activations(d, x)
        data_dependent_init(d, x)
        after = _pre_activations(d, x)
    for layer, out_before, out in zip(_weight_normed(d), before, after, strict=True):
        axes = [i for i in range(out.dim()) if i != 1]
        mean, std = out.mean(axes), out.std(axes, unbiased=False)
        assert mean.abs().max() < 1e-4
        assert torch.allclose(std, torch.full_like(std, layer.wn_init_scale), rtol=1e-3)
        assert not torch.allclose(out_before.std(axes), std, rtol=0.05)  # it was not so before


def test_data_dependent_init_refuses_a_batch_split_in_chunks() -> None:
    d = build_models(load_config(None, ["model.d_features=8"]).model, (3, 32, 32), 10)["discriminator"]
    with pytest.raises(RuntimeError, match="ran twice"):
        data_dependent_init(d, torch.randn(200, 3, 32, 32))  # chunks of 128 on the CPU


def test_hidden_scales_stay_fixed_in_a_step_and_the_output_scale_trains() -> None:
    torch.manual_seed(0)
    cfg = load_config(None, ["model.d_features=8"])
    d = build_models(cfg.model, (3, 32, 32), 10)["discriminator"]
    scales = {n: p for n, p in d.named_parameters() if n.endswith("original0")}
    fixed = {n for n, p in scales.items() if is_fixed(p)}
    assert fixed and len(fixed) == len(scales) - 1  # every hidden layer's, not the head's
    assert all(p.requires_grad is False for n, p in scales.items() if n in fixed)
    before = {n: p.detach().clone() for n, p in scales.items()}
    opt = torch.optim.Adam(trainable(d), lr=0.1)
    logits, _ = d(torch.randn(8, 3, 32, 32))
    logits.logsumexp(1).mean().backward()
    opt.step()
    for n, p in scales.items():
        assert torch.equal(p, before[n]) == (n in fixed), n
    with_trained = build_models(
        load_config(None, ["model.d_features=8", "model.train_hidden_scales=true"]).model, (3, 32, 32), 10
    )["discriminator"]
    assert not any(is_fixed(p) for p in with_trained.parameters())


@pytest.mark.parametrize(("shape", "std"), [((1, 28, 28), 0.1), ((3, 32, 32), 0.05)])
def test_discriminator_starts_from_improved_gans_weights(shape: tuple[int, int, int], std: float) -> None:
    """improved-gan's MNIST `DenseLayer` draws N(0, 0.1), its SVHN script N(0, 0.05); biases start at 0.
    Under weight norm the draw's size sets each layer's step size, so He's init is an option, not this."""
    torch.manual_seed(0)
    nets = {
        init: build_models(load_config(None, [f"model.weight_init={init}"]).model, shape, 10)["discriminator"]
        for init in ("improved-gan", "he")
    }
    for init, d in nets.items():
        for layer in _weight_normed(d):
            v = layer.parametrizations.weight.original1
            if init == "improved-gan":
                assert abs(v.std().item() - std) < 0.1 * std
                assert torch.count_nonzero(layer.bias) == 0
            elif layer is not d.head:  # He: std sqrt(2 / fan_in) in the hidden layers
                fan_in = v[0].numel()
                assert abs(v.std().item() - (2 / fan_in) ** 0.5) < 0.2 * (2 / fan_in) ** 0.5


def test_mnist_generator_starts_from_glorot_weights() -> None:
    """Lasagne's DenseLayer default (improved-gan's MNIST G): Glorot uniform, bias 0."""
    torch.manual_seed(0)
    g = build_models(load_config(None, []).model, (1, 28, 28), 10)["generator"]
    for layer in [m for m in g.modules() if isinstance(m, nn.Linear)]:
        w = getattr(layer, "parametrizations", None)
        w = w.weight.original1 if w is not None else layer.weight
        fan_out, fan_in = w.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert layer.bias is None or torch.count_nonzero(layer.bias) == 0


def test_generator_batch_norm_has_no_learned_scale_by_default() -> None:
    g = build_models(load_config(None, ["model.g_features=8"]).model, (3, 32, 32), 10)["generator"]
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(is_fixed(bn.weight) and not is_fixed(bn.bias) for bn in bns)
    assert torch.all(g(torch.rand(4, 100)).abs() <= 1)


def test_mnist_generator_sigmoid_output_is_improved_gans_sigmoid_on_minus_one_to_one() -> None:
    """improved-gan's MNIST G ends in sigmoid on [0, 1] pixels; here 2 sigmoid(a) - 1 on [-1, 1] pixels."""
    torch.manual_seed(0)
    nets = {
        out: build_models(load_config(None, [f"model.g_output={out}"]).model, (1, 28, 28), 10)["generator"]
        for out in ("sigmoid", "tanh")
    }
    nets["tanh"].load_state_dict(nets["sigmoid"].state_dict())
    z = torch.rand(8, 100)
    with torch.no_grad():
        a = nets["sigmoid"].net[:-2](z)  # the output layer's pre-activations (before act, unflatten)
        assert torch.allclose(nets["sigmoid"](z).flatten(1), 2 * torch.sigmoid(a) - 1, atol=1e-6)
        assert torch.allclose(nets["tanh"](z).flatten(1), torch.tanh(a), atol=1e-6)


def test_feature_matching_l1_and_l2() -> None:
    real = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0)
    fake = torch.tensor([[0.0, 1.0], [0.0, 3.0]])  # mean (0, 2)
    assert feature_matching_loss(real, fake, "l1").item() == pytest.approx(2.0)
    assert feature_matching_loss(real, fake, "l2").item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="l1"):
        feature_matching_loss(real, fake, "l3")


def test_generator_step_gets_an_independent_unlabelled_batch(tmp_path: Path) -> None:
    dataset = tiny_dataset(tmp_path / "d", shape=(32, 32, 3), n=200)
    data = DeviceData.load(dataset, torch.device("cpu"))
    batches = list(iterate_batches(data, 20, 0, 0, 0, 1, True, generator_batch=True))
    assert len(batches) == 10
    d_unlabeled = torch.cat([b.real[20:] for b in batches])
    g_real = torch.cat([b.for_generator()[0] for b in batches])
    assert all((b.for_generator()[1] == -1).all() for b in batches)
    # The same examples (one epoch of the shard each) in another order: an independent batch per step.
    as_set = lambda t: sorted(map(tuple, t.flatten(1)[:, :64].tolist()))  # noqa: E731
    assert as_set(d_unlabeled) == as_set(g_real)
    assert not torch.equal(d_unlabeled, g_real)
    same = list(iterate_batches(data, 20, 0, 0, 0, 1, True))
    assert all(b.generator_real is None and b.for_generator()[0] is b.real for b in same)


def test_the_independent_batch_changes_the_generators_target_and_learning(tmp_path: Path) -> None:
    dataset = tiny_dataset(tmp_path / "d", shape=(32, 32, 3), n=200)
    spec = family("ssgan")
    runs = {}
    for target in ("independent", "unlabeled"):
        cfg = tiny_config("train.epochs=1", f"train.feature_matching_target={target}")
        assert spec.independent_generator_batch(cfg.model, cfg.train) == (target == "independent")
        result = train(cfg, dataset, out_dir=tmp_path / target)
        runs[target] = result.models["generator"].state_dict()
    assert any(not torch.equal(runs["independent"][k], runs["unlabeled"][k]) for k in runs["unlabeled"])


def test_init_runs_once_gives_the_same_weights_everywhere_and_resume_does_not_redo_it(tmp_path: Path) -> None:
    dataset = tiny_dataset(tmp_path / "d", shape=(32, 32, 3), n=200)
    cfg = tiny_config("train.epochs=1")
    a = train(cfg, dataset, out_dir=tmp_path / "a", world_size=1)
    # Another rank initialises to the same weights: the init pass draws only from the seed.
    spec = family(cfg.model)
    inits = []
    for _ in range(2):
        torch.manual_seed(cfg.seed)
        models = build_models(cfg.model, dataset.image_shape, dataset.num_classes)
        data = DeviceData.load(dataset, torch.device("cpu"))
        torch.manual_seed(cfg.seed)
        spec.initialize(models, data, cfg.model, cfg.train, torch.Generator().manual_seed(cfg.seed))
        inits.append(models["discriminator"].state_dict())
    assert all(torch.equal(inits[0][k], inits[1][k]) for k in inits[0])
    # Without the init the weights differ, so the init is really applied.
    torch.manual_seed(cfg.seed)
    plain = build_models(cfg.model, dataset.image_shape, dataset.num_classes)["discriminator"].state_dict()
    assert any(not torch.equal(plain[k], inits[0][k]) for k in plain)
    # 1 epoch + resume + 1 epoch equals 2 epochs: a resumed run does not initialise again.
    full = train(tiny_config("train.epochs=2"), dataset, out_dir=tmp_path / "full")
    resumed = train(tiny_config("train.epochs=2"), dataset, out_dir=tmp_path / "a", resume=a.checkpoint)
    for name in ("generator", "discriminator"):
        sd_full, sd_resumed = full.models[name].state_dict(), resumed.models[name].state_dict()
        assert all(torch.equal(sd_full[k], sd_resumed[k]) for k in sd_full), name


def test_stackedgan_encoder_is_pretrained_on_the_labelled_pool(tmp_path: Path) -> None:
    dataset = tiny_dataset(tmp_path / "d", n=200)  # 2 labels per class
    data = DeviceData.load(dataset, torch.device("cpu"))
    spec = family("stackedgan")

    def pool_accuracy(steps: int) -> float:
        cfg = tiny_config("model.name=stackedgan", f"model.encoder_pretrain_steps={steps}")
        torch.manual_seed(0)
        models = build_models(cfg.model, dataset.image_shape, dataset.num_classes)
        spec.initialize(models, data, cfg.model, cfg.train, torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = spec.classify({k: m.eval() for k, m in models.items()}, data.real(data.labeled))
        return (logits.argmax(1) == data.labels[data.labeled]).float().mean().item()

    assert pool_accuracy(0) < 0.5  # untrained: near chance
    assert pool_accuracy(100) == 1.0  # the 20 labelled images, learned


def test_unsupervised_weight_ramps_up_per_step_and_resumes_on_the_ramp(tmp_path: Path) -> None:
    # 200 images, batch 20: 10 steps an epoch; a ramp over 15 steps spans the resume at step 10.
    dataset = tiny_dataset(tmp_path / "d", shape=(32, 32, 3), n=200)
    seen: dict[int, dict[str, float]] = {}

    def on_step(step: int, terms: dict[str, torch.Tensor]) -> None:
        seen[step - 1] = {k: float(v) for k, v in terms.items()}  # called after the step's count moved

    ramp = ("train.unlabeled_rampup=15", "train.unlabeled_weight=2")
    full = train(
        tiny_config("train.epochs=2", *ramp),
        dataset,
        out_dir=tmp_path / "f",
        hooks=TrainHooks(on_step=on_step),
    )
    for step, t in seen.items():
        weight = 2 * sigmoid_rampup(step, 15)
        assert t["d_loss"] == pytest.approx(t["d_supervised"] + weight * t["d_unsupervised"], rel=1e-5), step
    assert sigmoid_rampup(0, 15) < 0.01 and sigmoid_rampup(15, 15) == 1.0
    # Resumed at step 10, the ramp continues where it was: the same weights as the run without a break.
    first = train(tiny_config("train.epochs=1", *ramp), dataset, out_dir=tmp_path / "r")
    resumed = train(
        tiny_config("train.epochs=2", *ramp), dataset, out_dir=tmp_path / "r", resume=first.checkpoint
    )
    flat = train(tiny_config("train.epochs=2"), dataset, out_dir=tmp_path / "n")
    sd_full, sd_resumed, sd_flat = (r.models["discriminator"].state_dict() for r in (full, resumed, flat))
    assert all(torch.equal(sd_full[k], sd_resumed[k]) for k in sd_full)
    assert any(not torch.equal(sd_full[k], sd_flat[k]) for k in sd_full)  # the ramp changes training


def test_generator_dense_batch_norm_is_per_unit_so_no_fixed_pattern_survives() -> None:
    # improved-gan normalises each of the dense layer's 8g x 4 x 4 units over the batch: what reaches
    # the transposed convs varies with z everywhere. Per channel (the earlier form), each unit kept a
    # z-independent mean, and trained generators collapsed onto that fixed 4 x 4 pattern.
    cfg = load_config(None, ["model.g_features=8"])
    generator = build_models(cfg.model, (3, 32, 32), 10)["generator"].train()
    z = torch.rand(256, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        normed = generator.net[:2](z)  # dense, batch norm
    assert normed.shape == (256, 64 * 4 * 4)
    assert normed.mean(0).abs().max() < 1e-4
    assert normed.std(0).min() > 0.9
