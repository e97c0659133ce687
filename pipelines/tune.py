"""Sweeps on Ray Tune: many trainings on one Ray instance, the trailing ones stopped early by ASHA.

`run_sweep` checks every config of the search space before Ray starts (each grid value, and both
ends of each random range), then runs one Tune trial per config. A trial is a small driver (`_trial`)
that launches the TorchTrainer `ganops train` launches (`ray_train.torch_trainer`) under the run name
`run_name_for` gives, so a trial is an ordinary training run: tracked by rank 0 as a child of the
sweep's MLflow run, published at the end, resumable by name. The Train workers request their own
resources and the driver almost none, so Tune caps the trials at once (`sweep.max_concurrent`, by
default what the cluster's CPUs hold). ASHA reads each trial's validation score (`train.eval_every`)
and stops one that trails its rung; its MLflow run ends KILLED, tagged with why, its checkpoints kept.
Tune's experiment state lives in `ray.storage_path/<sweep name>`: the same sweep run again resumes
there, without re-running finished trials.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gan_models.config import Config, load_config
from gan_models.errors import ConfigError
from gan_models.nets import family
from gan_models.training.loop import check_trainable
from gan_models.training.validation import ACCURACY, FD
from pipelines.quiet import environ, quiet
from pipelines.ray_train import (
    STOPPED_EARLY,
    ClusterError,
    absolute_paths,
    check_resources,
    finished_epochs,
    ray_session,
    torch_trainer,
    wants_gpu,
)
from pipelines.tracking import (
    EXTRA_KEY,
    TrackingTarget,
    end_sweep_run,
    find_run,
    mark_failed,
    mark_stopped,
    start_sweep_run,
)
from pipelines.train import Preflight, preflight, run_name_for

# What an axis may change: how a model trains. Data, tracking and evaluation are the sweep's, shared.
SWEEPABLE = ("seed", "model.", "train.", "ray.num_workers", "ray.cpus_per_worker")
_RANDOM = re.compile(r"(uniform|loguniform)\(([^,()]+),([^,()]+)\)")


@dataclass(frozen=True)
class Axis:
    """One `-p` option: a grid (`key=a,b,c`) or a random range (`key=uniform(a,b)`, `loguniform`)."""

    key: str
    values: tuple[Any, ...] = ()
    distribution: str | None = None
    low: float = 0.0
    high: float = 0.0

    def domain(self) -> Any:
        """Tune's search domain."""
        from ray import tune

        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        return tune.grid_search(list(self.values))

    def extremes(self) -> tuple[Any, ...]:
        """The values that must all be valid configs: every grid value, both ends of a range."""
        return self.values or (self.low, self.high)

    def describe(self) -> str:
        if self.distribution:
            return f"{self.key}={self.distribution}({self.low:g},{self.high:g})"
        return f"{self.key}={','.join(json.dumps(v) for v in self.values)}"


def parse_axis(text: str) -> Axis:
    """`train.lr_g=1e-4,3e-4` (grid) or `train.lr_g=loguniform(1e-4,1e-3)`; a `ConfigError` otherwise."""
    key, sep, spec = (part.strip() for part in text.partition("="))
    if not sep or not key or not spec:
        raise ConfigError(f"--param {text!r}: expected KEY=V1,V2,... or KEY=uniform(LOW,HIGH) / loguniform")
    if not (key in SWEEPABLE or key.startswith(tuple(p for p in SWEEPABLE if p.endswith(".")))):
        raise ConfigError(
            f"--param {key}: a sweep varies {', '.join(SWEEPABLE)}* only; data, tracking and evaluation "
            "are shared by its trials (set them with --set)"
        )
    if key == "train.output_dir":
        raise ConfigError("--param train.output_dir: the sweep's trials share one output directory")
    random = _RANDOM.fullmatch(spec.replace(" ", ""))
    if random:
        name, low, high = random.group(1), *(_value(v) for v in random.group(2, 3))
        if not all(isinstance(v, int | float) for v in (low, high)) or not low < high:
            raise ConfigError(f"--param {text!r}: {name}(LOW,HIGH) needs numbers with LOW < HIGH")
        if name == "loguniform" and low <= 0:
            raise ConfigError(f"--param {text!r}: loguniform needs LOW > 0")
        return Axis(key, distribution=name, low=float(low), high=float(high))
    if "(" in spec:
        raise ConfigError(f"--param {text!r}: unknown distribution; use uniform(LOW,HIGH) or loguniform")
    return Axis(key, values=tuple(_value(v) for v in spec.split(",")))


def _value(text: str) -> Any:
    """A value read as YAML, and `1e-4` as the number it is (YAML 1.1 reads it as a string)."""
    import yaml

    value = yaml.safe_load(text.strip())
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def axis_overrides(values: dict[str, Any]) -> list[str]:
    """A trial's axis values as `--set` overrides, in the order given."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


@dataclass(frozen=True)
class Trial:
    """What one trial of a sweep did."""

    overrides: list[str]
    run_name: str
    run_id: str | None  # its MLflow run (None with tracking off)
    status: str  # "finished", "stopped" (by ASHA) or "failed"
    epochs: int  # epochs it trained
    score: float | None  # its last validation score (`metric`)
    error: str | None = None


@dataclass(frozen=True)
class SweepResult:
    name: str
    metric: str
    parent_run_id: str | None
    trials: list[Trial]

    def finished(self) -> list[Trial]:
        return [t for t in self.trials if t.status == "finished"]


def sweep_metric(cfg: Config, labelled: bool) -> tuple[str, str]:
    """The validation score ASHA compares and its mode: accuracy if the family classifies, else FD."""
    metric = cfg.sweep.metric
    if metric == "auto":
        metric = ACCURACY if family(cfg.model).has_classifier else FD
    if metric == ACCURACY and not family(cfg.model).has_classifier:
        raise ConfigError(f"sweep.metric={ACCURACY}: model {cfg.model.name!r} has no classifier")
    if metric == FD and not labelled:
        raise ConfigError(
            f"sweep.metric={FD} needs class labels (the domain classifier's features); this dataset "
            "has none: use sweep.scheduler=none"
        )
    return metric, "max" if metric == ACCURACY else "min"


def sweep_name(cfg: Config, axes: list[Axis]) -> str:
    """The same base config and search space give the same name, so a rerun resumes the sweep."""
    blob = json.dumps({"config": cfg.to_dict(), "axes": [a.describe() for a in axes]}, sort_keys=True)
    return f"sweep-{cfg.data.dataset}-{cfg.model.name}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def check_space(
    config_path: Path | None, overrides: list[str], axes: list[Axis], dataset: Any
) -> list[Config]:
    """Every config at the space's extremes, loaded and checked against the data (before Ray starts)."""
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--param: a key is given twice: {', '.join(keys)}")
    configs = []
    for values in itertools.product(*(a.extremes() for a in axes)):
        cfg = load_config(config_path, overrides + axis_overrides(dict(zip(keys, values, strict=True))))
        check_trainable(cfg, dataset, cfg.ray.num_workers)
        configs.append(cfg)
    return configs


def run_sweep(
    config_path: Path | None, overrides: list[str], axes: list[Axis], project: Path | None = None
) -> SweepResult:
    """Run the sweep of `axes` over the config at `config_path` + `overrides` on Ray Tune (resuming it
    if it ran before) and return what each trial did."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    # Validate everything before Ray starts.
    project = (project or Path.cwd()).resolve()
    if not axes:
        raise ConfigError("ganops sweep needs at least one --param axis")
    base = absolute_paths(load_config(config_path, overrides), project)
    dataset, checks = preflight(base, project)
    configs = check_space(config_path, overrides, axes, dataset)
    if base.sweep.samples > 1 and not any(a.distribution for a in axes):
        raise ConfigError(
            f"sweep.samples={base.sweep.samples} repeats the same grid configs (one run each): give a "
            "random axis, or sweep the seed (-p seed=0,1,2)"
        )
    asha = base.sweep.scheduler == "asha"
    metric, mode = sweep_metric(base, dataset.num_classes >= 2) if asha else (ACCURACY, "max")
    if asha and not all(c.train.eval_every for c in configs):
        raise ConfigError("sweep.scheduler=asha compares validation scores: set train.eval_every (e.g. 1)")
    name = sweep_name(base, axes)
    manifest = checks.tags.get("data_manifest_sha256") or _manifest(dataset)

    with ray_session(base) as available:
        use_gpu = wants_gpu(base, available.get("GPU", 0))
        for cfg in configs:
            check_resources(cfg, use_gpu, available, f"the Ray cluster ({base.ray.address or 'local'})")
        concurrent = base.sweep.max_concurrent or _fits(configs, use_gpu, available)
        parent = start_sweep_run(checks.target, name, checks.tags, [a.describe() for a in axes])
        spec = {
            "config_path": str(config_path) if config_path is not None else None,
            "overrides": overrides,
            "project": str(project),
            "manifest": manifest,
            "tracking": asdict(checks.target) if checks.target else None,
            "tags": checks.tags | ({"mlflow.parentRunId": parent, "ganops.sweep": name} if parent else {}),
            "use_gpu": use_gpu,
            "metric": metric,
        }
        # The trial's driver only waits on its TorchTrainer: no CPU (even 0.01 CPU would keep a trial whose
        # workers need every CPU of the cluster from ever being placed), and Tune refuses an empty
        # request, so one byte of memory, which every node has.
        trainable = tune.with_resources(tune.with_parameters(_trial, spec=spec), TRIAL_DRIVER)
        path = f"{base.ray.storage_path.rstrip('/')}/{name}"
        print(f"sweep {name}: {len(configs)} configs at the extremes checked; {concurrent} trials at once")
        if tune.Tuner.can_restore(path):
            print(f"sweep {name}: resuming from {path} (finished trials are not re-run)")
            tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
        else:
            epochs = max(c.train.epochs for c in configs)
            scheduler = (
                ASHAScheduler(
                    time_attr="epoch",
                    max_t=epochs,
                    grace_period=min(base.sweep.grace_period, epochs),
                    reduction_factor=base.sweep.reduction_factor,
                    stop_last_trials=False,  # a trial at its last epoch must still publish its models
                )
                if asha
                else FIFOScheduler()
            )
            tuner = tune.Tuner(
                trainable,
                param_space={"axes": {a.key: a.domain() for a in axes}},
                tune_config=tune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    scheduler=scheduler,
                    search_alg=BasicVariantGenerator(random_state=base.seed, max_concurrent=concurrent),
                    num_samples=base.sweep.samples,
                    trial_dirname_creator=lambda trial: trial.trial_id,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=base.ray.storage_path,
                    verbose=0,  # our own lines (`_TrialLines`) and each rank 0's epoch lines instead
                    callbacks=[_trial_lines(metric, trial_count(axes, base.sweep.samples))],
                ),
            )
        # Tune's new output engine prints its experiment box and paths whatever `verbose` says; the
        # legacy one honours verbose=0. And Tune's "Wrote the latest version of all result files".
        with environ(RAY_AIR_NEW_OUTPUT="0"), quiet("ray.tune", level=logging.WARNING):
            grid = tuner.fit()

    trials = [_outcome(result, spec, base.ray.storage_path, checks.target, metric) for result in grid]
    return SweepResult(name, metric, parent, trials)


def _manifest(dataset: Any) -> str:
    from gan_models.data.prepared import MANIFEST, sha256_file

    return sha256_file(Path(dataset.path) / MANIFEST)


def _fits(configs: list[Config], use_gpu: bool, available: dict[str, float]) -> int:
    """How many of the largest trial the cluster holds at once (at least one)."""
    cpus = max(c.ray.num_workers * c.ray.cpus_per_worker for c in configs)
    fits = math.floor(available.get("CPU", 0) / cpus + 1e-9)
    if use_gpu:
        fits = min(fits, math.floor(available.get("GPU", 0) / max(c.ray.num_workers for c in configs)))
    return max(1, fits)


def trial_config(spec: dict[str, Any], values: dict[str, Any]) -> tuple[Config, str]:
    """A trial's resolved config (absolute paths) and run name, from the sweep's spec and its values."""
    project = Path(spec["project"])
    path = Path(spec["config_path"]) if spec["config_path"] else None
    cfg = load_config(path, spec["overrides"] + axis_overrides(values))
    cfg = absolute_paths(cfg, project)
    return cfg, run_name_for(cfg, spec["manifest"])


def _trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """One Tune trial: the training run of the base config with this trial's axis values."""
    from ray import tune
    from ray.train import Result, TrainingFailedError

    cfg, name = trial_config(spec, config["axes"])
    target = TrackingTarget(**spec["tracking"]) if spec["tracking"] else None
    if finished_epochs(cfg.ray.storage_path, name, cfg.train.epochs) >= cfg.train.epochs:
        # Trained before (by `ganops train`, a retrain or an earlier sweep): its last score stands.
        tune.report(dict(Result.from_path(f"{cfg.ray.storage_path}/{name}").metrics or {}))
        return
    trainer = torch_trainer(
        cfg,
        name,
        Preflight(target, spec["tags"]),
        spec["use_gpu"],
        callbacks=[_scored_reports(spec["metric"])],
    )
    try:
        trainer.fit()
    except TrainingFailedError as e:
        if target is not None:
            mark_failed(target, name, e)
        raise ClusterError(f"Ray Train run {name} failed: {e}") from e


def _scored_reports(metric: str) -> Any:
    """Ray Train's reports passed on to Tune, the validated epochs only (ASHA compares their scores)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ScoredReports(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return ScoredReports()


TRIAL_DRIVER = {"CPU": 0, "memory": 1}


def trial_count(axes: list[Axis], samples: int) -> int:
    """How many trials Tune runs: every grid combination, `samples` times (random axes draw anew each)."""
    return math.prod(len(a.values) for a in axes if not a.distribution) * samples


def _trial_lines(metric: str, total: int) -> Any:
    """A Tune callback printing one line when a trial starts, is scored, stops or fails."""
    from ray.tune import Callback

    class TrialLines(Callback):
        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            print(f"[sweep] {_label(trial)}: started", flush=True)

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
        ) -> None:
            if metric in result:
                done = sum(t.status == "TERMINATED" for t in trials)
                print(
                    f"[sweep] {_label(trial)}: epoch {result.get('epoch')} {metric} {result[metric]:.4g} "
                    f"({done}/{total} trials done)",
                    flush=True,
                )

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            print(f"[sweep] {_label(trial)}: ended after epoch {trial.last_result.get('epoch')}", flush=True)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            print(f"[sweep] {_label(trial)}: failed (see its log above)", flush=True)

    return TrialLines()


def _label(trial: Any) -> str:
    return " ".join(axis_overrides(trial.config.get("axes", {}))) or trial.trial_id


def _outcome(
    result: Any, spec: dict[str, Any], storage_path: str, target: TrackingTarget | None, metric: str
) -> Trial:
    """One trial's outcome, read from Ray Train's own record of its run; a trial ASHA stopped ends its
    MLflow run KILLED (it was not a failure), tagged with why."""
    values = result.config["axes"]
    cfg, name = trial_config(spec, values)
    metrics = result.metrics or {}
    epochs = finished_epochs(storage_path, name)
    run_id = metrics.get(EXTRA_KEY) or (find_run(target, name) if target else None)
    score = metrics.get(metric)
    if result.error is not None:
        return Trial(axis_overrides(values), name, run_id, "failed", epochs, score, str(result.error)[:500])
    if epochs >= cfg.train.epochs or metrics.get(STOPPED_EARLY):
        return Trial(axis_overrides(values), name, run_id, "finished", epochs, score)
    if target is not None:
        mark_stopped(
            target, name, f"ASHA stopped it at epoch {epochs}: {metric} {score:.4g} trailed its rung"
        )
    return Trial(axis_overrides(values), name, run_id, "stopped", epochs, score)


def summary_table(result: SweepResult, metrics: dict[str, dict[str, float]] | None = None) -> str:
    """The trials as a markdown table (with their evaluation metrics where given, by run id)."""
    metrics = metrics or {}
    rows = [
        f"| config | run | status | epochs | {result.metric} | evaluation |",
        "|---|---|---|---:|---:|---|",
    ]
    for t in result.trials:
        evaluation = ", ".join(
            f"{k}={v:.4g}" for k, v in sorted(metrics.get(t.run_id or "", {}).items()) if "_class_" not in k
        )
        score = f"{t.score:.4g}" if t.score is not None else ""
        rows.append(
            f"| {' '.join(t.overrides)} | `{t.run_id}` | {t.status} | {t.epochs} | {score} | {evaluation} |"
        )
    return "\n".join(rows)


def finish_sweep(target: TrackingTarget | None, result: SweepResult, table: str, best: str | None) -> None:
    """End the sweep's MLflow run with the trials' table and the best run."""
    if target is not None and result.parent_run_id is not None:
        end_sweep_run(target, result.parent_run_id, table, best)
