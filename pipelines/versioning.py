"""DVC glue: version `data/` with `data.dvc`, push it to the remote, read the data version back, and
the policy that gives a run its data (`ensure_data`: restore with DVC, else prepare).

DVC is driven through its command line (its stable interface), in the project's own interpreter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gan_models.config import Config, DataConfig
from gan_models.data.prepare import content_params, prepare_dataset, prepared_path
from gan_models.data.prepared import MANIFEST, PreparedDataset, verify_prepared
from gan_models.errors import GanOpsError
from gan_models.io import write_text

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
        message = "\n".join(text.strip() for text in (proc.stderr, proc.stdout) if text.strip())
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {repo}:\n{message}")
    return proc.stdout


def configure_remote(repo: Path, url: str | None = None) -> None:
    """Point the default remote at `url` or $GANOPS_DVC_REMOTE (kept in the untracked config.local)."""
    url = url or os.environ.get(REMOTE_ENV)
    if url:
        run_dvc(repo, "remote", "add", "--local", "--force", "--default", REMOTE_NAME, url)


def remote_url(repo: Path) -> str | None:
    """The URL of the DVC remote that pulls and pushes use (the default one), if any; read only."""
    if url := os.environ.get(REMOTE_ENV):
        return url  # what `configure_remote` makes the default before every pull and push
    listed = run_dvc(repo, "remote", "list").splitlines()
    remotes = dict(line.split(None, 1) for line in listed if len(line.split(None, 1)) == 2)
    default = run_dvc(repo, "remote", "default").strip() if remotes else ""
    url = remotes.get(default) or next(iter(remotes.values()), None)
    return url.split()[0] if url else None


def checkout_data(repo: Path, dvc_file: str) -> str:
    """Make `data/` the bytes that `dvc_file` (the content of a `data.dvc`, as a run recorded it) names:
    write it as data.dvc, then pull. Refuses to overwrite a data.dvc with uncommitted changes."""
    path = Path(repo) / DVC_FILE
    try:
        md5 = yaml.safe_load(dvc_file)["outs"][0]["md5"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        raise VersioningError(
            "the recorded data.dvc has no outs[0].md5: it cannot name a data version"
        ) from None
    if path.exists() and path.read_text() != dvc_file:
        changed = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", DVC_FILE], capture_output=True, text=True
        ).stdout.strip()
        if changed:
            raise VersioningError(
                f"{path} has uncommitted changes (data version {data_version(repo)}): commit or discard "
                f"them first, so that checking out data version {md5} loses nothing"
            )
    write_text(path, dvc_file)
    return pull_data(repo)


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
    """`dvc add data` (and `dvc push`), returning the new data version; a version that differs from
    the one data.dvc held is announced to Prefect (`events.announce_data_version`)."""
    from pipelines.events import announce_data_version

    previous = data_version(repo) if (Path(repo) / DVC_FILE).is_file() else None
    configure_remote(repo)
    run_dvc(repo, "add", DATA_DIR)
    if push:
        try:
            run_dvc(repo, "push", DVC_FILE)
        except VersioningError as e:
            raise VersioningError(
                f"{repo / DVC_FILE} now records data version {data_version(repo)}, which no DVC remote holds: "
                f"the push failed ({str(e).splitlines()[-1][:300]}); push it with `dvc push {DVC_FILE}` "
                "once the remote is reachable, before committing data.dvc"
            ) from None
    version = data_version(repo)
    if version != previous:
        announce_data_version(repo, version, previous)
    return version


# What DVC's debug output says when the remote could not be reached or refused us; DVC itself then only
# reports missing files, as it does for a remote that simply does not hold them.
_UNREACHABLE = re.compile(
    r"Cannot connect to host|Connection refused|Connect call failed|\[Errno 111\]|Name or service not known|"
    r"timed out|TimeoutError|\b(?:401|403)\b|Unauthorized|Forbidden|AccessDenied|InvalidAccessKeyId|"
    r"SignatureDoesNotMatch|NoCredentialsError"
)
PULL_DELAYS = (2.0, 5.0)  # seconds before the second and third attempts at an unreachable remote


class RemoteUnreachableError(VersioningError):
    """The DVC remote could not be reached, or refused the credentials (not: it lacks the data)."""


def pull_data(repo: Path) -> str:
    """`dvc pull` the data that `data.dvc` names (the remote verifies hashes); returns its version.

    A remote that cannot be reached (network, credentials) is tried `len(PULL_DELAYS) + 1` times, then
    is a `RemoteUnreachableError`; a remote that does not hold the data is a plain `VersioningError`.
    """
    configure_remote(repo)
    for delay in (*PULL_DELAYS, None):
        try:
            run_dvc(repo, "pull", "-v", DVC_FILE)
            return data_version(repo)
        except VersioningError as e:
            reason = _UNREACHABLE.search(str(e))
            if reason is None:
                raise VersioningError(
                    f"`dvc pull {DVC_FILE}` in {repo}: the DVC remote does not hold data version "
                    f"{data_version(repo)} (was it pushed?)"
                ) from None
            if delay is None:
                raise RemoteUnreachableError(
                    f"`dvc pull {DVC_FILE}` in {repo}: the DVC remote is unreachable or refused access "
                    f"({_line_with(str(e), reason.group(0))}), {len(PULL_DELAYS) + 1} attempts; check the "
                    f"remote (${REMOTE_ENV}) and its credentials, then `ganops data pull`"
                ) from None
            time.sleep(delay)
    raise AssertionError("unreachable")


def _line_with(text: str, needle: str) -> str:
    return next((line.strip() for line in text.splitlines() if needle in line), needle)[:300]


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
        except RemoteUnreachableError:
            raise  # preparing anew could give other bytes and rewrite data.dvc: say so instead
        except VersioningError:
            pass  # the remote does not hold it (nothing pushed from a new machine): prepare below
    if not (path / MANIFEST).exists() or verify_prepared(path) or not _same_params(path, data):
        prepare_dataset(data)
    dataset = PreparedDataset.open(path)
    if path.resolve().is_relative_to((project / DATA_DIR).resolve()) and (project / ".dvc").is_dir():
        return dataset, version_data(project)
    return dataset, "unversioned"


def _same_params(path: Path, data: DataConfig) -> bool:
    return json.loads((path / MANIFEST).read_text()).get("params") == content_params(data)
