"""`FileReader.read`: the read path in one screen.

File range -> chunk slices (a lookup in the mmapped chunk table) -> bytes of each slice (cache
or backend, see `daemon.chunks`) -> joined reply. A read that continues the previous read of
the same file also names the next `readahead` bytes, whose missing chunks ride along in the
same fetch.
"""

from __future__ import annotations

from daemon.chunks import ChunkSource
from rafs.bootstrap import Bootstrap

MAX_TRACKED_FILES = 4096


class FileReader:
    """Reads file contents of one bootstrap."""

    def __init__(self, bootstrap: Bootstrap, chunks: ChunkSource, *, readahead: int = 0) -> None:
        self.bootstrap = bootstrap
        self.chunks = chunks
        self.readahead = readahead
        self._next_offset: dict[int, int] = {}  # where each file's last read ended

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of file `ino`, short only at the end of the file."""
        pieces = self.bootstrap.chunk_span(ino, offset, size)
        ahead = (
            self.bootstrap.chunk_span(ino, offset + size, self.readahead) if self.sequential(ino, offset, size) else []
        )
        parts = await self.chunks.read(pieces, ahead)
        return b"".join(parts)

    def sequential(self, ino: int, offset: int, size: int) -> bool:
        """Whether this read continues the file's previous one (readahead then pays off)."""
        if len(self._next_offset) > MAX_TRACKED_FILES:
            self._next_offset.clear()
        follows = offset > 0 and self._next_offset.get(ino) == offset
        self._next_offset[ino] = offset + size
        return follows and self.readahead > 0
