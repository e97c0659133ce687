"""DVC glue: version `data/` with `data.dvc`, push it to the remote, read the data version back, and
the policy that gives a run its data (`ensure_data`: restore with DVC, else prepare).

DVC is driven through its command line (its stable interface), in the project's own interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from gan_models.config import Config, DataConfig
from gan_models.data.prepare import content_params, prepare_dataset, prepared_path
from gan_models.data.prepared import MANIFEST, PreparedDataset, verify_prepared
from gan_models.errors import GanOpsError

DATA_DIR = "data"
DVC_FILE = "data.dvc"
REMOTE_NAME = "storage"
REMOTE_ENV = "GANOPS_DVC_REMOTE"


class VersioningError(GanOpsError):
    """DVC could not version, push or pull the data."""


def run_dvc(repo: Path, *args: str) -> str:
    """Run `dvc ARGS` in `repo`; raise with DVC's own message when it fails."""
    if not (Path(repo) / ".dvc").is_dir():
        raise VersioningError(f"{Path(repo).resolve()} is not a DVC project (no .dvc/): run `dvc init` there")
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip()
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {repo}:\n{message}")
    return proc.stdout


def configure_remote(repo: Path, url: str | None = None) -> None:
    """Point the default remote at `url` or $GANOPS_DVC_REMOTE (kept in the untracked config.local)."""
    url = url or os.environ.get(REMOTE_ENV)
    if url:
        run_dvc(repo, "remote", "add", "--local", "--force", "--default", REMOTE_NAME, url)


def data_version(repo: Path) -> str:
    """The data version: the md5 of `data/` that `data.dvc` records."""
    path = Path(repo) / DVC_FILE
    if not path.is_file():
        raise VersioningError(f"{path}: missing; version the data first (`ganops data prepare`)")
    try:
        return yaml.safe_load(path.read_text())["outs"][0]["md5"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as e:
        raise VersioningError(f"{path}: no outs[0].md5 in it ({e})") from e


def version_data(repo: Path, push: bool = True) -> str:
    """`dvc add data` (and `dvc push`), returning the new data version."""
    configure_remote(repo)
    run_dvc(repo, "add", DATA_DIR)
    if push:
        run_dvc(repo, "push", DVC_FILE)
    return data_version(repo)


def pull_data(repo: Path) -> str:
    """`dvc pull` the data that `data.dvc` names (the remote verifies hashes); returns its version."""
    configure_remote(repo)
    run_dvc(repo, "pull", DVC_FILE)
    return data_version(repo)


def ensure_data(cfg: Config, project: Path) -> tuple[PreparedDataset, str]:
    """The verified prepared dataset for `cfg.data` (restored with DVC, or prepared), and its data version.

    Prepared data whose recorded parameters differ from `cfg.data` is prepared again; data under the
    project's `data/` is then versioned (`dvc add` + `dvc push`).
    """
    data = cfg.data.model_copy()
    data.root = project / data.root if not data.root.is_absolute() else data.root
    path = prepared_path(data)
    if not (path / MANIFEST).exists() and (project / DVC_FILE).exists():
        try:
            pull_data(project)  # a fresh clone: restore the exact bytes from the DVC remote
        except VersioningError:
            pass  # nothing pushed there yet (a new machine): prepare below
    if not (path / MANIFEST).exists() or verify_prepared(path) or not _same_params(path, data):
        prepare_dataset(data)
    dataset = PreparedDataset.open(path)
    if path.resolve().is_relative_to((project / DATA_DIR).resolve()) and (project / ".dvc").is_dir():
        return dataset, version_data(project)
    return dataset, "unversioned"


def _same_params(path: Path, data: DataConfig) -> bool:
    return json.loads((path / MANIFEST).read_text()).get("params") == content_params(data)
