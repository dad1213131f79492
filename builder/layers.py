"""Read image layers as a stream of entries: tar (plain, gzip, zstd), directories, OCI layouts.

Nothing is extracted to disk and no layer is held in memory: each regular file's data is
offered as a file object that the caller must consume before asking for the next entry. Every
path is normalised to a relative byte path and refused if it tries to leave the root.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import IO, cast

import zstandard

from rafs.errors import BuildError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

FILE, DIRECTORY, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO = (
    "file",
    "directory",
    "symlink",
    "hardlink",
    "char",
    "block",
    "fifo",
)
_TYPE_BITS = {
    FILE: stat.S_IFREG,
    DIRECTORY: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    CHAR: stat.S_IFCHR,
    BLOCK: stat.S_IFBLK,
    FIFO: stat.S_IFIFO,
}


@dataclass
class LayerEntry:
    """One entry of a layer, with its path relative to the root (b"" is the root itself)."""

    path: bytes
    kind: str
    permissions: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    rdev: int = 0
    link_target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    implicit: bool = False  # a directory without metadata of its own (from a layer bootstrap)

    @property
    def mode(self) -> int:
        """Full st_mode: type bits plus permissions (a hard link has no type of its own)."""
        return _TYPE_BITS.get(self.kind, 0) | (self.permissions & 0o7777)


# What a Linux filesystem (and the format) can hold; `check_entry` refuses anything beyond.
MAX_NAME_BYTES = 255  # NAME_MAX: one path component
MAX_PATH_BYTES = 4095  # PATH_MAX (4096) counts the terminating NUL
MAX_ID = 2**32 - 2  # uid/gid are u32; 2**32 - 1 is (uid_t)-1, "no change" to chown, which no file can have
MAX_FILE_SIZE = 2**64 - 1  # the inode's u64 size
MIN_MTIME_NS = -(2**63) * 1_000_000_000  # the inode's i64 seconds ...
MAX_MTIME_NS = (2**63 - 1) * 1_000_000_000 + 999_999_999  # ... and u32 nanoseconds below 1e9
MAX_DEVICE_MAJOR = (1 << 12) - 1  # the kernel keeps device numbers as 12-bit major, 20-bit minor
MAX_DEVICE_MINOR = (1 << 20) - 1
XATTR_NAMESPACES = (b"security.", b"system.", b"trusted.", b"user.")
MAX_XATTR_NAME_BYTES = 255  # XATTR_NAME_MAX
MAX_XATTR_VALUE_BYTES = 1 << 16  # XATTR_SIZE_MAX
MAX_XATTR_LIST_BYTES = 1 << 16  # XATTR_LIST_MAX: every name with its NUL, as listxattr returns them


def check_entry(entry: LayerEntry, layer: str, name: str) -> None:
    """Refuse (`BuildError` naming layer and entry) any value the format or Linux cannot hold.

    A value out of range would otherwise surface as a traceback deep in the writer, or be
    written into a bootstrap that `unpack` and the kernel then fail on with less useful errors."""

    def refuse(why: str) -> None:
        raise BuildError(why, layer=layer, entry=name)

    if b"\x00" in entry.path:
        refuse("the path contains a NUL byte")
    if len(entry.path) > MAX_PATH_BYTES:
        refuse(f"the path is {len(entry.path)} bytes long, more than {MAX_PATH_BYTES}")
    longest = max((len(part) for part in entry.path.split(b"/")), default=0)
    if longest > MAX_NAME_BYTES:
        refuse(f"a path component is {longest} bytes long, more than {MAX_NAME_BYTES}")
    for what, number in (("uid", entry.uid), ("gid", entry.gid)):
        if not 0 <= number <= MAX_ID:
            refuse(f"{what} {number} is outside 0..{MAX_ID}")
    if not 0 <= entry.size <= MAX_FILE_SIZE:
        refuse(f"size {entry.size} is outside 0..{MAX_FILE_SIZE}")
    if not MIN_MTIME_NS <= entry.mtime_ns <= MAX_MTIME_NS:
        refuse(f"mtime {entry.mtime_ns // 1_000_000_000} s is outside the signed 64-bit range of seconds")
    if entry.kind in (SYMLINK, HARDLINK):
        if b"\x00" in entry.link_target:
            refuse("the link target contains a NUL byte")
        if len(entry.link_target) > MAX_PATH_BYTES:
            refuse(f"the link target is {len(entry.link_target)} bytes long, more than {MAX_PATH_BYTES}")
    if entry.kind in (CHAR, BLOCK):
        check_device(os.major(entry.rdev), os.minor(entry.rdev), layer, name)
    list_bytes = 0
    for key, value in entry.xattrs.items():
        shown = key.decode("utf-8", "backslashreplace")
        if not key.startswith(XATTR_NAMESPACES) or key in XATTR_NAMESPACES or b"\x00" in key:
            refuse(f"xattr {shown!r} is not a name in the security., system., trusted. or user. namespace")
        if len(key) > MAX_XATTR_NAME_BYTES:
            refuse(f"xattr name {shown[:40]!r}... is {len(key)} bytes long, more than {MAX_XATTR_NAME_BYTES}")
        if len(value) > MAX_XATTR_VALUE_BYTES:
            refuse(f"xattr {shown!r} holds {len(value)} bytes, more than {MAX_XATTR_VALUE_BYTES}")
        list_bytes += len(key) + 1
    if list_bytes > MAX_XATTR_LIST_BYTES:
        refuse(f"the xattr names take {list_bytes} bytes, more than {MAX_XATTR_LIST_BYTES}")


def check_device(major: int, minor: int, layer: str, name: str) -> None:
    """Device numbers the kernel can keep (checked before `os.makedev`, which overflows otherwise)."""
    if not (0 <= major <= MAX_DEVICE_MAJOR and 0 <= minor <= MAX_DEVICE_MINOR):
        raise BuildError(
            f"device {major}:{minor} is outside 0..{MAX_DEVICE_MAJOR}:0..{MAX_DEVICE_MINOR}", layer=layer, entry=name
        )


def normalize_path(raw: bytes, layer: str, what: str = "path") -> bytes:
    """`raw` as a clean relative path; `BuildError` if absolute or if it has a `..` component."""
    if raw.startswith(b"/"):
        raise BuildError(f"absolute {what} escapes the root", layer=layer, entry=_show(raw))
    parts = []
    for part in raw.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            raise BuildError(f"{what} with '..' escapes the root", layer=layer, entry=_show(raw))
        parts.append(part)
    return b"/".join(parts)


def _show(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


class HashingReader:
    """Wraps a binary stream and hashes every byte read through it (layer digest checks)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.sha256.update(data)
        self.bytes_read += len(data)
        return data

    def drain(self) -> None:
        """Read to the end, so the digest covers trailing bytes after the tar's end marker."""
        while self.read(1 << 20):
            pass


def open_decompressed(stream: IO[bytes], magic: bytes) -> IO[bytes]:
    """A reader of the uncompressed tar bytes, chosen by the stream's first bytes."""
    if magic.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if magic.startswith(ZSTD_MAGIC):
        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
        return reader
    return stream


def iter_tar_layer(path: str, layer: str | None = None) -> Iterator[tuple[LayerEntry, IO[bytes] | None]]:
    """Entries of a tar layer file (plain, gzip or zstd). Data streams must be read in order."""
    name = layer or os.path.basename(path)
    with open(path, "rb") as raw:
        yield from iter_tar_stream(raw, name)


_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError, OSError, ValueError)
_PAX_RECORD = re.compile(rb"([1-9][0-9]*) ")


def check_pax_records(data: bytes) -> None:
    """Raise `tarfile.ReadError` unless `data` is a sequence of `LENGTH KEY=VALUE\n` records.

    Python's tarfile stops parsing at the first malformed record and ignores the rest, so
    garbage in a PAX header would silently drop metadata (names, sizes, xattrs)."""
    position = 0
    while position < len(data):
        match = _PAX_RECORD.match(data, position)
        if match is None:
            raise tarfile.ReadError(f"malformed pax record at byte {position}")
        end = position + int(match.group(1))
        record = data[match.end() : end]
        if end > len(data) or not record.endswith(b"\n") or b"=" not in record or record.startswith(b"="):
            raise tarfile.ReadError(f"malformed pax record at byte {position}")
        position = end


class _StrictTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses malformed PAX headers instead of skipping what follows the damage."""

    def _proc_pax(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        fileobj = tarfile.fileobj
        size = self.size
        read = fileobj.read

        def read_and_check(length: int) -> bytes:
            del fileobj.read  # only the header's own records are checked
            data: bytes = read(length)
            check_pax_records(data[:size])
            return data

        fileobj.read = read_and_check  # type: ignore[method-assign]
        try:
            return super()._proc_pax(tarfile)  # type: ignore[misc,no-any-return]
        finally:
            fileobj.__dict__.pop("read", None)


class _MemberData:
    """A member's data stream whose decoding errors become a `BuildError` naming the entry."""

    def __init__(self, data: IO[bytes], layer: str, entry: str) -> None:
        self.data = data
        self.layer = layer
        self.entry = entry

    def read(self, size: int = -1) -> bytes:
        try:
            return self.data.read(size)
        except _STREAM_ERRORS as error:
            raise BuildError(f"unreadable file data: {error}", layer=self.layer, entry=self.entry) from None


def iter_tar_stream(raw: IO[bytes], layer: str) -> Iterator[tuple[LayerEntry, IO[bytes] | None]]:
    """Entries of a tar stream; wraps every decoding failure into one `BuildError`."""
    magic = raw.read(4)
    stream = _Prefixed(magic, raw)
    current = ""
    try:
        with tarfile.open(
            fileobj=open_decompressed(cast(IO[bytes], stream), magic),
            mode="r|",
            encoding="utf-8",
            errors="surrogateescape",
            tarinfo=_StrictTarInfo,
        ) as archive:
            for member in archive:
                current = member.name
                entry = _entry_from_member(member, layer)
                extracted = archive.extractfile(member) if entry.kind == FILE else None
                data = _MemberData(extracted, layer, member.name) if extracted is not None else None
                yield entry, data  # type: ignore[misc]
                if data is not None:
                    # The consumer should have read everything; make sure the tar stays aligned.
                    while data.read(1 << 20):
                        pass
    except BuildError:
        raise
    except _STREAM_ERRORS as error:
        where = f" after entry {current!r}" if current else " at its start"
        raise BuildError(f"unreadable tar stream{where}: {error}", layer=layer) from None


class _Prefixed:
    """A stream with a few already-read bytes put back in front (for magic sniffing)."""

    def __init__(self, prefix: bytes, stream: IO[bytes]) -> None:
        self.prefix = prefix
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        if self.prefix:
            if size < 0:
                data, self.prefix = self.prefix + self.stream.read(), b""
                return data
            data, self.prefix = self.prefix[:size], self.prefix[size:]
            if len(data) < size:
                data += self.stream.read(size - len(data))
            return data
        return self.stream.read(size)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """The entry's mtime in nanoseconds (PAX's exact decimal if present); `ValueError` saying why not."""
    exact = member.pax_headers.get("mtime")
    if exact is None:
        return int(member.mtime) * 1_000_000_000
    try:
        value = Decimal(exact)
    except InvalidOperation:
        raise ValueError(f"invalid pax mtime {exact!r}") from None
    if not value.is_finite():
        raise ValueError(f"pax mtime {exact!r} is not a finite number")
    if not -(2**63) <= value < 2**63:  # 1e30: refused before it is multiplied out
        raise ValueError(f"pax mtime {exact!r} is outside the signed 64-bit range of seconds")
    return int(value * 1_000_000_000)


def _entry_from_member(member: tarfile.TarInfo, layer: str) -> LayerEntry:
    path = normalize_path(member.name.encode("utf-8", "surrogateescape"), layer)
    xattrs = {
        key[len("SCHILY.xattr.") :].encode("utf-8", "surrogateescape"): value.encode("utf-8", "surrogateescape")
        for key, value in member.pax_headers.items()
        if key.startswith("SCHILY.xattr.")
    }
    try:
        mtime_ns = _mtime_ns(member)
    except ValueError as error:
        raise BuildError(str(error), layer=layer, entry=member.name) from None
    entry = LayerEntry(
        path=path,
        kind=FILE,
        permissions=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        mtime_ns=mtime_ns,
        xattrs=xattrs,
    )
    if member.isreg():
        entry.size = member.size
    elif member.isdir():
        entry.kind = DIRECTORY
    elif member.issym():
        entry.kind = SYMLINK
        entry.link_target = member.linkname.encode("utf-8", "surrogateescape")
        if not entry.link_target:
            raise BuildError("symlink with an empty target", layer=layer, entry=member.name)
    elif member.islnk():
        entry.kind = HARDLINK
        entry.link_target = normalize_path(
            member.linkname.encode("utf-8", "surrogateescape"), layer, "hard link target"
        )
    elif member.ischr() or member.isblk():
        entry.kind = CHAR if member.ischr() else BLOCK
        check_device(member.devmajor, member.devminor, layer, member.name)
        entry.rdev = os.makedev(member.devmajor, member.devminor)
    elif member.isfifo():
        entry.kind = FIFO
    else:
        raise BuildError(f"unsupported tar entry type {member.type!r}", layer=layer, entry=member.name)
    if not path and entry.kind != DIRECTORY:
        raise BuildError("the root must be a directory", layer=layer, entry=member.name)
    check_entry(entry, layer, member.name)
    return entry


def iter_directory(root: str, layer: str | None = None) -> Iterator[tuple[LayerEntry, IO[bytes] | None]]:
    """Entries of a directory tree, sorted by name; hard links found by (device, inode); each checked."""
    name = layer or root
    for entry, data in _iter_directory(root, name):
        check_entry(entry, name, _show(entry.path))
        yield entry, data


def _iter_directory(root: str, name: str) -> Iterator[tuple[LayerEntry, IO[bytes] | None]]:
    seen_inodes: dict[tuple[int, int], bytes] = {}
    stack: list[bytes] = [b""]
    root_bytes = os.fsencode(root)
    while stack:
        relative = stack.pop()
        full = os.path.join(root_bytes, relative) if relative else root_bytes
        info = os.lstat(full)
        entry = LayerEntry(
            path=relative,
            kind=FILE,
            permissions=stat.S_IMODE(info.st_mode),
            uid=info.st_uid,
            gid=info.st_gid,
            mtime_ns=info.st_mtime_ns,
            xattrs=_read_xattrs(full),
        )
        if stat.S_ISDIR(info.st_mode):
            entry.kind = DIRECTORY
            yield entry, None
            children = sorted(os.listdir(full))
            for child in reversed(children):
                stack.append(os.path.join(relative, child) if relative else child)
            continue
        key = (info.st_dev, info.st_ino)
        if not stat.S_ISDIR(info.st_mode) and info.st_nlink > 1 and key in seen_inodes:
            entry.kind = HARDLINK
            entry.link_target = seen_inodes[key]
            yield entry, None
            continue
        if info.st_nlink > 1:
            seen_inodes[key] = relative
        if stat.S_ISREG(info.st_mode):
            entry.size = info.st_size
            with open(full, "rb") as data:
                yield entry, data
        elif stat.S_ISLNK(info.st_mode):
            entry.kind = SYMLINK
            entry.link_target = os.readlink(full)
            yield entry, None
        elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            entry.kind = CHAR if stat.S_ISCHR(info.st_mode) else BLOCK
            entry.rdev = info.st_rdev
            yield entry, None
        elif stat.S_ISFIFO(info.st_mode):
            entry.kind = FIFO
            yield entry, None
        else:
            raise BuildError(
                "sockets and unknown file types cannot be part of an image", layer=name, entry=_show(relative)
            )


def _read_xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    result = {}
    for attribute in names:
        try:
            result[attribute.encode("utf-8", "surrogateescape")] = os.getxattr(path, attribute, follow_symlinks=False)
        except OSError:
            continue
    return result
