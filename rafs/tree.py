"""The in-memory file tree: what the builder produces and the bootstrap writer consumes.

A `FsNode` is one inode. Hard links are the same `FsNode` object reachable under several names;
directories are never hard-linked. Names are bytes, as on disk.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from rafs.records import ChunkRecord


@dataclass(eq=False)
class FsNode:
    """One inode of the tree, with its content reference (children, chunks or target)."""

    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    symlink_target: bytes = b""
    children: dict[bytes, FsNode] = field(default_factory=dict)
    chunks: list[ChunkRecord] = field(default_factory=list)
    # A directory made only to hold children that a layer named (the layer had no entry for it).
    # Layer bootstraps record it, so that `merge` does not let it overwrite a lower layer's
    # metadata for the same directory.
    implicit: bool = False

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def new_directory(mode: int = 0o755, uid: int = 0, gid: int = 0, mtime_ns: int = 0) -> FsNode:
    """A directory node; `mode` is the permission bits only."""
    return FsNode(mode=stat.S_IFDIR | (mode & 0o7777), uid=uid, gid=gid, mtime_ns=mtime_ns)


def walk(root: FsNode) -> list[tuple[bytes, FsNode]]:
    """Every (path, node) under `root`, depth first with names sorted; the root's path is b"/"."""
    result: list[tuple[bytes, FsNode]] = []
    stack: list[tuple[bytes, FsNode]] = [(b"/", root)]
    while stack:
        path, node = stack.pop()
        result.append((path, node))
        prefix = b"" if path == b"/" else path
        for name in sorted(node.children, reverse=True):
            stack.append((prefix + b"/" + name, node.children[name]))
    return result
