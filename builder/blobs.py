"""Write one data blob: compress chunks, put prefetch chunks first, name the blob by sha256.

Chunks arrive in tar order. Those of prefetch-listed files go to a head spool, the rest to a
body spool; `finish` writes the head (ordered by prefetch rank, then arrival) and then the
body into one temporary file, so a cold start reads one contiguous range. The file keeps its
temporary name until the whole build succeeds (`commit`), so a failed build leaves nothing
behind that looks like a finished blob.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import IO

from rafs.blob import compress_chunk
from rafs.outputs import give_ordinary_mode
from rafs.records import BlobRecord


@dataclass(eq=False)
class StoredChunk:
    """One chunk's stored bytes in a blob; `final_offset` is set by `BlobWriter.finish`."""

    spool_offset: int
    stored_size: int
    uncompressed_size: int
    compressed: bool
    prefetch_rank: int | None
    sequence: int
    final_offset: int = -1


@dataclass
class BlobWriter:
    """Accumulates the chunks of one blob in spool files under `directory`."""

    directory: str
    compressor: int
    head: IO[bytes] = field(init=False)
    body: IO[bytes] = field(init=False)
    chunks: list[StoredChunk] = field(default_factory=list)
    temp_path: str = ""
    blob_id: str = ""

    def __post_init__(self) -> None:
        self.head = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed in finish or discard
        self.body = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed in finish or discard

    def add(self, data: bytes, prefetch_rank: int | None) -> StoredChunk:
        stored, compressed = compress_chunk(data, self.compressor)
        spool = self.head if prefetch_rank is not None else self.body
        chunk = StoredChunk(spool.tell(), len(stored), len(data), compressed, prefetch_rank, len(self.chunks))
        spool.write(stored)
        self.chunks.append(chunk)
        return chunk

    def finish(self) -> BlobRecord:
        """Lay out head then body in a temporary file; returns the blob's record."""
        head_chunks = sorted(
            (chunk for chunk in self.chunks if chunk.prefetch_rank is not None),
            key=lambda chunk: (chunk.prefetch_rank, chunk.sequence),
        )
        body_chunks = [chunk for chunk in self.chunks if chunk.prefetch_rank is None]
        digest = hashlib.sha256()
        descriptor, self.temp_path = tempfile.mkstemp(dir=self.directory, prefix=".blob-", suffix=".tmp")
        offset = 0
        with os.fdopen(descriptor, "wb") as output:
            give_ordinary_mode(output.fileno())
            for spool, ordered in ((self.head, head_chunks), (self.body, body_chunks)):
                for chunk in ordered:
                    spool.seek(chunk.spool_offset)
                    stored = spool.read(chunk.stored_size)
                    output.write(stored)
                    digest.update(stored)
                    chunk.final_offset = offset
                    offset += chunk.stored_size
            output.flush()
            os.fsync(output.fileno())
        self.head.close()
        self.body.close()
        self.blob_id = digest.hexdigest()
        return BlobRecord(
            self.blob_id,
            offset,
            sum(chunk.uncompressed_size for chunk in self.chunks),
            len(self.chunks),
            self.compressor,
        )

    def commit(self) -> str:
        """Give the finished blob its final name, `<blob-dir>/<sha256>`."""
        final_path = os.path.join(self.directory, self.blob_id)
        os.replace(self.temp_path, final_path)
        return final_path

    def discard(self) -> None:
        """Remove every file this writer made (a failed build)."""
        for spool in (self.head, self.body):
            if not spool.closed:
                spool.close()
        if self.temp_path and os.path.exists(self.temp_path):
            os.unlink(self.temp_path)
