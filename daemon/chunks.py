"""`ChunkSource`: the trio side of the read path, from chunk slices to bytes.

Backend fetches never run on the event loop: they go to worker threads under a
`CapacityLimiter`, so readers of cached data keep going while every fetch thread waits on a
slow backend. Cache hits of at most `INLINE_HIT_BYTES` are decoded on the event loop (one pread
of the local mirror, decompress, verify), because that is cheaper than the thread round trip;
larger hits go to their own worker threads. Whether a chunk is cached is known without I/O
(`ChunkCache.has`), so a miss costs one thread hop, not two. Concurrent misses of one chunk
are fetched once: the first reader registers a flight in `_flights` and fetches; later readers
wait on its event and share its result. Claiming a flight has no `await` between the check and the insert, so two
tasks cannot both claim one chunk (the event loop runs one task at a time between awaits).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from daemon.storage.backend import BackendError, BlobBackend
from daemon.storage.cache import ChunkCache, ChunkKey
from daemon.storage.fetch import ChunkRequest, ChunkResult, fetch_chunks, read_cached
from rafs.bootstrap import Bootstrap
from rafs.records import ChunkSlice

log = logging.getLogger(__name__)

# Cache hits that decode to at most this many bytes are served on the event loop, without a
# worker thread. Measured on the 2-core VM (`/usr/include` image, mirror in the page cache): a
# `trio.to_thread` round trip costs ~200 us, while reading, decompressing and verifying a
# cached chunk costs ~35 us below 8 KiB, ~75 us below 64 KiB and ~220 us at 64-256 KiB.
# Inline hits took remounted-cache reads of `/usr/include` from 15.7 to 24.5 MB/s. Above this
# size a thread wins (zstd and blake3 release the GIL) and one big chunk cannot stall the loop.
INLINE_HIT_BYTES = 128 << 10


@dataclass
class _Flight:
    """One chunk being fetched; `result` is set before `done` fires."""

    done: trio.Event = field(default_factory=trio.Event)
    result: ChunkResult | None = None


@dataclass
class ChunkStats:
    cache_hits: int = 0
    fetched: int = 0
    shared_waits: int = 0
    errors: int = 0


class ChunkSource:
    """Serves chunk slices of one bootstrap from a cache, or a backend on a miss."""

    def __init__(
        self,
        bootstrap: Bootstrap,
        backend: BlobBackend,
        cache: ChunkCache,
        *,
        validate: bool = True,
        merging_size: int = 1 << 20,
        fetch_threads: int = 4,
        cache_threads: int = 8,
    ) -> None:
        self.bootstrap = bootstrap
        self.backend = backend
        self.cache = cache
        self.validate = validate
        self.merging_size = merging_size
        self.fetch_limiter = trio.CapacityLimiter(fetch_threads)
        self.cache_limiter = trio.CapacityLimiter(cache_threads)
        self.stats = ChunkStats()
        self._flights: dict[ChunkKey, _Flight] = {}
        cache.prepare(blob.blob_id for blob in bootstrap.blobs)

    def request(self, piece: ChunkSlice) -> ChunkRequest:
        return ChunkRequest(piece.chunk_index, piece.record, self.bootstrap.blobs[piece.record.blob_index])

    async def read(self, pieces: Sequence[ChunkSlice], ahead: Sequence[ChunkSlice] = ()) -> list[bytes]:
        """The bytes of every slice, in order; the first failing chunk's error is raised.

        `ahead` (readahead) chunks that are not cached join the fetch of this read's misses, in
        the same merged ranges; they are only cached, and their failures are not this read's.
        """
        out: list[bytes | None] = [bytes(piece.length) if piece.record.is_zero else None for piece in pieces]
        hits: list[tuple[int, ChunkRequest, ChunkSlice]] = []
        misses: list[tuple[int, ChunkRequest, ChunkSlice]] = []
        for position, piece in enumerate(pieces):
            if out[position] is None:
                request = self.request(piece)
                (hits if self.cache.has(request.key) else misses).append((position, request, piece))
        if hits:
            if sum(piece.record.uncompressed_size for _, _, piece in hits) <= INLINE_HIT_BYTES:
                cached = self._read_cached(hits)
            else:
                cached = await trio.to_thread.run_sync(self._read_cached, hits, limiter=self.cache_limiter)
            for item, data in zip(hits, cached, strict=True):
                if data is None:
                    misses.append(item)
                else:
                    out[item[0]] = data[item[2].start : item[2].start + item[2].length]
            self.stats.cache_hits += len(hits)
        if misses:
            extra = [self.request(piece) for piece in ahead if not piece.record.is_zero]
            extra = [request for request in extra if not self.cache.has(request.key)]
            chunks = await self._fetch([request for _, request, _ in misses] + extra)
            for position, request, piece in misses:
                result = chunks[request.key]
                if not isinstance(result, bytes):
                    self.stats.errors += 1
                    raise result
                out[position] = result[piece.start : piece.start + piece.length]
        return [part if part is not None else b"" for part in out]

    def _read_cached(self, wanted: Sequence[tuple[int, ChunkRequest, ChunkSlice]]) -> list[bytes | None]:
        return [read_cached(self.cache, request, self.bootstrap.digester, self.validate) for _, request, _ in wanted]

    async def fetch(self, requests: Sequence[ChunkRequest]) -> dict[ChunkKey, ChunkResult]:
        """Whole chunks into the cache (single flight) for prefetch and readahead; errors are returned."""
        return await self._fetch(requests)

    async def _fetch(self, requests: Sequence[ChunkRequest]) -> dict[ChunkKey, ChunkResult]:
        """Whole chunks for `requests`: claim the ones nobody fetches, wait for the others."""
        claimed: dict[ChunkKey, _Flight] = {}
        joined: dict[ChunkKey, _Flight] = {}
        to_fetch: list[ChunkRequest] = []
        for request in requests:
            key = request.key
            if key in claimed or key in joined:
                continue
            flight = self._flights.get(key)
            if flight is None:
                flight = claimed[key] = self._flights[key] = _Flight()
                to_fetch.append(request)
            else:
                joined[key] = flight
        results: dict[ChunkKey, ChunkResult] = {}
        if to_fetch:
            try:
                results = await trio.to_thread.run_sync(
                    self._load, to_fetch, limiter=self.fetch_limiter, abandon_on_cancel=True
                )
            finally:
                for key, flight in claimed.items():
                    result = results.get(key)
                    flight.result = BackendError("fetch cancelled") if result is None else result
                    flight.done.set()
                    del self._flights[key]
            self.stats.fetched += len(to_fetch)
        for key, flight in joined.items():
            self.stats.shared_waits += 1
            await flight.done.wait()
            assert flight.result is not None
            results[key] = flight.result
        return results

    def _load(self, requests: Sequence[ChunkRequest]) -> dict[ChunkKey, ChunkResult]:
        """In a worker thread: chunks another flight cached meanwhile, then fetch the rest."""
        results: dict[ChunkKey, ChunkResult] = {}
        missing: list[ChunkRequest] = []
        for request in requests:
            data = read_cached(self.cache, request, self.bootstrap.digester, self.validate)
            if data is None:
                missing.append(request)
            else:
                results[request.key] = data
        if missing:
            results.update(
                fetch_chunks(
                    self.backend,
                    self.cache,
                    missing,
                    digester=self.bootstrap.digester,
                    validate=self.validate,
                    merging_size=self.merging_size,
                )
            )
        return results
