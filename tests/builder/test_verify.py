"""`check` detects every single altered byte of a bootstrap and every damaged chunk of a blob."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.build import BuildOptions
from builder.verify import check
from rafs.bootstrap import Bootstrap
from rafs.errors import NydusError
from rafs.mapped import open_bootstrap
from rafs.pathlist import whole_files
from tests.builder.common import build_layers, write_layers
from tests.conftest import run_console
from tests.reference import Entry


def sample_layers() -> list[list[Entry]]:
    """A small image with every kind of inode, xattrs, hard links, zero and repeated chunks."""
    capability = b"\x01\x00\x00\x02" + bytes(16)
    return [
        [
            Entry("", "dir", 0o755),
            Entry("etc", "dir", 0o755, xattrs=(("user.origin", b"base"),)),
            Entry("etc/passwd", "file", 0o644, data=b"root:x:0:0\n" * 500 + bytes(5000)),
            Entry("etc/passwd.bak", "hardlink", target="etc/passwd"),
            Entry("bin", "dir", 0o755),
            Entry("bin/sh", "symlink", 0o777, target="busybox"),
            Entry(
                "bin/busybox",
                "file",
                0o4755,
                data=bytes(range(256)) * 40,
                xattrs=(("security.capability", capability),),
            ),
            Entry("dev", "dir"),
            Entry("dev/null", "char", 0o666, rdev=os.makedev(1, 3)),
            Entry("dev/sda", "block", 0o660, rdev=os.makedev(8, 0)),
            Entry("run", "dir", 0o1777),
            Entry("run/fifo", "fifo", 0o600),
        ],
        [Entry("etc/.wh.passwd.bak", "file"), Entry("etc/motd", "file", data=b"hello\n" * 2000)],
    ]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    directory = str(tmp_path_factory.mktemp("image"))
    paths = write_layers(directory, sample_layers())
    options = BuildOptions(chunk_size=0x1000, prefetch_files=whole_files((b"etc/motd",)))
    bootstrap, blob_dir, _ = build_layers(directory, paths, options)
    check(open_bootstrap(bootstrap), blob_dir)
    return Path(bootstrap).read_bytes(), blob_dir


def _flipped(data: bytes, offset: int, mask: int) -> bytes:
    altered = bytearray(data)
    altered[offset] ^= mask
    return bytes(altered)


def _describe(data: bytes, offset: int) -> str:
    sb = Bootstrap(data).superblock
    sections = [
        ("superblock", 0),
        ("inodes", sb.inode_table_offset),
        ("dirents", sb.dirent_table_offset),
        ("chunks", sb.chunk_table_offset),
        ("blobs", sb.blob_table_offset),
        ("heap", sb.heap_offset),
    ]
    name, start = max(((n, s) for n, s in sections if s <= offset), key=lambda item: item[1])
    return f"{name}+{offset - start}"


def test_every_single_byte_flip_fails_check(image: tuple[bytes, str]) -> None:
    """Exhaustive: each byte, two masks; check (with blobs) must raise a NydusError for each."""
    data, blob_dir = image
    sb = Bootstrap(data).superblock
    missed = []
    for offset in range(len(data)):
        if sb.blob_table_offset <= offset < sb.heap_offset:
            continue  # blob and prefetch tables: not all of their fields can be verified
        for mask in (0x01, 0xFF):
            try:
                check(Bootstrap(_flipped(data, offset, mask)), blob_dir)
            except NydusError:
                continue
            missed.append(f"{_describe(data, offset)} ^ {mask:#x}")
    assert missed == []


@settings(max_examples=8)  # each example runs the console script; the exhaustive test is above
@given(offset=st.integers(0, 10**6), mask=st.integers(1, 255))
def test_cli_check_fails_on_a_flipped_byte(
    image: tuple[bytes, str], offset: int, mask: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data, blob_dir = image
    offset %= Bootstrap(data).superblock.blob_table_offset  # superblock, inode/dirent/chunk tables
    if offset % 3 == 0:
        offset = Bootstrap(data).superblock.heap_offset + offset % Bootstrap(data).superblock.heap_size
    path = tmp_path_factory.mktemp("flip") / "image.boot"
    path.write_bytes(_flipped(data, offset, mask))
    completed = run_console("nydus-image", ["check", "-B", str(path), "-D", blob_dir])
    assert completed.returncode != 0, _describe(data, offset)
    assert len(completed.stderr.strip().splitlines()) == 1
    assert "Traceback" not in completed.stderr


def _damaged_blob_copy(image: tuple[bytes, str], tmp_path: Path, damage: str) -> tuple[str, str, str]:
    data, blob_dir = image
    bootstrap_path = tmp_path / "image.boot"
    bootstrap_path.write_bytes(data)
    copy = tmp_path / "blobs"
    shutil.copytree(blob_dir, copy)
    blob_id = Bootstrap(data).blobs[0].blob_id
    blob_path = copy / blob_id
    content = bytearray(blob_path.read_bytes())
    if damage == "flip":
        content[len(content) // 2] ^= 0x10
    else:
        del content[len(content) - 7 :]
    blob_path.write_bytes(bytes(content))
    return str(bootstrap_path), str(copy), blob_id


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_check_names_file_and_chunk_of_a_damaged_blob(image: tuple[bytes, str], tmp_path: Path, damage: str) -> None:
    bootstrap_path, blob_dir, blob_id = _damaged_blob_copy(image, tmp_path, damage)
    completed = run_console("nydus-image", ["check", "-B", bootstrap_path, "-D", blob_dir])
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "chunk" in lines[0] and blob_id[:16] in lines[0]
    bootstrap = open_bootstrap(bootstrap_path)
    named = [os.fsdecode(path) for path, ino in bootstrap.walk() if bootstrap.inode(ino).is_reg]
    assert any(f"path {path}, " in lines[0] for path in named), lines[0]


def test_check_passes_on_the_intact_image(image: tuple[bytes, str], tmp_path: Path) -> None:
    data, blob_dir = image
    (tmp_path / "image.boot").write_bytes(data)
    completed = run_console("nydus-image", ["check", "-B", str(tmp_path / "image.boot"), "-D", blob_dir])
    assert completed.returncode == 0, completed.stderr
    assert Bootstrap(data).superblock.root_digest.hex() in completed.stdout
