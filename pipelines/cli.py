"""`ganops`: the one command-line entry point."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gan_models.config import DEFAULT_PARAMS, Config, load_config
from gan_models.errors import GanOpsError

app = typer.Typer(
    help="GAN training pipeline: versioned data (DVC), training (Ray Train), tracking (MLflow), flows (Prefect).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare, version and verify datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="params file (missing default: embedded defaults)")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a config key, e.g. --set train.lr_g=2e-4")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the resolved config and exit")]


def _config(config: Path, overrides: list[str] | None, dry_run: bool) -> Config:
    cfg = load_config(config, overrides or [])
    if dry_run:
        typer.echo(cfg.to_yaml(), nl=False)
        raise typer.Exit(0)
    return cfg


@app.command("config")
def show_config(config: ConfigOpt = DEFAULT_PARAMS, overrides: SetOpt = None) -> None:
    """Print the resolved config (params file + overrides), validated."""
    _config(config, overrides, dry_run=True)


@data_app.command("prepare")
def data_prepare(
    dataset: Annotated[str | None, typer.Option(help="dataset name (default: data.dataset)")] = None,
    source: Annotated[Path | None, typer.Option(help="directory holding the source files")] = None,
    version: Annotated[bool, typer.Option(help="dvc add + dvc push data/ afterwards")] = True,
    repo: Annotated[Path, typer.Option(help="the DVC project")] = Path("."),
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Prepare a dataset into data/<name>/ and version it with DVC; prints the data version."""
    from gan_models.data.prepare import prepare_dataset
    from pipelines.progress import StageBars
    from pipelines.versioning import version_data

    extra = [f"data.dataset={dataset}"] if dataset else []
    extra += [f"data.source={source}"] if source else []
    cfg = _config(config, (overrides or []) + extra, dry_run)
    if not cfg.data.root.is_absolute():
        cfg.data.root = repo / cfg.data.root
    with StageBars() as bars:
        prepared = prepare_dataset(cfg.data, progress=bars)
    counts = ", ".join(f"{s} {info['count']:,}" for s, info in prepared.manifest["splits"].items())
    typer.echo(f"prepared {prepared.name} at {prepared.path}: {counts}")
    if version:
        typer.echo(f"data version: {version_data(repo)}")


@data_app.command("verify")
def data_verify(
    dataset: Annotated[
        list[str] | None, typer.Option(help="dataset(s) to check (default: all in data/)")
    ] = None,
    root: Annotated[Path, typer.Option(help="prepared data root")] = Path("data"),
) -> None:
    """Re-hash prepared files against their manifests; exit 1 naming every file that differs."""
    from gan_models.data.prepared import MANIFEST, verify_prepared

    names = dataset or sorted(p.parent.name for p in root.glob(f"*/{MANIFEST}"))
    if not names:
        raise GanOpsError(f"no prepared datasets under {root}/ (run `ganops data prepare`)")
    failed = False
    for name in names:
        problems = verify_prepared(root / name)
        failed |= bool(problems)
        typer.echo(f"{name}: " + ("ok" if not problems else "FAILED\n  " + "\n  ".join(problems)))
    if failed:
        raise typer.Exit(1)


@data_app.command("version")
def data_version_cmd(repo: Annotated[Path, typer.Option(help="the DVC project")] = Path(".")) -> None:
    """Print the current data version (the md5 that data.dvc records)."""
    from pipelines.versioning import data_version

    typer.echo(data_version(repo))


@data_app.command("pull")
def data_pull(repo: Annotated[Path, typer.Option(help="the DVC project")] = Path(".")) -> None:
    """Restore data/ from the DVC remote (hashes verified), then verify every manifest."""
    from pipelines.versioning import pull_data

    version = pull_data(repo)
    data_verify(dataset=None, root=repo / "data")
    typer.echo(f"data version: {version}")


@app.command("train")
def train_cmd(
    no_ray: Annotated[bool, typer.Option("--no-ray", help="run the training loop in this process")] = False,
    run_name: Annotated[
        str | None,
        typer.Option(
            help="run directory name under train.output_dir; "
            "an existing unfinished run of that name is resumed"
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="an existing Ray cluster (default: ray.address, $RAY_ADDRESS, else local)"),
    ] = None,
    config: ConfigOpt = DEFAULT_PARAMS,
    overrides: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Train the configured model on the prepared (and verified) dataset: Ray Train, or in this process."""
    extra = [f"ray.address={address}"] if address else []
    cfg = _config(config, (overrides or []) + extra, dry_run)
    if no_ray:
        from pipelines.train_local import train_local

        typer.echo(train_local(cfg, run_name))
    else:
        from pipelines.ray_train import launch

        typer.echo(launch(cfg, run_name))


def main() -> None:
    """Entry point: user errors print one clear message and exit 2, without a traceback."""
    try:
        app()
    except GanOpsError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
