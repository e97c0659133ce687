"""The shared atomic writers: a reader sees the old content or the new, and failures leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from gan_models.io import atomic_dir, atomic_write, write_text, write_with


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = write_text(tmp_path / "sub" / "a.json", "old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_writer_that_wants_a_file_name_is_atomic_too(tmp_path: Path) -> None:
    path = tmp_path / "grid.png"

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_with(path, broken)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    write_with(path, lambda tmp: tmp.write_bytes(b"png"))
    assert path.read_bytes() == b"png"


def test_a_directory_is_swapped_in_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    with atomic_dir(target) as tmp:
        write_text(tmp / "x.npy", "1")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        write_text(tmp / "x.npy", "2")
        raise KeyboardInterrupt
    assert (target / "x.npy").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
