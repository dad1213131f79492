"""`FileReader.read`: the read path in one screen.

File range -> chunk slices (a lookup in the mmapped chunk table) -> tell readahead what was read
-> bytes of each slice (cache, or a fetch; see `daemon.chunks`) -> joined reply.
"""

from __future__ import annotations

from daemon.chunks import ChunkSource
from daemon.readahead import Readahead
from daemon.timeline import Timeline
from rafs.bootstrap import Bootstrap


class FileReader:
    """Reads file contents of one bootstrap."""

    def __init__(
        self, bootstrap: Bootstrap, chunks: ChunkSource, readahead: Readahead, timeline: Timeline | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.chunks = chunks
        self.readahead = readahead
        self.timeline = timeline

    def opened(self, ino: int) -> None:
        """A file was opened (readahead may queue it whole)."""
        self.readahead.opened(ino)

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of file `ino`, short only at the end of the file."""
        pieces = self.bootstrap.chunk_span(ino, offset, size)
        self.readahead.followed(ino, offset, size)
        self.readahead.used(pieces)
        self.readahead.reached(ino, pieces)
        parts = await self.chunks.read(pieces)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if self.timeline is not None:
            self.timeline.read_done(ino, offset, len(data))
        return data
