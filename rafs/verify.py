"""Lazy Merkle verification: no inode record is used before it is checked against the tree.

A bootstrap carries a Merkle tree (docs/format.md, "Digests"): each inode's digest covers its
metadata, xattrs and content (chunk digests, symlink target, or the names and digests of its
entries), and the root's digest is in the superblock. Checking the whole tree at open would
cost O(image) (seconds for a million files), so `TreeVerifier` checks it piece by piece, on
first use:

- at open, the root record against the superblock's root digest, then the root's entries;
- a directory's entries against its (already authentic) digest the first time it is used,
  which makes the stored digest of every inode it lists authentic;
- an inode's record against its authentic digest before the record is returned, so metadata,
  xattrs, symlink targets and chunk lists reach no caller unverified.

What the digests do not cover is checked alongside, where it matters for what is served: entry
names valid and strictly sorted (lookup is a binary search), a directory's `parent` naming the
directory that lists it (`..`), chunk runs covering the file exactly with `chunk_size` pieces,
and zero chunks (served without any blob) carrying the digest of zeros. Where a chunk is stored
(blob, offset, sizes, flags) is not in the tree: the read path verifies the bytes it gets
against the chunk's (authentic) digest.

State is two bits per inode (authentic digest, verified record) in one bytearray, so memory is
bounded by the inode count (a million inodes: 250 KiB) and never grows with use; the buffer is
immutable, so a bit once set stays true. Threads may race on a bit: a lost update only means a
record is verified again, never that an unverified one is used.

An inode number that did not come from a verified directory (the prefetch table, say) is made
authentic by the directory that lists it. Which one is found from the tables as stored: inode
numbers are given breadth first, so each directory's new children are numbered in one block,
blocks in the order of their directories; the directory whose block starts last at or before
the number is verified (with the directories above it). That is only where to look: if the
verified directory does not list the inode (a hard link, or damage), directories are verified
in inode order until one does. So a start that prefetches 2,000 files verifies the directories
that hold them, not every directory of the image (0.12 s of the daemon's start on a 40,000-entry
image). The index of where blocks start costs two integers per directory, built on first need.
"""

from __future__ import annotations

import bisect
import stat
import struct
from array import array
from typing import TYPE_CHECKING

from rafs import digest, layout
from rafs.errors import CorruptBootstrap
from rafs.records import Inode

if TYPE_CHECKING:
    from rafs.bootstrap import Bootstrap

AUTHENTIC = 1  # the stored digest is vouched for by a verified directory (or the superblock)
VERIFIED = 2  # the record matches its authentic digest

# mode, parent and digest of an inode record: what a directory's check reads of each child.
_CHILD = struct.Struct("<I44xQ24x32s")
_MODE = struct.Struct(f"<I{layout.INODE.size - 4}x")
# mode, data_start and data_count of an inode record: what the block index reads of each directory.
_ENTRIES = struct.Struct("<I52xQI44x")
assert _CHILD.size == layout.INODE.size == _MODE.size == _ENTRIES.size

MAX_REMEMBERED_FAILURES = 4096
MAX_ZERO_DIGESTS = 64


class TreeVerifier:
    """Checks records of one `Bootstrap` against its Merkle tree on first use."""

    def __init__(self, bootstrap: Bootstrap) -> None:
        self.bootstrap = bootstrap
        self.superblock = bootstrap.superblock
        self._bits = bytearray(self.superblock.inode_count // 4 + 1)
        self._failed: dict[int, str] = {}  # inode -> why, so a broken record fails fast
        self._zero_digests: dict[int, bytes] = {}
        self._sweep_next = layout.ROOT_INO  # next inode the directory sweep looks at
        self._block_index: tuple[array[int], array[int]] | None = None  # (block starts, their directories)
        self._verify_root()

    # -- state ---------------------------------------------------------------------------------

    def _has(self, ino: int, flag: int) -> bool:
        return bool(self._bits[ino >> 2] >> ((ino & 3) * 2) & flag)

    def _set(self, ino: int, flag: int) -> None:
        self._bits[ino >> 2] |= flag << ((ino & 3) * 2)

    def is_verified(self, ino: int) -> bool:
        return self._has(ino, VERIFIED)

    # -- entry points --------------------------------------------------------------------------

    def check(self, record: Inode) -> None:
        """Return if `record` (as just decoded) matches the tree, else `CorruptBootstrap` naming
        the bootstrap, the inode and what failed."""
        try:
            self._check(record)
        except CorruptBootstrap as error:
            raise CorruptBootstrap(f"{self.bootstrap.name}: {error}") from None

    def _check(self, record: Inode) -> None:
        if self._has(record.ino, VERIFIED):
            return
        reason = self._failed.get(record.ino)
        if reason is not None:
            raise CorruptBootstrap(reason)
        try:
            self._authenticate(record.ino)
            self._verify(record)
        except CorruptBootstrap as error:
            if len(self._failed) >= MAX_REMEMBERED_FAILURES:
                self._failed.clear()
            self._failed[record.ino] = str(error)
            raise

    def _verify_root(self) -> None:
        root = self.bootstrap.record(layout.ROOT_INO)
        if not root.is_dir:
            raise CorruptBootstrap("the root inode is not a directory")
        if root.parent != layout.ROOT_INO:
            raise CorruptBootstrap(f"the root's parent is {root.parent}, not itself")
        if root.digest != self.superblock.root_digest:
            raise CorruptBootstrap("the root inode's digest differs from the superblock's root digest")
        self._set(layout.ROOT_INO, AUTHENTIC)
        try:
            self._verify(root)
        except CorruptBootstrap as error:
            raise CorruptBootstrap(f"the root directory: {error}") from None

    # -- making a digest authentic -------------------------------------------------------------

    def _authenticate(self, ino: int) -> None:
        """Make `ino`'s stored digest authentic: verify the directories above it first."""
        if self._has(ino, AUTHENTIC):
            return
        record = self.bootstrap.record(ino)
        if not record.is_dir:
            self._sweep_for(ino)
            return
        chain = [ino]  # ino, its parent, its grandparent ... up to an authentic directory
        seen = {ino}
        while True:
            parent = self.bootstrap.record(chain[-1]).parent
            if not 1 <= parent <= self.superblock.inode_count or parent in seen:
                raise CorruptBootstrap(f"inode {ino}: its parent chain does not reach the root")
            if self._has(parent, AUTHENTIC):
                break
            chain.append(parent)
            seen.add(parent)
        for child in reversed(chain):
            parent = self.bootstrap.record(child).parent
            self._verified_directory(parent)
            if not self._has(child, AUTHENTIC):
                raise CorruptBootstrap(f"inode {child}: not listed by its parent directory {parent}")

    def _verified_directory(self, ino: int) -> None:
        record = self.bootstrap.record(ino)
        if not record.is_dir:
            raise CorruptBootstrap(f"inode {ino}: named as a parent but not a directory")
        self._check(record)

    def _sweep_for(self, ino: int) -> None:
        """Verify the directory whose block of new children holds `ino`; failing that, verify
        directories in inode order until one lists it (see the module docstring)."""
        directory = self._block_holding(ino)
        if directory is not None:
            try:
                self._verified_directory(directory)
            except CorruptBootstrap:
                pass  # that directory fails on its own use; the sweep may find another
        sb = self.superblock
        while not self._has(ino, AUTHENTIC) and self._sweep_next <= sb.inode_count:
            current = self._sweep_next
            self._sweep_next += 1
            offset = sb.inode_table_offset + (current - 1) * layout.INODE.size
            if stat.S_ISDIR(_MODE.unpack_from(self.bootstrap.buffer, offset)[0]):
                try:
                    self._check(self.bootstrap.record(current))
                except CorruptBootstrap:
                    continue  # that directory fails on its own use; another may list `ino`
        if not self._has(ino, AUTHENTIC):
            raise CorruptBootstrap(f"inode {ino}: no verified directory lists it")

    def _block_holding(self, ino: int) -> int | None:
        """The directory whose block of new children, as stored, starts last at or before `ino`
        (unverified: where to look first), or None."""
        if self._block_index is None:
            self._block_index = self._index_blocks()
        starts, directories = self._block_index
        position = bisect.bisect_right(starts, ino) - 1
        return directories[position] if position >= 0 else None

    def _index_blocks(self) -> tuple[array[int], array[int]]:
        """Where each directory's children start (sorted, for bisect) and which directory each
        block is, read from the stored tables in one pass."""
        sb = self.superblock
        buffer = self.bootstrap.buffer
        table = memoryview(buffer)[sb.inode_table_offset : sb.inode_table_offset + sb.inode_count * layout.INODE.size]
        starts: array[int] = array("Q")
        directories: array[int] = array("Q")
        for ino, (mode, data_start, data_count) in enumerate(_ENTRIES.iter_unpack(table), start=1):
            if not stat.S_ISDIR(mode) or not data_count or not 0 <= data_start < sb.dirent_count:
                continue
            first_child = layout.DIRENT.unpack_from(buffer, sb.dirent_table_offset + data_start * layout.DIRENT.size)[3]
            if first_child > ino and (not starts or first_child > starts[-1]):  # kept sorted for bisect
                starts.append(first_child)
                directories.append(ino)
        return starts, directories

    # -- checking a record against its authentic digest ----------------------------------------

    def _verify(self, record: Inode) -> None:
        if record.mtime_nsec >= 1_000_000_000:
            raise CorruptBootstrap(f"inode {record.ino}: mtime nanoseconds {record.mtime_nsec} out of range")
        if record.is_dir:
            content, children = self._directory_content(record)
        elif record.is_reg:
            content, children = self._file_content(record), []
        elif record.is_symlink:
            if record.size != record.data_count or not record.data_count:
                raise CorruptBootstrap(f"inode {record.ino}: symlink size {record.size}, target {record.data_count}")
            content, children = self.bootstrap.heap(record.data_start, record.data_count), []
        else:
            content, children = b"", []
        xattrs = self.bootstrap.heap(record.xattr_offset, record.xattr_size) if record.xattr_size else b""
        computed = digest.record_digest(self.superblock.digester, record, xattrs=xattrs, content=content)
        if computed != record.digest:
            raise CorruptBootstrap(f"inode {record.ino}: digest mismatch (its record or content was altered)")
        for child in children:
            self._set(child, AUTHENTIC)
        self._set(record.ino, VERIFIED | AUTHENTIC)

    def _directory_content(self, record: Inode) -> tuple[bytes, list[int]]:
        """The digest input of a directory, and the children whose digests it vouches for.

        A child directory whose `parent` is not this directory is left unvouched: it fails on
        its own use, without making this directory unreadable."""
        sb = self.superblock
        buffer = self.bootstrap.buffer
        parts: list[bytes] = []
        children: list[int] = []
        previous = b""
        for position in range(record.data_count):
            index = record.data_start + position
            name_offset, name_len, _, child = layout.DIRENT.unpack_from(
                buffer, sb.dirent_table_offset + index * layout.DIRENT.size
            )
            name = self.bootstrap.heap(name_offset, name_len)
            if not name or b"/" in name or b"\x00" in name or name in (b".", b".."):
                raise CorruptBootstrap(f"inode {record.ino}: entry {position} has an invalid name {name!r}")
            if position and name <= previous:
                raise CorruptBootstrap(f"inode {record.ino}: entries are not sorted at {name!r}")
            if not 1 <= child <= sb.inode_count:
                raise CorruptBootstrap(f"inode {record.ino}: entry {name!r} names inode {child}, out of range")
            previous = name
            mode, parent, child_digest = _CHILD.unpack_from(
                buffer, sb.inode_table_offset + (child - 1) * layout.INODE.size
            )
            parts.append(struct.pack("<I", len(name)) + name + child_digest)
            if not stat.S_ISDIR(mode) or parent == record.ino:
                children.append(child)
        return b"".join(parts), children

    def _file_content(self, record: Inode) -> bytes:
        """The chunk digests of a file, after checking its run covers [0, size) in chunk_size pieces."""
        sb = self.superblock
        chunk_size = sb.chunk_size
        if record.data_count != -(-record.size // chunk_size):
            raise CorruptBootstrap(f"inode {record.ino}: {record.data_count} chunks for {record.size} bytes")
        digests: list[bytes] = []
        start = sb.chunk_table_offset + record.data_start * layout.CHUNK.size
        for position in range(record.data_count):
            blob_index, flags, _, _, size, file_offset, chunk_digest = layout.CHUNK.unpack_from(
                self.bootstrap.buffer, start + position * layout.CHUNK.size
            )
            expected_size = min(chunk_size, record.size - position * chunk_size)
            if file_offset != position * chunk_size or size != expected_size:
                raise CorruptBootstrap(
                    f"inode {record.ino}: chunk {position} holds [{file_offset}, +{size}),"
                    f" expected [{position * chunk_size}, +{expected_size})"
                )
            if flags & ~layout.KNOWN_CHUNK_FLAGS:
                raise CorruptBootstrap(f"inode {record.ino}: chunk {position} has unknown flags {flags:#x}")
            if flags & layout.CHUNK_ZERO:
                if chunk_digest != self._zero_digest(size):
                    raise CorruptBootstrap(f"inode {record.ino}: zero chunk {position} has another digest")
            elif blob_index >= sb.blob_count:
                raise CorruptBootstrap(f"inode {record.ino}: chunk {position} names blob {blob_index}, out of range")
            digests.append(chunk_digest)
        return digest.file_content(digests)

    def _zero_digest(self, size: int) -> bytes:
        found = self._zero_digests.get(size)
        if found is None:
            if len(self._zero_digests) >= MAX_ZERO_DIGESTS:
                self._zero_digests.clear()
            found = self._zero_digests[size] = digest.chunk_digest(bytes(size), self.superblock.digester)
        return found
