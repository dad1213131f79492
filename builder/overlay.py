"""Merge layers into one tree with OCI overlay semantics.

A layer's whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) apply only to the layers
below it, so each layer is applied in two passes: first every deletion against the tree built
so far, then every addition in tar order. A later entry replaces what is at its path, except
that a directory over a directory merges (the new metadata, the old children stay).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from builder.chunker import PendingChunk
from builder.layers import DIRECTORY, HARDLINK, LayerEntry
from rafs import layout
from rafs.errors import BuildError
from rafs.tree import FsNode, new_directory


@dataclass(eq=False)
class BuildNode(FsNode):
    """A tree node whose chunks are still pending (blob index and offsets not final)."""

    pending: list[PendingChunk] = field(default_factory=list)


def node_for(entry: LayerEntry, pending: list[PendingChunk]) -> BuildNode:
    """A fresh node with the entry's metadata and content reference."""
    return BuildNode(
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        mtime_ns=entry.mtime_ns,
        size=entry.size,
        rdev=entry.rdev,
        xattrs=dict(entry.xattrs),
        symlink_target=entry.link_target if entry.kind == "symlink" else b"",
        pending=pending,
    )


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


class Overlay:
    """The merged tree of the layers applied so far."""

    def __init__(self) -> None:
        self.root: FsNode = new_directory()
        self.root.implicit = True

    def apply_layer(
        self,
        entries: list[tuple[LayerEntry, list[PendingChunk]]],
        layer: str,
        *,
        keep_whiteouts: bool = False,
    ) -> None:
        """Apply one layer's entries (already read and chunked) on top of the tree."""
        seen: set[bytes] = set()
        for entry, _ in entries:
            if entry.path in seen:
                raise BuildError("duplicate path within one layer", layer=layer, entry=_show(entry.path))
            seen.add(entry.path)
        if not keep_whiteouts:
            for entry, _ in entries:
                self._apply_whiteout(entry, layer)
        for entry, pending in entries:
            name = entry.path.rsplit(b"/", 1)[-1]
            if not keep_whiteouts and name.startswith(layout.WHITEOUT_PREFIX):
                continue
            self._add(entry, pending, layer, layer_alone=keep_whiteouts)

    def _lookup(self, path: bytes) -> FsNode | None:
        node: FsNode | None = self.root
        for part in path.split(b"/") if path else []:
            if node is None or not node.is_dir:
                return None
            node = node.children.get(part)
        return node

    def _apply_whiteout(self, entry: LayerEntry, layer: str) -> None:
        directory_path, _, name = entry.path.rpartition(b"/")
        if not name.startswith(layout.WHITEOUT_PREFIX):
            return
        directory = self._lookup(directory_path)
        if name == layout.OPAQUE_WHITEOUT:
            if directory is not None and directory.is_dir:
                directory.children.clear()
            return
        hidden = name[len(layout.WHITEOUT_PREFIX) :]
        if not hidden or hidden in (b".", b".."):
            raise BuildError("malformed whiteout name", layer=layer, entry=_show(entry.path))
        if directory is None or not directory.is_dir or hidden not in directory.children:
            raise BuildError(
                "whiteout for a path that does not exist in lower layers", layer=layer, entry=_show(entry.path)
            )
        del directory.children[hidden]

    def _parent_of(self, path: bytes) -> FsNode:
        """The directory that will hold `path`, creating missing (or replacing non-dir) parents."""
        node = self.root
        parts = path.split(b"/")[:-1]
        for part in parts:
            child = node.children.get(part)
            if child is None or not child.is_dir:
                child = new_directory()
                child.implicit = True
                node.children[part] = child
            node = child
        return node

    def _add(self, entry: LayerEntry, pending: list[PendingChunk], layer: str, *, layer_alone: bool = False) -> None:
        if not entry.path:
            if not entry.implicit:
                self._update_directory(self.root, entry)
            return
        name = entry.path.rsplit(b"/", 1)[-1]
        if entry.kind == HARDLINK:
            target = self._lookup(entry.link_target)
            if target is None:
                # A layer bootstrap holds one layer alone, so a link into a lower layer has nothing
                # to refer to; building the stack together resolves it (OCI allows such links).
                hint = (
                    " (not in this layer: a --layer bootstrap cannot link into lower layers; build the layers together)"
                )
                raise BuildError(
                    f"hard link to missing target {_show(entry.link_target)!r}{hint if layer_alone else ''}",
                    layer=layer,
                    entry=_show(entry.path),
                )
            if target.is_dir:
                raise BuildError("hard link to a directory", layer=layer, entry=_show(entry.path))
            self._parent_of(entry.path).children[name] = target
            return
        parent = self._parent_of(entry.path)
        existing = parent.children.get(name)
        if entry.kind == DIRECTORY and existing is not None and existing.is_dir:
            if not entry.implicit:
                self._update_directory(existing, entry)
            return
        parent.children[name] = node = node_for(entry, pending)
        node.implicit = entry.implicit

    @staticmethod
    def _update_directory(node: FsNode, entry: LayerEntry) -> None:
        if entry.kind != DIRECTORY:
            raise BuildError("the root must be a directory", entry=_show(entry.path))
        node.mode = stat.S_IFDIR | (entry.permissions & 0o7777)
        node.uid, node.gid, node.mtime_ns = entry.uid, entry.gid, entry.mtime_ns
        node.xattrs = dict(entry.xattrs)
        node.implicit = False
