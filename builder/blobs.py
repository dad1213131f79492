"""Write one data blob: compress chunks, put prefetch chunks first, name the blob by sha256.

Chunks arrive in tar order and are spooled as they come. Their prefetch ranks are given at the
end of the build (`StoredChunk.prefetch_rank`), when the whole tree is known: a prefetch list
guessed from the image's entrypoint needs file contents (`read_chunk`) to be made. `finish`
then writes the ranked chunks (by rank, then arrival) and after them the rest (by arrival) into
one temporary file, so a cold start reads one contiguous range. The file keeps its temporary
name until the whole build succeeds (`commit`), so a failed build leaves nothing behind that
looks like a finished blob.

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

import native
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
    compression is done and it is written to the spool (by `BlobWriter.seal` at the latest);
    `prefetch_rank` may be given until `finish`, which sets `final_offset`."""

    uncompressed_size: int
    sequence: int
    prefetch_rank: int | None = None
    spool_offset: int = -1
    stored_size: int = -1
    compressed: bool = False
    final_offset: int = -1


@dataclass
class BlobWriter:
    """Accumulates the chunks of one blob in spool files under `directory`."""

    directory: str
    compressor: int
    spool: IO[bytes] = field(init=False)
    chunks: list[StoredChunk] = field(default_factory=list)
    temp_path: str = ""
    blob_id: str = ""
    _pool: ThreadPoolExecutor = field(init=False)
    _pending: deque[tuple[StoredChunk, Future[tuple[bytes, bool]]]] = field(init=False, default_factory=deque)

    def __post_init__(self) -> None:
        self.spool = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed in finish or discard
        self._pool = ThreadPoolExecutor(max_workers=COMPRESS_THREADS, thread_name_prefix="compress")

    def add(self, data: bytes) -> StoredChunk:
        """Queue `data` for compression; it is written to the spool in the order chunks were added."""
        chunk = StoredChunk(len(data), len(self.chunks))
        self.chunks.append(chunk)
        self._pending.append((chunk, self._pool.submit(compress_chunk, data, self.compressor)))
        self._write_done(wait_for=len(self._pending) - MAX_PENDING_CHUNKS)
        return chunk

    def _write_done(self, wait_for: int) -> None:
        """Write the compressed chunks at the head of the queue: the first `wait_for` even if not done yet."""
        while self._pending and (wait_for > 0 or self._pending[0][1].done()):
            chunk, future = self._pending.popleft()
            stored, chunk.compressed = future.result()
            chunk.spool_offset = self.spool.tell()
            chunk.stored_size = len(stored)
            self.spool.write(stored)
            wait_for -= 1

    def seal(self) -> None:
        """No more chunks: wait for every compression and write it, so any chunk can be read."""
        self._write_done(wait_for=len(self._pending))
        self._pool.shutdown()
        self.spool.flush()

    def read_chunk(self, chunk: StoredChunk) -> bytes:
        """The uncompressed bytes of a chunk of this blob (after `seal`)."""
        stored = os.pread(self.spool.fileno(), chunk.stored_size, chunk.spool_offset)
        if not chunk.compressed:
            return stored
        output = bytearray(chunk.uncompressed_size)
        native.decompress_batch(self.compressor, stored, [(0, len(stored), True, chunk.uncompressed_size)], output)
        return bytes(output)

    def finish(self) -> BlobRecord:
        """Lay out the ranked chunks, then the rest, in a temporary file; returns the blob's record."""
        self.seal()
        ordered = sorted(
            self.chunks,
            key=lambda chunk: (chunk.prefetch_rank is None, chunk.prefetch_rank or 0, chunk.sequence),
        )
        digest = hashlib.sha256()
        descriptor, self.temp_path = tempfile.mkstemp(dir=self.directory, prefix=".blob-", suffix=".tmp")
        offset = 0
        with os.fdopen(descriptor, "wb") as output:
            give_ordinary_mode(output.fileno())
            for chunk in ordered:
                stored = os.pread(self.spool.fileno(), chunk.stored_size, chunk.spool_offset)
                output.write(stored)
                digest.update(stored)
                chunk.final_offset = offset
                offset += chunk.stored_size
            output.flush()
            os.fsync(output.fileno())
        self.spool.close()
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
        if not self.spool.closed:
            self.spool.close()
        if self.temp_path and os.path.exists(self.temp_path):
            os.unlink(self.temp_path)
