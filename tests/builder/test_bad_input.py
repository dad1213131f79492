"""Bad builder input: one-line error naming the layer and entry, non-zero exit, nothing written."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_console
from tests.reference import Entry, whiteout, write_layer, write_tar

GOOD = [Entry("", "dir"), Entry("etc", "dir"), Entry("etc/hosts", "file", data=b"127.0.0.1 localhost\n" * 300)]


def _tar_bytes(entries: list[Entry]) -> bytes:
    raw = io.BytesIO()
    write_tar(raw, entries)
    return raw.getvalue()


def _raw_tar(members: list[tuple[tarfile.TarInfo, bytes]], pax_format: bool = True) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(
        fileobj=raw, mode="w", format=tarfile.PAX_FORMAT if pax_format else tarfile.GNU_FORMAT
    ) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _member(
    name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else b""


def _garbage_pax() -> bytes:
    """A PAX extended header whose records are not `LENGTH KEY=VALUE\\n`."""
    good = _raw_tar([_member("etc/passwd", b"root\n")])
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    body = b"this is not a pax record at all\n"
    info.size = len(body)
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    return header + body + bytes(-len(body) % 512) + good


def _corrupt_gzip() -> bytes:
    data = bytearray(gzip.compress(_tar_bytes([*GOOD, Entry("big", "file", data=os.urandom(20000))]), mtime=0))
    for offset in range(40, 60):
        data[offset] ^= 0x5A
    return bytes(data)


BAD_LAYERS: dict[str, tuple[Callable[[], bytes], str]] = {
    "truncated gzip": (
        lambda: gzip.compress(_tar_bytes([*GOOD, Entry("big", "file", data=os.urandom(20000))]))[:-3000],
        "",
    ),
    "corrupt gzip": (_corrupt_gzip, ""),
    "dot-dot path": (lambda: _raw_tar([_member("etc/../../escape")]), "etc/../../escape"),
    "absolute path": (lambda: _raw_tar([_member("/etc/shadow")]), "/etc/shadow"),
    "hard link to missing target": (
        lambda: _raw_tar([_member("etc/link", kind=tarfile.LNKTYPE, linkname="etc/nothing")]),
        "etc/link",
    ),
    "duplicate path": (lambda: _raw_tar([_member("etc/hosts", b"a"), _member("etc/hosts", b"b")]), "etc/hosts"),
    "garbage pax header": (_garbage_pax, ""),
    "whiteout of a missing path": (lambda: _tar_bytes([whiteout("usr/lib/nothing")]), ".wh.nothing"),
}


def _listing(*directories: Path) -> dict[str, list[str]]:
    return {str(directory): sorted(os.listdir(directory)) for directory in directories}


@pytest.mark.parametrize("case", sorted(BAD_LAYERS))
def test_bad_layer_fails_cleanly(case: str, tmp_path: Path) -> None:
    make, entry_name = BAD_LAYERS[case]
    layers = tmp_path / "layers"
    layers.mkdir()
    good = write_layer(str(layers / "base.tar.gz"), GOOD)
    bad = layers / "bad-layer.tar.gz"
    bad.write_bytes(make())
    out = tmp_path / "out"
    blob_dir = tmp_path / "blobs"
    out.mkdir()
    blob_dir.mkdir()
    (out / "unrelated").write_bytes(b"kept")
    before = _listing(out, blob_dir, layers)
    completed = run_console(
        "nydus-image", ["create", "-t", "targz", "-B", str(out / "image.boot"), "-D", str(blob_dir), good, str(bad)]
    )
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "bad-layer.tar.gz" in lines[0]
    assert entry_name in lines[0]
    assert "Traceback" not in completed.stderr
    assert _listing(out, blob_dir, layers) == before


@pytest.mark.parametrize("chunk_size", ["0x3000", "1000", "0x800", "0x2000000", "lots"])
def test_chunk_size_must_be_a_power_of_two_in_range(chunk_size: str, tmp_path: Path) -> None:
    layer = write_layer(str(tmp_path / "layer.tar"), GOOD, "none")
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    before = _listing(tmp_path, blob_dir)
    completed = run_console(
        "nydus-image",
        [
            "create",
            "-t",
            "targz",
            "--chunk-size",
            chunk_size,
            "-B",
            str(tmp_path / "b.boot"),
            "-D",
            str(blob_dir),
            layer,
        ],
    )
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert chunk_size in lines[0]
    assert _listing(tmp_path, blob_dir) == before


def test_blob_dir_is_not_left_behind_when_it_did_not_exist(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(_raw_tar([_member("/abs")]))
    completed = run_console(
        "nydus-image",
        ["create", "-t", "targz", "-B", str(tmp_path / "b.boot"), "-D", str(tmp_path / "new-blobs"), str(bad)],
    )
    assert completed.returncode != 0
    assert sorted(os.listdir(tmp_path)) == ["bad.tar"]
