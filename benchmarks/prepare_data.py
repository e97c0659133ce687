"""Benchmark: wall time and peak memory of preparing datasets on this machine.

Each preparation runs in a fresh child process so its peak RSS is its own. The MNIST figure is also
given as a ratio against a reference measured in the same run: torchvision's MNIST reader loading the
same idx files into one uint8 tensor (what a training script without a prepare step would do).

    GANOPS_SOURCE_ROOT=../shared/datasets uv run python benchmarks/prepare_data.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    t0 = time.perf_counter()
    exec(sys.argv[1])
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "peak_rss_mb": rss_mb}))
    """
)


def measure(code: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare_code(root: Path, overrides: list[str]) -> str:
    return (
        "from gan_models.config import load_config\n"
        "from gan_models.data.prepare import prepare_dataset\n"
        f"cfg = load_config(None, {overrides!r} + ['data.root={root}'])\n"
        "prepare_dataset(cfg.data)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of synthetic-svhn (smoke run)")
    args = parser.parse_args()
    source_root = os.environ.get(
        "GANOPS_SOURCE_ROOT", str(Path(__file__).resolve().parents[2] / "shared/datasets")
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GANOPS_CACHE": str(Path(tmp) / "cache"), "GANOPS_SOURCE_ROOT": source_root}
        sizes = ["data.synthetic.train_size=7326", "data.synthetic.test_size=2603"] if args.quick else []
        results["synthetic-svhn"] = measure(prepare_code(Path(tmp) / "data", sizes), env)
        results["mnist"] = measure(prepare_code(Path(tmp) / "data", ["data.dataset=mnist"]), env)
        reference = (
            "from torchvision.datasets import MNIST\n"
            f"for train in (True, False): MNIST({source_root!r}, train=train).data.numpy()\n"
        )
        results["mnist (torchvision reader, reference)"] = measure(reference, env)
    print(f"{'dataset':40s} {'wall s':>8s} {'peak RSS MB':>12s}   target: < 60 s, < 2048 MB")
    for name, r in results.items():
        print(f"{name:40s} {r['wall_s']:8.1f} {r['peak_rss_mb']:12.0f}")
    ratio = results["mnist"]["wall_s"] / results["mnist (torchvision reader, reference)"]["wall_s"]
    print(f"mnist prepare / torchvision read: {ratio:.2f}x the time (prepare also hashes and writes)")


if __name__ == "__main__":
    main()
