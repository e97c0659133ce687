"""Shared fixtures: isolated caches and DVC remotes, the real datasets in ../shared, temporary DVC repos."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# As `ganops` does: Ray workers use this interpreter, not an environment Ray's uv hook rebuilds.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

PROJECT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GANOPS_SHARED_DATASETS", PROJECT.parent / "shared" / "datasets"))
GANOPS = [sys.executable, "-m", "pipelines"]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the user's caches or DVC remote, or reads their source root."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("GANOPS_CACHE", str(base / "cache"))
    monkeypatch.setenv("GANOPS_DVC_REMOTE", str(base / "dvc-remote"))
    monkeypatch.delenv("GANOPS_SOURCE_ROOT", raising=False)
    for key, value in {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real MNIST and CelebA copies next to the project (present here and in CI)."""
    if not (SHARED / "MNIST" / "raw").is_dir():
        pytest.skip(f"real datasets not found at {SHARED} (set GANOPS_SHARED_DATASETS)")
    return SHARED


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A fresh git + DVC project with this project's DVC config (remote from $GANOPS_DVC_REMOTE)."""
    repo = tmp_path / "project"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    shutil.copy(PROJECT / ".dvc" / "config", repo / ".dvc" / "config")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    return repo
