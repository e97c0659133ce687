"""File helpers every writer of the project shares: atomic writes, the cache root, progress callbacks.

`atomic_write` and `atomic_dir` give one guarantee everywhere: a reader sees the old content or the
new, never part of it; the new content is on disk (fsynced, with its directory) before it is visible;
and a failure leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

CACHE_ENV = "GANOPS_CACHE"

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called while long work runs, so a CLI can draw a bar."""


def cache_root() -> Path:
    """$GANOPS_CACHE, else ~/.cache/ganops; read at call time so tests and users can redirect it."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "ganops"))


def _temporary(path: Path) -> Path:
    # Hidden and unique per process: concurrent writers of one path never share a temporary name.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(directory: Path | str) -> list[Path]:
    """Delete the temporary files and directories that writers killed mid-write (SIGKILL, power loss)
    left in `directory`; a live process's are kept. Returns what was removed."""
    directory = Path(directory)
    removed = []
    for entry in directory.glob(".*.*-*") if directory.is_dir() else ():
        kind, _, pid = entry.name.rpartition("-")
        if not (kind.endswith((".tmp", ".old")) and pid.isdigit()) or _alive(int(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; on success fsync it and rename it onto `path`.

    Parent directories are created. `mode` is "wb" or "w" (text, UTF-8).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text(path: Path | str, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_with(path: Path | str, writer: Callable[[Path], Any]) -> Path:
    """Atomic write for libraries that want a file name: `writer(tmp)` writes, then it is renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """A temporary directory next to `path`, swapped into place of `path` on success (renames only).

    The caller writes the files (each fsynced: use `atomic_write` or fsync them); a failure removes the
    temporary directory and leaves `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
