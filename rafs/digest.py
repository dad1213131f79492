"""Chunk digests and the Merkle tree over inodes.

A chunk's digest is blake3 (or sha256) of its uncompressed bytes. An inode's digest covers its
metadata, its xattrs and its content: the chunk digests of a file, the target of a symlink, or
the (name, digest) pairs of a directory's sorted entries. The root inode's digest is the image's
root digest, so any change anywhere changes it. The same functions serve the writer, `check`
and tests that digest a tree walked from disk or from a mount.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

import blake3

from rafs import layout
from rafs.records import Inode

_META = struct.Struct("<IIIIQQqI")
_NAME_LEN = struct.Struct("<I")


def chunk_digest(data: bytes | memoryview, digester: int = layout.DIGESTER_BLAKE3) -> bytes:
    """The 32-byte digest of a chunk's uncompressed bytes."""
    if digester == layout.DIGESTER_BLAKE3:
        return blake3.blake3(data).digest()
    if digester == layout.DIGESTER_SHA256:
        return hashlib.sha256(data).digest()
    raise ValueError(f"unknown digester {digester}")


def encode_xattrs(xattrs: dict[bytes, bytes]) -> bytes:
    """The canonical encoding of a set of xattrs, as stored in the heap (sorted by name)."""
    if not xattrs:
        return b""
    parts = [layout.XATTR_COUNT.pack(len(xattrs))]
    for name in sorted(xattrs):
        value = xattrs[name]
        parts.append(layout.XATTR_ENTRY.pack(len(name), len(value)))
        parts.append(name)
        parts.append(value)
    return b"".join(parts)


def inode_digest(
    digester: int,
    *,
    mode: int,
    nlink: int,
    uid: int,
    gid: int,
    size: int,
    rdev: int,
    mtime_ns: int,
    xattrs: bytes,
    content: bytes,
) -> bytes:
    """Digest of one inode: metadata, encoded xattrs, then `content` (see `file_content` etc.)."""
    mtime_sec, mtime_nsec = divmod(mtime_ns, 1_000_000_000)
    meta = _META.pack(mode, nlink, uid, gid, size, rdev, mtime_sec, mtime_nsec)
    return chunk_digest(meta + _NAME_LEN.pack(len(xattrs)) + xattrs + content, digester)


def record_digest(digester: int, inode: Inode, *, xattrs: bytes, content: bytes) -> bytes:
    """`inode_digest` of a decoded inode record: what its verified parent (or the superblock) holds."""
    return inode_digest(
        digester,
        mode=inode.mode,
        nlink=inode.nlink,
        uid=inode.uid,
        gid=inode.gid,
        size=inode.size,
        rdev=inode.rdev,
        mtime_ns=inode.mtime_ns,
        xattrs=xattrs,
        content=content,
    )


def file_content(chunk_digests: Iterable[bytes]) -> bytes:
    """Content part of a regular file's digest: its chunk digests in file order."""
    return b"".join(chunk_digests)


def directory_content(entries: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Content part of a directory's digest: (name, child digest) pairs, sorted by name."""
    return b"".join(_NAME_LEN.pack(len(name)) + name + digest for name, digest in sorted(entries))
