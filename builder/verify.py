"""`check`: read a bootstrap (and its blobs) back and trust nothing.

It recomputes every inode digest bottom-up from the records, compares each with the stored one
and the root with the superblock, checks the layout, then reads, decompresses and verifies every
chunk of every blob, naming the first broken file and chunk. `BlobFiles` is the verified chunk
reader `builder.unpack` uses too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from rafs import digest, layout
from rafs.blob import decode_chunk
from rafs.bootstrap import Bootstrap
from rafs.errors import ChunkError, CorruptBlob, CorruptBootstrap, CorruptChunk
from rafs.records import ChunkRecord


def show_path(path: bytes) -> str:
    """A path as text for messages (undecodable bytes escaped)."""
    return path.decode("utf-8", "backslashreplace")


class BlobFiles:
    """Reads chunks from blob files in a directory (named by blob id), verifying each."""

    def __init__(self, bootstrap: Bootstrap, blob_dir: str) -> None:
        self.bootstrap = bootstrap
        self.blob_dir = blob_dir
        self.handles: dict[int, IO[bytes]] = {}

    def _handle(self, blob_index: int) -> IO[bytes]:
        handle = self.handles.get(blob_index)
        if handle is None:
            path = os.path.join(self.blob_dir, self.bootstrap.blobs[blob_index].blob_id)
            try:
                handle = self.handles[blob_index] = open(path, "rb")  # noqa: SIM115 - closed in close()
            except FileNotFoundError:
                raise CorruptBlob(f"blob file {path} is missing") from None
        return handle

    def read_chunk(self, record: ChunkRecord, chunk_index: int = -1) -> bytes:
        if record.is_zero:
            return bytes(record.uncompressed_size)
        blob = self.bootstrap.blobs[record.blob_index]
        try:
            if record.compressed_offset + record.compressed_size > blob.compressed_size:
                raise CorruptChunk(
                    f"stored range [{record.compressed_offset}, +{record.compressed_size}) lies beyond the"
                    f" {blob.compressed_size}-byte blob"
                )
            handle = self._handle(record.blob_index)
            handle.seek(record.compressed_offset)
            stored = handle.read(record.compressed_size)
            return decode_chunk(stored, record, blob.compressor, self.bootstrap.digester)
        except ChunkError as error:
            raise type(error)(str(error), blob_id=blob.blob_id, chunk_index=chunk_index) from None

    def iter_file(self, ino: int) -> Iterator[bytes]:
        inode = self.bootstrap.inode(ino)
        for position in range(inode.data_count):
            index = inode.data_start + position
            yield self.read_chunk(self.bootstrap.chunk(index), index)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


@dataclass
class CheckReport:
    inodes: int = 0
    chunks_verified: int = 0
    blobs_verified: int = 0
    root_digest: str = ""
    problems: list[str] = field(default_factory=list)


def recompute_digests(bootstrap: Bootstrap) -> dict[int, bytes]:
    """Every inode's digest recomputed from its records; raises on the first mismatch."""
    order = list(bootstrap.walk())
    recomputed: dict[int, bytes] = {}
    path_of = {ino: path for path, ino in reversed(order)}
    for path, ino in reversed(order):
        if ino in recomputed:
            continue
        inode = bootstrap.inode(ino)
        if inode.is_dir:
            content = digest.directory_content((entry.name, recomputed[entry.ino]) for entry in bootstrap.readdir(ino))
        elif inode.is_reg:
            chunks = bootstrap.chunks(ino)
            content = digest.file_content(chunk.digest for chunk in chunks)
            expected_offset = 0
            for chunk in chunks:
                if chunk.file_offset != expected_offset:
                    raise CorruptBootstrap(
                        f"{show_path(path)}: chunk at file offset {chunk.file_offset}, expected {expected_offset}"
                    )
                expected_offset += chunk.uncompressed_size
            if expected_offset != inode.size:
                raise CorruptBootstrap(f"{show_path(path)}: chunks cover {expected_offset} bytes, size is {inode.size}")
        elif inode.is_symlink:
            content = bootstrap.readlink(ino)
        else:
            content = b""
        value = digest.record_digest(
            bootstrap.digester, inode, xattrs=digest.encode_xattrs(bootstrap.xattrs(ino)), content=content
        )
        if value != inode.digest:
            raise CorruptBootstrap(f"{show_path(path_of[ino])}: inode {ino} digest mismatch")
        recomputed[ino] = value
    if recomputed[layout.ROOT_INO] != bootstrap.superblock.root_digest:
        raise CorruptBootstrap("root digest in the superblock does not match the tree")
    return recomputed


def verify_structure(bootstrap: Bootstrap) -> None:
    """Check what the digests do not cover: the layout every bootstrap of this format has.

    Parents, reserved fields, the heap's leading NUL, dirent and chunk runs laid out in inode
    order without gaps or overlaps, sorted names, canonical zero chunks, chunk extents inside
    their blobs, and prefetch tables of distinct regular files and of distinct chunks of them.
    Together with the digests this makes any single altered byte of the inode, dirent and chunk
    tables, heap or superblock an error.
    """
    sb = bootstrap.superblock
    if sb.heap_size < 1 or bootstrap.buffer[sb.heap_offset] != 0:
        raise CorruptBootstrap("the heap does not start with its reserved NUL byte")
    expected_parent: dict[int, int] = {layout.ROOT_INO: layout.ROOT_INO}
    for path, ino in bootstrap.walk():
        inode = bootstrap.inode(ino)
        if inode.is_dir:
            for entry in bootstrap.readdir(ino):
                if bootstrap.inode(entry.ino).is_dir:
                    if entry.ino in expected_parent:
                        raise CorruptBootstrap(f"{show_path(path)}: directory inode {entry.ino} is reachable twice")
                    expected_parent[entry.ino] = ino
                else:
                    expected_parent.setdefault(entry.ino, 0)
    if len(expected_parent) != sb.inode_count:
        raise CorruptBootstrap(f"{sb.inode_count - len(expected_parent)} inodes are not reachable from the root")
    next_dirent = next_chunk = 0
    zero_digests: dict[int, bytes] = {}
    extents: dict[int, dict[int, tuple[int, int]]] = {}
    for ino in range(1, sb.inode_count + 1):
        inode = bootstrap.inode(ino)
        if inode.parent != expected_parent[ino]:
            raise CorruptBootstrap(f"inode {ino}: parent {inode.parent}, expected {expected_parent[ino]}")
        if not inode.xattr_size and inode.xattr_offset:
            raise CorruptBootstrap(f"inode {ino}: xattr offset without xattrs")
        if inode.is_dir:
            if inode.data_start != next_dirent:
                raise CorruptBootstrap(f"inode {ino}: entries start at {inode.data_start}, expected {next_dirent}")
            next_dirent += inode.data_count
            previous = b""
            for entry in bootstrap.readdir(ino):
                raw = layout.DIRENT.unpack_from(
                    bootstrap.buffer, sb.dirent_table_offset + (inode.data_start + entry.index) * layout.DIRENT.size
                )
                if raw[2] != 0:
                    raise CorruptBootstrap(f"inode {ino}: entry {entry.name!r} has a non-zero reserved field")
                if entry.name <= previous:
                    raise CorruptBootstrap(f"inode {ino}: entries are not sorted at {entry.name!r}")
                previous = entry.name
        elif inode.is_reg:
            if inode.data_start != next_chunk:
                raise CorruptBootstrap(f"inode {ino}: chunks start at {inode.data_start}, expected {next_chunk}")
            next_chunk += inode.data_count
            for position, chunk in enumerate(bootstrap.chunks(ino)):
                last = position == inode.data_count - 1
                if chunk.uncompressed_size > sb.chunk_size or (not last and chunk.uncompressed_size != sb.chunk_size):
                    raise CorruptBootstrap(f"inode {ino}: chunk {position} holds {chunk.uncompressed_size} bytes")
                if chunk.is_zero:
                    size = chunk.uncompressed_size
                    if size not in zero_digests:
                        zero_digests[size] = digest.chunk_digest(bytes(size), bootstrap.digester)
                    found = (chunk.blob_index, chunk.flags, chunk.compressed_offset, chunk.compressed_size)
                    if found != (0, layout.CHUNK_ZERO, 0, 0) or chunk.digest != zero_digests[size]:
                        raise CorruptBootstrap(f"inode {ino}: zero chunk {position} is not in canonical form")
                    continue
                blob_extents = extents.setdefault(chunk.blob_index, {})
                extent = (chunk.compressed_size, chunk.uncompressed_size)
                if blob_extents.setdefault(chunk.compressed_offset, extent) != extent:
                    raise CorruptBootstrap(f"inode {ino}: chunk {position} overlaps another chunk in its blob")
        elif not inode.is_symlink and inode.data_start:
            raise CorruptBootstrap(f"inode {ino}: content offset {inode.data_start} on an inode without content")
    if next_dirent != sb.dirent_count or next_chunk != sb.chunk_count:
        raise CorruptBootstrap("the dirent or chunk table holds records no inode refers to")
    for blob_index, blob_extents in extents.items():
        blob = bootstrap.blobs[blob_index]
        end = 0
        gaps = False
        for offset in sorted(blob_extents):
            if offset < end:
                raise CorruptBootstrap(f"blob {blob.blob_id[:16]}: chunks at {offset} overlap")
            gaps = gaps or offset > end
            end = offset + blob_extents[offset][0]
        if end > blob.compressed_size or len(blob_extents) > blob.chunk_count:
            raise CorruptBootstrap(f"blob {blob.blob_id[:16]}: chunks lie beyond its recorded size or count")
        # A blob this image uses in full (no chunk-dict or parent leftovers) must add up exactly.
        uncompressed = sum(size for _, size in blob_extents.values())
        if (
            not gaps
            and end == blob.compressed_size
            and (len(blob_extents) != blob.chunk_count or uncompressed != blob.uncompressed_size)
        ):
            raise CorruptBootstrap(f"blob {blob.blob_id[:16]}: chunk count or uncompressed size does not add up")
    prefetch = bootstrap.prefetch_inodes()
    if len(set(prefetch)) != len(prefetch) or not all(
        1 <= ino <= sb.inode_count and bootstrap.inode(ino).is_reg for ino in prefetch
    ):
        raise CorruptBootstrap("the prefetch table lists something other than distinct regular files")
    chunks = bootstrap.prefetch_chunks()
    if len(set(chunks)) != len(chunks) or not all(
        1 <= ino <= sb.inode_count and bootstrap.inode(ino).is_reg and index < bootstrap.inode(ino).data_count
        for ino, index in chunks
    ):
        raise CorruptBootstrap("the prefetch chunk table lists something other than distinct chunks of regular files")


def check(bootstrap: Bootstrap, blob_dir: str | None) -> CheckReport:
    """Verify the Merkle tree and the layout, then (with `blob_dir`) every chunk and blob."""
    report = CheckReport()
    report.inodes = len(recompute_digests(bootstrap))
    verify_structure(bootstrap)
    report.root_digest = bootstrap.superblock.root_digest.hex()
    if blob_dir is None:
        return report
    for blob in bootstrap.blobs:
        blob_path = os.path.join(blob_dir, blob.blob_id)
        if not os.path.exists(blob_path):
            raise CorruptBlob(f"blob {blob.blob_id} is missing from {blob_dir}")
    files = BlobFiles(bootstrap, blob_dir)
    verified: set[tuple[int, int, int, int, bytes]] = set()
    try:
        for path, ino in bootstrap.walk():
            inode = bootstrap.inode(ino)
            if not inode.is_reg:
                continue
            for position in range(inode.data_count):
                index = inode.data_start + position
                record = bootstrap.chunk(index)
                key = (record.blob_index, record.flags, record.compressed_offset, record.compressed_size, record.digest)
                if record.is_zero or key in verified:
                    continue
                try:
                    files.read_chunk(record, index)
                except ChunkError as error:
                    raise error.at_path(show_path(path)) from None
                verified.add(key)
                report.chunks_verified += 1
    finally:
        files.close()
    # Every chunk is sound; the blob's sha256 also covers bytes no chunk refers to.
    for blob in bootstrap.blobs:
        blob_path = os.path.join(blob_dir, blob.blob_id)
        sha = hashlib.sha256()
        with open(blob_path, "rb") as file:
            while data := file.read(1 << 20):
                sha.update(data)
        if os.path.getsize(blob_path) != blob.compressed_size:
            raise CorruptBlob(
                f"blob file {blob_path}: {os.path.getsize(blob_path)} bytes, expected {blob.compressed_size}"
            )
        if sha.hexdigest() != blob.blob_id:
            raise CorruptBlob(f"blob file {blob_path}: content has sha256 {sha.hexdigest()} (altered)")
        report.blobs_verified += 1
    return report


def verify_all(bootstrap: Bootstrap) -> None:
    """The whole Merkle tree and layout (`recompute_digests`, `verify_structure`), before `unpack`
    writes anything: a corrupt bootstrap is refused, naming its file, not half written."""
    try:
        recompute_digests(bootstrap)
        verify_structure(bootstrap)
    except CorruptBootstrap as error:
        message = str(error)
        raise CorruptBootstrap(
            message if message.startswith(bootstrap.name) else f"{bootstrap.name}: {message}"
        ) from None
