"""Random-access reader over bootstrap bytes (usually an mmap made by the caller).

Opening checks the superblock and that every table lies inside the buffer, and (unless told
not to) the root against the superblock's root digest; it parses nothing else, so it costs the
same for ten files or ten million. Every later access checks the offsets and lengths it follows
before trusting them, and raises `CorruptBootstrap` instead of reading garbage. With `verify`
(the default) every inode record is also checked against the Merkle tree before `inode()`
returns it, on first use (`rafs.verify`): every lookup, listing, symlink, xattr and chunk span
goes through `inode()`, so nothing unverified reaches a caller. `record()` is the unverified
decode, for `check` (which verifies everything itself) and the verifier.
"""

from __future__ import annotations

import mmap
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import native
from rafs import layout
from rafs.errors import CorruptBootstrap, UnknownFeature, UnsupportedVersion
from rafs.records import BlobRecord, ChunkRecord, ChunkSlice, DirEntry, Inode
from rafs.verify import TreeVerifier

# What a bootstrap can be read from: bytes in memory, or (usually) a read-only mmap of the file.
BootstrapBuffer = bytes | memoryview | mmap.mmap


@dataclass(frozen=True)
class Superblock:
    """The decoded superblock: table positions and image-wide settings."""

    version: int
    features: int
    chunk_size: int
    digester: int
    inode_count: int
    inode_table_offset: int
    dirent_count: int
    dirent_table_offset: int
    chunk_count: int
    chunk_table_offset: int
    blob_count: int
    blob_table_offset: int
    prefetch_count: int
    prefetch_table_offset: int
    heap_offset: int
    heap_size: int
    root_digest: bytes
    prefetch_chunk_count: int
    prefetch_chunk_table_offset: int


def parse_superblock(buffer: BootstrapBuffer) -> Superblock:
    """Decode and validate the superblock against the buffer's length."""
    if len(buffer) < layout.SUPERBLOCK_SIZE:
        raise CorruptBootstrap(f"bootstrap is {len(buffer)} bytes, shorter than its superblock")
    raw = bytes(buffer[: layout.SUPERBLOCK_SIZE])
    if raw[:8] != layout.MAGIC:
        raise CorruptBootstrap("not a bootstrap of this format (bad magic)")
    fields = layout.SUPERBLOCK.unpack(raw)
    version, superblock_size, features = fields[1], fields[2], fields[3]
    if version != layout.VERSION:
        raise UnsupportedVersion(f"bootstrap format version {version}, this reader knows {layout.VERSION}")
    if zlib.crc32(raw[:-4]) != fields[-1]:
        raise CorruptBootstrap("superblock checksum mismatch")
    if superblock_size != layout.SUPERBLOCK_SIZE:
        raise CorruptBootstrap(f"superblock size {superblock_size}")
    if features & ~layout.KNOWN_FEATURES:
        raise UnknownFeature(f"unknown feature bits {features & ~layout.KNOWN_FEATURES:#x}")
    sb = Superblock(*fields[1:2], *fields[3:-1])
    if not layout.is_valid_chunk_size(sb.chunk_size):
        raise CorruptBootstrap(f"chunk size {sb.chunk_size:#x} is not a power of two in 4K..16M")
    if sb.digester not in layout.DIGESTER_NAMES:
        raise CorruptBootstrap(f"unknown digester {sb.digester}")
    if sb.inode_count < 1:
        raise CorruptBootstrap("no root inode")
    tables = [
        ("inode", sb.inode_table_offset, sb.inode_count * layout.INODE.size),
        ("dirent", sb.dirent_table_offset, sb.dirent_count * layout.DIRENT.size),
        ("chunk", sb.chunk_table_offset, sb.chunk_count * layout.CHUNK.size),
        ("blob", sb.blob_table_offset, sb.blob_count * layout.BLOB.size),
        ("prefetch", sb.prefetch_table_offset, sb.prefetch_count * layout.PREFETCH.size),
        ("heap", sb.heap_offset, sb.heap_size),
    ]
    if sb.prefetch_chunk_count:  # optional: 0 and 0 in a bootstrap written without it
        chunk_table_size = sb.prefetch_chunk_count * layout.PREFETCH_CHUNK.size
        tables.append(("prefetch chunk", sb.prefetch_chunk_table_offset, chunk_table_size))
    for name, offset, size in tables:
        if offset < layout.SUPERBLOCK_SIZE or offset + size > len(buffer):
            raise CorruptBootstrap(f"{name} table [{offset}, +{size}) lies outside the {len(buffer)}-byte file")
    return sb


class Bootstrap:
    """Lookups over one bootstrap; safe to share between threads.

    Per-file state is only the verifier's two bits per inode (bounded by the inode count).
    `name` (usually the file's path) is what verification errors name.
    """

    def __init__(self, buffer: BootstrapBuffer, *, verify: bool = True, name: str = "bootstrap") -> None:
        self.buffer = buffer
        self.name = name
        self.superblock = parse_superblock(buffer)
        sb = self.superblock
        self.chunk_size = sb.chunk_size
        self.digester = sb.digester
        self.inode_count = sb.inode_count
        self.blobs = [self._blob(index) for index in range(sb.blob_count)]
        self.verifier = TreeVerifier(self) if verify else None

    # -- records -------------------------------------------------------------------------------

    def inode(self, ino: int) -> Inode:
        """The inode record `ino` (1-based), verified against the Merkle tree unless opened without
        `verify`; `CorruptBootstrap` if it points outside its tables or does not match."""
        record = self.record(ino)
        if self.verifier is not None:
            self.verifier.check(record)
        return record

    def record(self, ino: int) -> Inode:
        """The inode record `ino` as stored, bounds-checked but not verified against the tree."""
        sb = self.superblock
        if not 1 <= ino <= sb.inode_count:
            raise CorruptBootstrap(f"inode {ino} out of range 1..{sb.inode_count}")
        fields = layout.INODE.unpack_from(self.buffer, sb.inode_table_offset + (ino - 1) * layout.INODE.size)
        mode, nlink, uid, gid, size, rdev, mtime_sec, mtime_nsec, flags, parent, *content, digest = fields
        data_start, data_count, xattr_size, xattr_offset = content
        inode = Inode(
            ino,
            mode,
            nlink,
            uid,
            gid,
            size,
            rdev,
            mtime_sec,
            mtime_nsec,
            parent,
            data_start,
            data_count,
            xattr_size,
            xattr_offset,
            digest,
            flags,
        )
        allowed_flags = layout.KNOWN_INODE_FLAGS if sb.features & layout.FEATURE_LAYER else 0
        if inode.flags & ~allowed_flags or (inode.flags and not inode.is_dir):
            raise CorruptBootstrap(f"inode {ino}: invalid flags {inode.flags:#x}")
        if inode.is_dir:
            limit, what = sb.dirent_count, "dirent"
        elif inode.is_reg:
            limit, what = sb.chunk_count, "chunk"
        elif inode.is_symlink:
            limit, what = sb.heap_size, "heap"
        else:
            limit, what = sb.heap_size, "heap"
            if inode.data_count:
                raise CorruptBootstrap(f"inode {ino}: special file with content")
        if inode.data_start + inode.data_count > limit:
            raise CorruptBootstrap(f"inode {ino}: {what} run [{inode.data_start}, +{inode.data_count}) out of range")
        if inode.xattr_offset + inode.xattr_size > sb.heap_size:
            raise CorruptBootstrap(f"inode {ino}: xattrs outside the heap")
        return inode

    def heap(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of the heap; `CorruptBootstrap` past its end."""
        sb = self.superblock
        if offset + size > sb.heap_size:
            raise CorruptBootstrap(f"heap range [{offset}, +{size}) beyond the heap")
        start = sb.heap_offset + offset
        return bytes(self.buffer[start : start + size])

    def _dirent(self, index: int) -> DirEntry:
        sb = self.superblock
        name_offset, name_len, _, ino = layout.DIRENT.unpack_from(
            self.buffer, sb.dirent_table_offset + index * layout.DIRENT.size
        )
        name = self.heap(name_offset, name_len)
        if not name or b"/" in name or b"\x00" in name or name in (b".", b".."):
            raise CorruptBootstrap(f"directory entry {index}: invalid name {name!r}")
        if not 1 <= ino <= sb.inode_count:
            raise CorruptBootstrap(f"directory entry {index}: inode {ino} out of range")
        return DirEntry(index, name, ino)

    def chunk(self, index: int) -> ChunkRecord:
        sb = self.superblock
        if not 0 <= index < sb.chunk_count:
            raise CorruptBootstrap(f"chunk {index} out of range")
        record = ChunkRecord.unpack_from(self.buffer, sb.chunk_table_offset + index * layout.CHUNK.size)
        if record.flags & ~layout.KNOWN_CHUNK_FLAGS:
            raise CorruptBootstrap(f"chunk {index}: unknown flags {record.flags:#x}")
        if not record.is_zero and record.blob_index >= sb.blob_count:
            raise CorruptBootstrap(f"chunk {index}: blob index {record.blob_index} out of range")
        return record

    def _blob(self, index: int) -> BlobRecord:
        sb = self.superblock
        raw_id, *rest = layout.BLOB.unpack_from(self.buffer, sb.blob_table_offset + index * layout.BLOB.size)
        try:
            blob_id = raw_id.decode("ascii")
        except UnicodeDecodeError:
            raise CorruptBootstrap(f"blob {index}: id is not ASCII") from None
        if len(blob_id) != 64 or any(c not in "0123456789abcdef" for c in blob_id):
            raise CorruptBootstrap(f"blob {index}: id {blob_id!r} is not a sha256 hex digest")
        record = BlobRecord(blob_id, *rest)
        if record.compressor not in layout.COMPRESSOR_NAMES:
            raise CorruptBootstrap(f"blob {index}: unknown compressor {record.compressor}")
        return record

    # -- directories ---------------------------------------------------------------------------

    def _directory(self, ino: int) -> Inode:
        inode = self.inode(ino)
        if not inode.is_dir:
            raise NotADirectoryError(ino)
        return inode

    def lookup(self, parent: int, name: bytes) -> int | None:
        """The inode of `name` in directory `parent`, by binary search; None if absent."""
        directory = self._directory(parent)
        low, high = directory.data_start, directory.data_start + directory.data_count
        while low < high:
            middle = (low + high) // 2
            entry = self._dirent(middle)
            if entry.name == name:
                return entry.ino
            if entry.name < name:
                low = middle + 1
            else:
                high = middle
        return None

    def readdir(self, ino: int, start: int = 0) -> Iterator[DirEntry]:
        """Entries of directory `ino` from position `start`; `DirEntry.index` is relative."""
        directory = self._directory(ino)
        for position in range(start, directory.data_count):
            entry = self._dirent(directory.data_start + position)
            yield DirEntry(position, entry.name, entry.ino)

    def resolve(self, path: str | bytes) -> int | None:
        """The inode of an absolute path inside the image, or None."""
        raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
        ino = layout.ROOT_INO
        for part in raw.split(b"/"):
            if not part or part == b".":
                continue
            if not self.inode(ino).is_dir:
                return None
            found = self.lookup(ino, part)
            if found is None:
                return None
            ino = found
        return ino

    def walk(self) -> Iterator[tuple[bytes, int]]:
        """Every (path, inode) in depth-first order with sorted names; the root is b"/"."""
        stack: list[tuple[bytes, int]] = [(b"/", layout.ROOT_INO)]
        depth_guard = 0
        while stack:
            path, ino = stack.pop()
            yield path, ino
            inode = self.inode(ino)
            if inode.is_dir:
                depth_guard += 1
                if depth_guard > self.inode_count:
                    raise CorruptBootstrap("directory cycle")
                prefix = b"" if path == b"/" else path
                entries = list(self.readdir(ino))
                for entry in reversed(entries):
                    stack.append((prefix + b"/" + entry.name, entry.ino))

    # -- content -------------------------------------------------------------------------------

    def readlink(self, ino: int) -> bytes:
        inode = self.inode(ino)
        if not inode.is_symlink:
            raise CorruptBootstrap(f"inode {ino} is not a symlink")
        return self.heap(inode.data_start, inode.data_count)

    def has_xattrs(self) -> bool:
        """Whether any inode has xattrs: one strided pass over the raw `xattr_size` fields (~1 ms
        for 40k inodes).

        Not verified (records are, when used): a record forged to `xattr_size` 0 fails its digest
        as soon as it is looked up, so an answer it falsifies never reaches a reader's file.
        """
        sb = self.superblock
        end = sb.inode_table_offset + sb.inode_count * layout.INODE.size
        first = sb.inode_table_offset + layout.INODE_XATTR_SIZE_OFFSET
        column = (bytes(self.buffer[first + i : end : layout.INODE.size]) for i in range(4))  # one byte a record
        return any(part.count(0) != sb.inode_count for part in column)

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        """All xattrs of `ino`, decoded and bounds-checked."""
        inode = self.inode(ino)
        if not inode.xattr_size:
            return {}
        raw = self.heap(inode.xattr_offset, inode.xattr_size)
        try:
            (count,) = layout.XATTR_COUNT.unpack_from(raw, 0)
            position = layout.XATTR_COUNT.size
            result: dict[bytes, bytes] = {}
            for _ in range(count):
                name_len, value_len = layout.XATTR_ENTRY.unpack_from(raw, position)
                position += layout.XATTR_ENTRY.size
                end = position + name_len + value_len
                if end > len(raw):
                    raise CorruptBootstrap(f"inode {ino}: xattr runs past its record")
                result[raw[position : position + name_len]] = raw[position + name_len : end]
                position = end
        except Exception as error:
            if isinstance(error, CorruptBootstrap):
                raise
            raise CorruptBootstrap(f"inode {ino}: malformed xattrs") from None
        if position != len(raw):
            raise CorruptBootstrap(f"inode {ino}: xattr record has trailing bytes")
        return result

    def chunks(self, ino: int) -> list[ChunkRecord]:
        inode = self.inode(ino)
        if not inode.is_reg:
            return []
        return [self.chunk(inode.data_start + i) for i in range(inode.data_count)]

    def chunk_span(self, ino: int, offset: int, size: int) -> list[ChunkSlice]:
        """The chunks covering file bytes [offset, offset+size), clipped to the file's end.

        The search over the file's chunk run is `native.locate_chunks` (C, or its twin)."""
        inode = self.inode(ino)
        if not inode.is_reg:
            return []
        sb = self.superblock
        try:
            pieces = native.locate_chunks(
                self.buffer,
                sb.chunk_table_offset,
                sb.blob_count,
                inode.data_start,
                inode.data_count,
                inode.size,
                offset,
                size,
            )
        except native.BadChunkTable as error:
            raise CorruptBootstrap(f"inode {ino}: {error}") from None
        return [ChunkSlice(index, self.chunk(index), start, length) for index, start, length in pieces]

    def prefetch_inodes(self) -> list[int]:
        sb = self.superblock
        return [
            layout.PREFETCH.unpack_from(self.buffer, sb.prefetch_table_offset + i * layout.PREFETCH.size)[0]
            for i in range(sb.prefetch_count)
        ]

    def prefetch_chunks(self) -> list[tuple[int, int]]:
        """(inode number, chunk index within the file) in fetch order; empty if the image has none."""
        sb = self.superblock
        entry = layout.PREFETCH_CHUNK
        return [
            entry.unpack_from(self.buffer, sb.prefetch_chunk_table_offset + i * entry.size)
            for i in range(sb.prefetch_chunk_count)
        ]
