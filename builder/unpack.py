"""`unpack`: the tree of a bootstrap written out, to a directory or a PAX tar; all or nothing.

Every digest is verified before anything is written, every chunk as it is read, and the output
appears (by rename, `rafs.outputs`) only when complete.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from decimal import Decimal

from builder.verify import BlobFiles, verify_all
from rafs.bootstrap import Bootstrap
from rafs.errors import ConfigError
from rafs.outputs import atomic_directory, atomic_file


def _output_parent(output: str) -> str:
    """The existing directory that will hold `output`; an error if there is none (`ConfigError`)."""
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ConfigError(f"cannot write {output}: parent directory {parent} does not exist")
    return parent


def unpack_to_directory(bootstrap: Bootstrap, blob_dir: str, output: str) -> None:
    """Write the tree to `output` exactly as a container would see it; all or nothing.

    `output` must not exist or be an empty directory, and its parent must exist. The tree is
    written to a temporary directory beside it and renamed into place only when complete, so
    a failure (a missing or corrupt blob) leaves nothing behind and never touches other files.
    """
    _output_parent(output)
    verify_all(bootstrap)
    final_path = os.path.abspath(output)
    if os.path.lexists(final_path):
        if not os.path.isdir(final_path) or os.path.islink(final_path):
            raise ConfigError(f"cannot unpack to {output}: it exists and is not a directory")
        if os.listdir(final_path):
            raise ConfigError(f"cannot unpack to {output}: directory is not empty")
    with atomic_directory(final_path) as root:
        _write_tree(bootstrap, blob_dir, os.fsencode(root))


def _write_tree(bootstrap: Bootstrap, blob_dir: str, target_root: bytes) -> None:
    """Write every inode under the existing directory `target_root` (which becomes the root)."""
    files = BlobFiles(bootstrap, blob_dir)
    first_path: dict[int, bytes] = {}
    directories: list[tuple[bytes, int]] = []
    try:
        for path, ino in bootstrap.walk():
            inode = bootstrap.inode(ino)
            full = target_root + path if path != b"/" else target_root
            if inode.is_dir:
                if path != b"/":
                    os.mkdir(full, 0o700)
                directories.append((full, ino))
                continue
            if not inode.is_dir and inode.nlink > 1 and ino in first_path:
                os.link(first_path[ino], full)
                continue
            first_path[ino] = full
            if inode.is_reg:
                with open(full, "wb") as out:
                    for data in files.iter_file(ino):
                        out.write(data)
            elif inode.is_symlink:
                os.symlink(bootstrap.readlink(ino), full)
            elif stat.S_ISCHR(inode.mode) or stat.S_ISBLK(inode.mode) or stat.S_ISFIFO(inode.mode):
                os.mknod(full, stat.S_IFMT(inode.mode) | 0o600, inode.rdev)
            _apply_metadata(bootstrap, ino, full)
        for full, ino in reversed(directories):
            _apply_metadata(bootstrap, ino, full)
    finally:
        files.close()


def _apply_metadata(bootstrap: Bootstrap, ino: int, full: bytes) -> None:
    inode = bootstrap.inode(ino)
    os.lchown(full, inode.uid, inode.gid)
    if not inode.is_symlink:
        os.chmod(full, stat.S_IMODE(inode.mode))  # after chown, which clears setuid/setgid
    for name, value in bootstrap.xattrs(ino).items():  # after chown, which drops security.capability
        os.setxattr(full, name, value, follow_symlinks=False)
    os.utime(full, ns=(inode.mtime_ns, inode.mtime_ns), follow_symlinks=False)


def unpack_to_tar(bootstrap: Bootstrap, blob_dir: str, output: str) -> None:
    """Write the tree as a PAX tar (xattrs, nanosecond mtimes, hard links kept)."""
    _output_parent(output)
    verify_all(bootstrap)
    files = BlobFiles(bootstrap, blob_dir)
    first_path: dict[int, str] = {}
    try:
        with (
            atomic_file(output) as raw,
            tarfile.open(
                fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
            ) as archive,
        ):
            for path, ino in bootstrap.walk():
                inode = bootstrap.inode(ino)
                name = "." + os.fsdecode(path) if path != b"/" else "."
                info = tarfile.TarInfo(name)
                info.mode = stat.S_IMODE(inode.mode)
                info.uid, info.gid = inode.uid, inode.gid
                info.mtime = inode.mtime_sec
                pax = {"mtime": str(Decimal(inode.mtime_ns) / Decimal(1_000_000_000))}
                for key, value in bootstrap.xattrs(ino).items():
                    pax["SCHILY.xattr." + key.decode("utf-8", "surrogateescape")] = value.decode(
                        "utf-8", "surrogateescape"
                    )
                info.pax_headers = pax
                data: _ChunkStream | None = None
                if not inode.is_dir and inode.nlink > 1 and ino in first_path:
                    info.type = tarfile.LNKTYPE
                    info.linkname = first_path[ino]
                elif inode.is_dir:
                    info.type = tarfile.DIRTYPE
                elif inode.is_reg:
                    info.size = inode.size
                    data = _ChunkStream(files.iter_file(ino))
                elif inode.is_symlink:
                    info.type = tarfile.SYMTYPE
                    info.linkname = os.fsdecode(bootstrap.readlink(ino))
                elif stat.S_ISFIFO(inode.mode):
                    info.type = tarfile.FIFOTYPE
                else:
                    info.type = tarfile.CHRTYPE if stat.S_ISCHR(inode.mode) else tarfile.BLKTYPE
                    info.devmajor, info.devminor = os.major(inode.rdev), os.minor(inode.rdev)
                if not inode.is_dir:
                    first_path.setdefault(ino, name)
                archive.addfile(info, data)
    finally:
        files.close()


class _ChunkStream:
    """A file-like view over an iterator of chunks, for `tarfile.addfile` (no re-copying)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.current = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size >= 0 else 1 << 62
        while wanted > 0:
            if not self.current:
                try:
                    self.current = memoryview(next(self.chunks))
                except StopIteration:
                    break
            part = self.current[:wanted]
            self.current = self.current[len(part) :]
            parts.append(bytes(part))
            wanted -= len(part)
        return b"".join(parts)
