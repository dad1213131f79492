"""Write one data blob: compress chunks, put prefetch chunks first, name the blob by sha256.

Chunks arrive in tar order. Those of prefetch-listed files go to a head spool, the rest to a
body spool; `finish` writes the head (ordered by prefetch rank, then arrival) and then the
body into one temporary file, so a cold start reads one contiguous range. The file keeps its
temporary name until the whole build succeeds (`commit`), so a failed build leaves nothing
behind that looks like a finished blob.

Compression runs in worker threads (zstd and LZ4 release the GIL), beside the build's own
reading, unpacking and digesting. Each chunk's stored bytes are written with its own record and
`finish` lays chunks out by prefetch rank and arrival, so the blob is byte for byte what one
thread would write.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

from rafs.blob import compress_chunk
from rafs.outputs import give_ordinary_mode
from rafs.records import BlobRecord

COMPRESS_THREADS = max(1, min(4, os.cpu_count() or 1))
# Chunks handed to the compressing threads and not yet written: bounds the memory held (at most
# this many chunks, compressed and not, of up to `chunk_size` each).
MAX_PENDING_CHUNKS = 4 * COMPRESS_THREADS


@dataclass(eq=False)
class StoredChunk:
    """One chunk's stored bytes in a blob. Where and how it is stored is known once its
    compression is done and it is written to a spool (by `BlobWriter.finish` at the latest);
    `final_offset` is set by `finish`."""

    uncompressed_size: int
    prefetch_rank: int | None
    sequence: int
    spool_offset: int = -1
    stored_size: int = -1
    compressed: bool = False
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
    _pool: ThreadPoolExecutor = field(init=False)
    _pending: deque[tuple[StoredChunk, Future[tuple[bytes, bool]]]] = field(init=False, default_factory=deque)

    def __post_init__(self) -> None:
        self.head = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed in finish or discard
        self.body = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed in finish or discard
        self._pool = ThreadPoolExecutor(max_workers=COMPRESS_THREADS, thread_name_prefix="compress")

    def add(self, data: bytes, prefetch_rank: int | None) -> StoredChunk:
        """Queue `data` for compression; it is written to its spool in the order chunks were added."""
        chunk = StoredChunk(len(data), prefetch_rank, len(self.chunks))
        self.chunks.append(chunk)
        self._pending.append((chunk, self._pool.submit(compress_chunk, data, self.compressor)))
        self._write_done(wait_for=len(self._pending) - MAX_PENDING_CHUNKS)
        return chunk

    def _write_done(self, wait_for: int) -> None:
        """Write the compressed chunks at the head of the queue: the first `wait_for` even if not done yet."""
        while self._pending and (wait_for > 0 or self._pending[0][1].done()):
            chunk, future = self._pending.popleft()
            stored, chunk.compressed = future.result()
            spool = self.head if chunk.prefetch_rank is not None else self.body
            chunk.spool_offset = spool.tell()
            chunk.stored_size = len(stored)
            spool.write(stored)
            wait_for -= 1

    def finish(self) -> BlobRecord:
        """Lay out head then body in a temporary file; returns the blob's record."""
        self._write_done(wait_for=len(self._pending))
        self._pool.shutdown()
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
        self._pool.shutdown(cancel_futures=True)
        self._pending.clear()
        for spool in (self.head, self.body):
            if not spool.closed:
                spool.close()
        if self.temp_path and os.path.exists(self.temp_path):
            os.unlink(self.temp_path)
