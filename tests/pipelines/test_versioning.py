"""Real DVC in temporary git repos: prepare + version, push, fresh clone, pull, verify."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import GANOPS, run

SMALL = [
    "--set",
    "data.synthetic.train_size=600",
    "--set",
    "data.synthetic.test_size=100",
    "--set",
    "data.labels_per_class=5",
    "--set",
    "data.synthetic.workers=1",
]


def _prepare(repo: Path, *extra: str) -> str:
    out = run([*GANOPS, "data", "prepare", "--repo", str(repo), *SMALL, *extra], cwd=repo).stdout
    return out.strip().splitlines()[-1].removeprefix("data version: ")


def test_prepare_push_clone_pull_verify_round_trip(dvc_repo: Path, tmp_path: Path) -> None:
    version = _prepare(dvc_repo)
    assert version.endswith(".dir")
    dvc_file = yaml.safe_load((dvc_repo / "data.dvc").read_text())
    assert dvc_file["outs"][0]["md5"] == version and dvc_file["outs"][0]["path"] == "data"
    assert run([*GANOPS, "data", "version", "--repo", str(dvc_repo)], cwd=dvc_repo).stdout.strip() == version
    run(["git", "add", "data.dvc", ".gitignore"], dvc_repo)
    run(["git", "commit", "-qm", "data"], dvc_repo)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(dvc_repo), str(clone)], tmp_path)
    assert not (clone / "data").exists()
    out = run([*GANOPS, "data", "pull", "--repo", str(clone)], cwd=clone).stdout
    assert "synthetic-svhn: ok" in out and version in out
    original = dvc_repo / "data" / "synthetic-svhn"
    for f in sorted(original.iterdir()):
        assert (clone / "data" / "synthetic-svhn" / f.name).read_bytes() == f.read_bytes(), f.name


def test_same_params_same_version_and_new_seed_new_version(dvc_repo: Path) -> None:
    first = _prepare(dvc_repo)
    assert _prepare(dvc_repo) == first
    assert _prepare(dvc_repo, "--set", "data.synthetic.seed=1") != first


def test_verify_fails_naming_the_corrupted_file(dvc_repo: Path) -> None:
    _prepare(dvc_repo)
    labels = dvc_repo / "data" / "synthetic-svhn" / "test_labels.npy"
    array = np.load(labels)
    array[0] = (array[0] + 1) % 10
    np.save(labels, array)
    proc = run([*GANOPS, "data", "verify"], cwd=dvc_repo, check=False)
    assert proc.returncode == 1
    assert "synthetic-svhn: FAILED" in proc.stdout and "test_labels.npy: sha256 differs" in proc.stdout


def test_prepare_outside_a_dvc_project_fails_clearly(tmp_path: Path) -> None:
    proc = run([*GANOPS, "data", "prepare", "--repo", str(tmp_path), *SMALL], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "is not a DVC project (no .dvc/)" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "svnh"], "unknown dataset 'svnh'"),
        (
            ["--dataset", "mnist", "--source", "/nonexistent"],
            "source directory /nonexistent for dataset 'mnist' does not exist",
        ),
        (["--set", "data.labels_per_class=100"], "labels_per_class=100 is larger than class"),
    ],
)
def test_bad_input_fails_before_anything_is_written(dvc_repo: Path, args: list[str], message: str) -> None:
    proc = run(
        [*GANOPS, "data", "prepare", "--repo", str(dvc_repo), *SMALL, *args], cwd=dvc_repo, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (dvc_repo / "data").exists() or not any((dvc_repo / "data").iterdir())
    assert not (dvc_repo / "data.dvc").exists()


def test_cli_help_lists_the_commands() -> None:
    out = subprocess.run([*GANOPS, "--help"], capture_output=True, text=True, check=True).stdout
    assert "data" in out and "config" in out
    out = subprocess.run([*GANOPS, "data", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("prepare", "verify", "version", "pull"):
        assert cmd in out


def test_dry_run_prints_the_resolved_config(tmp_path: Path) -> None:
    out = subprocess.run(
        [*GANOPS, "data", "prepare", "--dry-run", "--set", "train.lr_g=2e-4"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    resolved = yaml.safe_load(out)
    assert (
        resolved["train"]["lr_g"] == pytest.approx(2e-4) and resolved["data"]["dataset"] == "synthetic-svhn"
    )
    assert not (tmp_path / "data").exists()


def _versioned_clone(dvc_repo: Path, tmp_path: Path, remote: str) -> Path:
    """A fresh clone of a repo whose data.dvc names pushed data, its DVC remote set to `remote`."""
    _prepare(dvc_repo)
    run(["git", "add", "data.dvc", ".gitignore"], dvc_repo)
    run(["git", "commit", "-qm", "data"], dvc_repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(dvc_repo), str(clone)], tmp_path)
    run([*GANOPS_DVC, "remote", "add", "--local", "--force", "--default", "ganops", remote], clone)
    return clone


GANOPS_DVC = [__import__("sys").executable, "-m", "dvc"]


def test_missing_data_that_data_dvc_versions_says_to_pull_it(dvc_repo: Path, tmp_path: Path) -> None:
    clone = _versioned_clone(dvc_repo, tmp_path, str(tmp_path / "unused"))
    proc = run([*GANOPS, "train", "--no-ray", *SMALL], cwd=clone, check=False)
    assert proc.returncode == 2 and "`ganops data pull`" in proc.stderr and "Traceback" not in proc.stderr


def test_an_unreachable_remote_fails_clearly_instead_of_preparing_other_bytes(
    dvc_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gan_models.config import load_config
    from pipelines import versioning

    clone = _versioned_clone(dvc_repo, tmp_path, "http://127.0.0.1:9/dvc")  # port 9 refuses
    monkeypatch.delenv("GANOPS_DVC_REMOTE")  # the clone's remote, not the test's
    monkeypatch.setattr(versioning, "PULL_DELAYS", (0.1,))
    recorded = (clone / "data.dvc").read_text()
    cfg = load_config(None, [s for s in SMALL if s != "--set"])
    with pytest.raises(
        versioning.RemoteUnreachableError, match=r"unreachable or refused access \(.*(Connect|refused)"
    ):
        versioning.ensure_data(cfg, clone)
    assert (clone / "data.dvc").read_text() == recorded and not (clone / "data").exists()


@pytest.mark.slow  # prepares and versions the data twice
def test_a_remote_without_the_data_falls_back_to_preparing_it(
    dvc_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gan_models.config import load_config
    from pipelines import versioning

    empty = tmp_path / "empty-remote"
    empty.mkdir()
    clone = _versioned_clone(dvc_repo, tmp_path, str(empty))
    monkeypatch.setenv("GANOPS_DVC_REMOTE", str(empty))
    cfg = load_config(None, [s for s in SMALL if s != "--set"])
    dataset, version = versioning.ensure_data(cfg, clone)
    assert version == versioning.data_version(clone) and (dataset.path / "manifest.json").exists()
