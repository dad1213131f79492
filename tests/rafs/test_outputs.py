"""`atomic_file` and `atomic_directory`: an output appears whole, with an ordinary mode, or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rafs.outputs import atomic_directory, atomic_file, created_file_mode


def test_a_file_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_file(str(target)) as output:
        output.write(b"new")
        assert target.read_bytes() == b"old", "not replaced before the block ends"
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == created_file_mode()
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_failed_file_leaves_the_old_one_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(str(target)) as output:
        output.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_directory_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    target.mkdir()  # an empty directory is replaced
    with atomic_directory(str(target)) as building:
        (Path(building) / "file").write_bytes(b"x")
        assert os.listdir(target) == []
    assert os.listdir(target) == ["file"]
    assert sorted(os.listdir(tmp_path)) == ["tree"]


def test_a_failed_directory_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    with pytest.raises(RuntimeError), atomic_directory(str(target)) as building:
        (Path(building) / "file").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
