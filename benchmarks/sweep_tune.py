"""Benchmark: a 4-config sweep, serially (one `ganops train` child process, so one Ray start, per config:
the loop `ganops sweep` ran before Ray Tune) against `pipelines.tune.run_sweep` (one Ray instance, 2 trials
at once, ASHA), in one run: wall time of each, their ratio, and the epochs each config trained.

The configs are the tiny SSGAN of tests/pipelines/test_tune.py (600 blob images, 200 for validation) at
four discriminator learning rates, two that learn and two that cannot, so ASHA has trials to stop; one
Ray Train worker per config, MLflow on (SQLite), 4 epochs. Target: Tune at most 0.6x the serial wall time.

    uv run python benchmarks/sweep_tune.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gan_models.training.loop import cpu_model  # noqa: E402
from pipelines.tune import parse_axis, run_sweep  # noqa: E402
from tests.pipelines.test_tune import prepared, sweep_overrides  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sweep_tune.jsonl"
RATES = ["3e-3", "2e-3", "1e-9", "1e-8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ganops-sweep-bench-") as tmp:
        root = Path(tmp)
        prepared(root / "data")
        row: dict = {"cpu": cpu_model(), "epochs": args.epochs, "configs": RATES}

        # Serial: the old loop, each config its own `ganops train` (its own Ray start, no early stopping).
        serial = root / "serial"
        base = sweep_overrides(serial, f"train.epochs={args.epochs}") + [f"data.root={root / 'data'}"]
        start = time.perf_counter()
        for rate in RATES:
            sets = [a for o in [*base, f"train.lr_d={rate}"] for a in ("--set", o)]
            subprocess.run(
                [sys.executable, "-m", "pipelines", "train", *sets],
                check=True,
                cwd=root,
                stdout=subprocess.DEVNULL,
            )
        row["serial_s"] = time.perf_counter() - start
        row["serial_epochs"] = [args.epochs] * len(RATES)

        # Tune: one Ray instance, 2 trials at once, ASHA from epoch 1.
        tuned = root / "tune"
        overrides = sweep_overrides(tuned, f"train.epochs={args.epochs}") + [f"data.root={root / 'data'}"]
        start = time.perf_counter()
        result = run_sweep(None, overrides, [parse_axis(f"train.lr_d={','.join(RATES)}")], root)
        row["tune_s"] = time.perf_counter() - start
        by_rate = {t.overrides[0].split("=")[1]: t for t in result.trials}
        row["tune_epochs"] = [by_rate[json.dumps(float(r))].epochs for r in RATES]
        row["tune_status"] = [by_rate[json.dumps(float(r))].status for r in RATES]
        row["ratio"] = row["tune_s"] / row["serial_s"]
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"CPU: {row['cpu']}")
    print(f"serial loop: {row['serial_s']:.0f} s, epochs {row['serial_epochs']}")
    print(f"Ray Tune + ASHA: {row['tune_s']:.0f} s, epochs {row['tune_epochs']} ({row['tune_status']})")
    print(f"ratio Tune / serial: {row['ratio']:.2f}x (target <= 0.6x)")


if __name__ == "__main__":
    main()
