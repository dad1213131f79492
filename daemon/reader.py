"""`FileReader.read`: the read path in one screen.

File range -> chunk slices (a lookup in the mmapped chunk table) -> bytes of each slice (cache
or backend, see `daemon.chunks`) -> joined reply. Nothing else happens here.
"""

from __future__ import annotations

from daemon.chunks import ChunkSource
from rafs.bootstrap import Bootstrap


class FileReader:
    """Reads file contents of one bootstrap."""

    def __init__(self, bootstrap: Bootstrap, chunks: ChunkSource) -> None:
        self.bootstrap = bootstrap
        self.chunks = chunks

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of file `ino`, short only at the end of the file."""
        pieces = self.bootstrap.chunk_span(ino, offset, size)
        parts = await self.chunks.read(pieces)
        return b"".join(parts)
