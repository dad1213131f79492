"""The native layer's own two errors. `native` imports nothing from the project: `rafs` turns
these into `CorruptBootstrap` and `CorruptChunk`, adding the inode, blob and chunk they concern."""

from __future__ import annotations


class BadChunkTable(Exception):
    """A chunk table that contradicts itself: a run outside the buffer, a gap, bad flags or blob index."""


class BadFrame(Exception):
    """Stored chunk bytes that do not decompress to exactly the size their record promises."""
