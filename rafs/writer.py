"""Serialise a `FsNode` tree into bootstrap bytes, deterministically.

Inode numbers are given in breadth-first order over sorted names, root = 1; a hard-linked node
keeps the number of the first name that reaches it. Directory entries and chunk runs are laid
out in inode order, and the heap interns repeated strings, so the same tree always gives the
same bytes.
"""

from __future__ import annotations

import stat
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from rafs import digest, layout
from rafs.records import BlobRecord
from rafs.tree import FsNode


@dataclass
class _Heap:
    """Byte heap with interning: equal byte strings are stored once."""

    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    offsets: dict[bytes, int] = field(default_factory=dict)

    def add(self, data: bytes) -> int:
        if not data:
            return 0
        found = self.offsets.get(data)
        if found is not None:
            return found
        offset = self.size
        self.parts.append(data)
        self.size += len(data)
        self.offsets[data] = offset
        return offset


def number_inodes(root: FsNode) -> list[FsNode]:
    """Nodes in inode order (index 0 is inode 1), breadth first over sorted names."""
    order: list[FsNode] = [root]
    seen = {id(root)}
    queue: deque[FsNode] = deque([root])
    while queue:
        node = queue.popleft()
        for name in sorted(node.children):
            child = node.children[name]
            if id(child) in seen:
                if child.is_dir:
                    raise ValueError(f"directory {name!r} is reachable twice")
                continue
            seen.add(id(child))
            order.append(child)
            if child.is_dir:
                queue.append(child)
    return order


def count_links(order: Sequence[FsNode]) -> dict[int, int]:
    """nlink per node id: names for non-directories, 2 + subdirectories for directories."""
    links: dict[int, int] = {}
    for node in order:
        if node.is_dir:
            links[id(node)] = 2 + sum(1 for child in node.children.values() if child.is_dir)
    for node in order:
        for child in node.children.values():
            if not child.is_dir:
                links[id(child)] = links.get(id(child), 0) + 1
    links.setdefault(id(order[0]), 2)
    return links


def compute_digests(order: Sequence[FsNode], links: dict[int, int], digester: int) -> dict[int, bytes]:
    """The Merkle digest of every node, children before parents.

    Non-directories first (a hard link may sit in a directory that comes after its first name
    in BFS order), then directories in reverse BFS order.
    """
    digests: dict[int, bytes] = {}
    for node in [*(n for n in order if not n.is_dir), *(n for n in reversed(order) if n.is_dir)]:
        if node.is_dir:
            content = digest.directory_content((name, digests[id(child)]) for name, child in node.children.items())
        elif node.is_reg:
            content = digest.file_content(chunk.digest for chunk in node.chunks)
        elif node.is_symlink:
            content = node.symlink_target
        else:
            content = b""
        digests[id(node)] = digest.inode_digest(
            digester,
            mode=node.mode,
            nlink=links[id(node)],
            uid=node.uid,
            gid=node.gid,
            size=node_size(node),
            rdev=node.rdev,
            mtime_ns=node.mtime_ns,
            xattrs=digest.encode_xattrs(node.xattrs),
            content=content,
        )
    return digests


def node_size(node: FsNode) -> int:
    """st_size as the bootstrap records it: file length, target length, or 0."""
    if node.is_reg:
        return node.size
    if node.is_symlink:
        return len(node.symlink_target)
    return 0


def write_bootstrap(
    root: FsNode,
    blobs: Sequence[BlobRecord],
    *,
    chunk_size: int = layout.DEFAULT_CHUNK_SIZE,
    digester: int = layout.DIGESTER_BLAKE3,
    features: int = 0,
    prefetch: Sequence[FsNode] = (),
    prefetch_chunks: Sequence[tuple[FsNode, int]] = (),
) -> bytes:
    """The complete bootstrap for `root`; `prefetch` lists files in the order to fetch them,
    `prefetch_chunks` (file, chunk index in it) the chunks, where the list named parts of files."""
    if not root.is_dir:
        raise ValueError("the root must be a directory")
    order = number_inodes(root)
    ino_of = {id(node): index + 1 for index, node in enumerate(order)}
    links = count_links(order)
    digests = compute_digests(order, links, digester)

    heap = _Heap()
    heap.add(b"\x00")  # offset 0 is reserved for "empty", so real strings start at 1
    parent_of: dict[int, int] = {id(root): layout.ROOT_INO}
    inode_parts: list[bytes] = []
    dirent_parts: list[bytes] = []
    chunk_parts: list[bytes] = []
    for node in order:
        ino = ino_of[id(node)]
        data_start = data_count = 0
        if node.is_dir:
            data_start = len(dirent_parts)
            for name in sorted(node.children):
                child = node.children[name]
                if child.is_dir:
                    parent_of[id(child)] = ino
                dirent_parts.append(layout.DIRENT.pack(heap.add(name), len(name), 0, ino_of[id(child)]))
            data_count = len(node.children)
        elif node.is_reg:
            data_start = len(chunk_parts)
            chunk_parts.extend(chunk.pack() for chunk in node.chunks)
            data_count = len(node.chunks)
        elif node.is_symlink:
            data_start = heap.add(node.symlink_target)
            data_count = len(node.symlink_target)
        xattrs = digest.encode_xattrs(node.xattrs)
        mtime_sec, mtime_nsec = divmod(node.mtime_ns, 1_000_000_000)
        inode_parts.append(
            layout.INODE.pack(
                node.mode,
                links[id(node)],
                node.uid,
                node.gid,
                node_size(node),
                node.rdev,
                mtime_sec,
                mtime_nsec,
                layout.INODE_IMPLICIT_DIR if node.implicit and node.is_dir and features & layout.FEATURE_LAYER else 0,
                parent_of.get(id(node), 0),
                data_start,
                data_count,
                len(xattrs),
                heap.add(xattrs),
                digests[id(node)],
            )
        )

    prefetch_inos = []
    for node in prefetch:
        if id(node) in ino_of and stat.S_ISREG(node.mode) and ino_of[id(node)] not in prefetch_inos:
            prefetch_inos.append(ino_of[id(node)])
    chunk_entries: list[tuple[int, int]] = []
    listed_chunks: set[tuple[int, int]] = set()
    for node, index in prefetch_chunks:
        entry = (ino_of.get(id(node), 0), index)
        if entry[0] and node.is_reg and 0 <= index < len(node.chunks) and entry not in listed_chunks:
            listed_chunks.add(entry)
            chunk_entries.append(entry)

    sections = [
        b"".join(inode_parts),
        b"".join(dirent_parts),
        b"".join(chunk_parts),
        b"".join(blob.pack() for blob in blobs),
        b"".join(layout.PREFETCH.pack(ino) for ino in prefetch_inos),
        b"".join(layout.PREFETCH_CHUNK.pack(ino, index) for ino, index in chunk_entries),
        b"".join(heap.parts),
    ]
    offsets = []
    position = layout.SUPERBLOCK_SIZE
    for section in sections:
        offsets.append(position)
        position += len(section)
    fields = (
        layout.MAGIC,
        layout.VERSION,
        layout.SUPERBLOCK_SIZE,
        features,
        chunk_size,
        digester,
        len(order),
        offsets[0],
        len(dirent_parts),
        offsets[1],
        len(chunk_parts),
        offsets[2],
        len(blobs),
        offsets[3],
        len(prefetch_inos),
        offsets[4],
        offsets[6],
        heap.size,
        digests[id(root)],
        len(chunk_entries),
        offsets[5],
    )
    without_crc = layout.SUPERBLOCK.pack(*fields, 0)[:-4]
    superblock = layout.SUPERBLOCK.pack(*fields, zlib.crc32(without_crc))
    return superblock + b"".join(sections)
