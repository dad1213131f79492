"""`nydus-image create` refuses tar values the format or Linux cannot hold: one line naming the
layer and the entry, a non-zero exit, no traceback, no bootstrap written."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from rafs.errors import BuildError
from tests.conftest import run_console


def write_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> str:
    """A PAX tar holding the root and `member` (whose fields and pax_headers the test set)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        root = tarfile.TarInfo(".")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(root)
        archive.addfile(member, io.BytesIO(data) if member.isreg() else None)
    path.write_bytes(buffer.getvalue())
    return str(path)


def _file(name: str = "f", **pax: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size = 5
    member.pax_headers = pax
    return member


def refused(tmp_path: Path, member: tarfile.TarInfo, *needles: str) -> str:
    layer = write_tar(tmp_path / "layer.tar", member, b"hello" if member.isreg() else b"")
    bootstrap = tmp_path / "image.boot"
    completed = run_console(
        "nydus-image", ["create", "-t", "targz", "-B", str(bootstrap), "-D", str(tmp_path / "b"), layer]
    )
    assert completed.returncode == BuildError.exit_code, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    assert "layer layer.tar" in lines[0] and "entry" in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not bootstrap.exists()
    return lines[0]


@pytest.mark.parametrize(
    ("pax", "needle"),
    [
        ({"mtime": "inf"}, "mtime 'inf'"),
        ({"mtime": "-inf"}, "mtime '-inf'"),
        ({"mtime": "nan"}, "mtime 'nan'"),
        ({"mtime": "1e30"}, "mtime '1e30'"),
        ({"size": "-5"}, "size -5"),
        ({"uid": str(2**40)}, f"uid {2**40}"),
        ({"gid": str(2**32 - 1)}, f"gid {2**32 - 1}"),
        ({"uid": "-1"}, "uid -1"),
    ],
    ids=["mtime-inf", "mtime-minus-inf", "mtime-nan", "mtime-1e30", "size-negative", "uid-2^40", "gid-2^32-1", "uid-1"],
)
def test_out_of_range_pax_values(tmp_path: Path, pax: dict[str, str], needle: str) -> None:
    refused(tmp_path, _file(**pax), needle, "'f'")


def test_names_longer_than_linux_allows(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    refused(tmp_path / "a", _file("x" * 256), "component is 256 bytes")
    long_path = "/".join(["d" * 200] * 21)  # 4220 bytes, every component short enough
    (tmp_path / "b").mkdir()
    refused(tmp_path / "b", _file(long_path), "path is 4220 bytes")


def test_a_symlink_target_longer_than_path_max(tmp_path: Path) -> None:
    member = tarfile.TarInfo("link")
    member.type, member.linkname = tarfile.SYMTYPE, "t" * 4096
    refused(tmp_path, member, "link target is 4096 bytes")


@pytest.mark.parametrize(
    ("xattrs", "needle"),
    [
        ({"SCHILY.xattr.comment": "no namespace"}, "'comment' is not a name"),
        ({"SCHILY.xattr.user.": "empty name"}, "'user.' is not a name"),
        ({"SCHILY.xattr.": "nothing"}, "'' is not a name"),
        ({"SCHILY.xattr.user.big": "v" * 70_000}, "holds 70000 bytes"),
        ({"SCHILY.xattr.user." + "n" * 300: "long name"}, "305 bytes long"),
    ],
    ids=["no-namespace", "empty-after-namespace", "empty", "value-70kb", "name-305"],
)
def test_xattrs_no_filesystem_can_hold(tmp_path: Path, xattrs: dict[str, str], needle: str) -> None:
    refused(tmp_path, _file(**xattrs), needle)


@pytest.mark.parametrize(("major", "minor"), [(4096, 0), (0, 1 << 20), (0o7777777, 1)])
def test_device_numbers_beyond_the_kernels(tmp_path: Path, major: int, minor: int) -> None:
    member = tarfile.TarInfo("dev")
    member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, major, minor
    refused(tmp_path, member, f"device {major}:{minor}")


def test_values_at_the_limits_are_kept(tmp_path: Path) -> None:
    """The largest accepted values go through create and unpack unchanged."""
    name = "n" * 255
    member = _file(name, mtime="-1.5", uid=str(2**32 - 2))
    member.pax_headers = {**member.pax_headers, "SCHILY.xattr.user." + "x" * 250: "v" * 100}
    layer = write_tar(tmp_path / "layer.tar", member, b"hello")
    bootstrap, blobs, output = tmp_path / "image.boot", tmp_path / "b", tmp_path / "out"
    run_console("nydus-image", ["create", "-t", "targz", "-B", str(bootstrap), "-D", str(blobs), layer], check=True)
    run_console("nydus-image", ["unpack", "-B", str(bootstrap), "-D", str(blobs), "-o", str(output)], check=True)
    info = os.lstat(output / name)
    assert (info.st_uid, info.st_mtime_ns) == (2**32 - 2, -1_500_000_000)
    assert os.getxattr(output / name, "user." + "x" * 250) == b"v" * 100
