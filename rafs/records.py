"""Decoded bootstrap records: plain frozen values, one per struct in `rafs.layout`."""

from __future__ import annotations

import mmap
import stat
from dataclasses import dataclass

from rafs import layout


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """Where one chunk of a file lives: which blob, which bytes, and what it must hash to."""

    blob_index: int
    flags: int
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int
    file_offset: int
    digest: bytes

    @property
    def is_compressed(self) -> bool:
        return bool(self.flags & layout.CHUNK_COMPRESSED)

    @property
    def is_zero(self) -> bool:
        return bool(self.flags & layout.CHUNK_ZERO)

    def pack(self) -> bytes:
        return layout.CHUNK.pack(
            self.blob_index,
            self.flags,
            self.compressed_offset,
            self.compressed_size,
            self.uncompressed_size,
            self.file_offset,
            self.digest,
        )

    @classmethod
    def unpack_from(cls, buffer: bytes | memoryview | mmap.mmap, offset: int) -> ChunkRecord:
        return cls(*layout.CHUNK.unpack_from(buffer, offset))


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """A data blob of the image: named by the sha256 of its bytes."""

    blob_id: str
    compressed_size: int
    uncompressed_size: int
    chunk_count: int
    compressor: int

    @property
    def compressor_name(self) -> str:
        return layout.COMPRESSOR_NAMES.get(self.compressor, f"unknown({self.compressor})")

    def pack(self) -> bytes:
        return layout.BLOB.pack(
            self.blob_id.encode("ascii"),
            self.compressed_size,
            self.uncompressed_size,
            self.chunk_count,
            self.compressor,
        )


@dataclass(frozen=True, slots=True)
class Inode:
    """One inode record. `data_start`/`data_count` mean dirents, chunks or a symlink's target."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    rdev: int
    mtime_sec: int
    mtime_nsec: int
    parent: int
    data_start: int
    data_count: int
    xattr_size: int
    xattr_offset: int
    digest: bytes
    flags: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def mtime_ns(self) -> int:
        return self.mtime_sec * 1_000_000_000 + self.mtime_nsec


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One name in a directory and the inode it points to."""

    index: int
    name: bytes
    ino: int


@dataclass(frozen=True, slots=True)
class ChunkSlice:
    """The part of one chunk that a read wants: bytes [start, start+length) of the chunk."""

    chunk_index: int
    record: ChunkRecord
    start: int
    length: int
