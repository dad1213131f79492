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

Blob-order readahead (`amplify_io` bytes, 0 = off): a read that misses extends its fetch to the
chunks stored right after its last missed chunk in the same blob, whatever file they belong to
(the builder stores files in tar order, so they are often the next ones needed), up to
`amplify_io` stored bytes, stopping at a gap or at a chunk cached or in flight. They ride in the
same range request and are claimed as flights like any other chunk, so a reader needing one
waits for this fetch instead of fetching it twice. They are optional: one that fails
verification is not cached and is nobody's error (a reader that waited for it fetches it
itself). The per-blob order comes from `daemon.blob_order`, built on the blob's first miss:
on the event loop for a small chunk table, else in a background thread, so the first miss never
waits for it (misses in that blob meanwhile get no blob readahead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from daemon.blob_order import BlobOrder
from daemon.storage.backend import BackendError, BlobBackend
from daemon.storage.cache import ChunkCache, ChunkKey
from daemon.storage.fetch import ChunkRequest, ChunkResult, fetch_chunks, read_cached
from rafs.bootstrap import Bootstrap
from rafs.errors import NydusError
from rafs.records import ChunkSlice

log = logging.getLogger(__name__)

# Cache hits that decode to at most this many bytes are served on the event loop, without a
# worker thread. Measured on the 2-core VM (`/usr/include` image, mirror in the page cache): a
# `trio.to_thread` round trip costs ~200 us, while reading, decompressing and verifying a
# cached chunk costs ~35 us below 8 KiB, ~75 us below 64 KiB and ~220 us at 64-256 KiB.
# Inline hits took remounted-cache reads of `/usr/include` from 15.7 to 24.5 MB/s. Above this
# size a thread wins (zstd and blake3 release the GIL) and one big chunk cannot stall the loop.
INLINE_HIT_BYTES = 128 << 10

# A blob's order is built on the event loop when the chunk table has at most this many records
# (about 1 ms on the 2-core VM, ~0.5 us a record), else in a background thread.
INLINE_ORDER_CHUNKS = 2048


@dataclass
class _Flight:
    """One chunk being fetched; `result` is set before `done` fires."""

    done: trio.Event = field(default_factory=trio.Event)
    result: ChunkResult | None = None
    optional: bool = False  # readahead: a failure is not retried by the fetcher


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
        amplify_io: int = 0,
    ) -> None:
        self.bootstrap = bootstrap
        self.backend = backend
        self.cache = cache
        self.validate = validate
        self.merging_size = merging_size
        self.amplify_io = amplify_io
        self.fetch_limiter = trio.CapacityLimiter(fetch_threads)
        self.cache_limiter = trio.CapacityLimiter(cache_threads)
        self.stats = ChunkStats()
        self._flights: dict[ChunkKey, _Flight] = {}
        self._orders: dict[int, BlobOrder] = {}  # by blob index, built on the blob's first miss
        self._ordering: set[int] = set()  # blob indexes whose order was asked for
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
            wanted = [request for _, request, _ in misses]
            extra = [self.request(piece) for piece in ahead if not piece.record.is_zero]
            extra = [request for request in extra if not self.cache.has(request.key)]
            extra += self._blob_readahead(wanted + extra)
            chunks = await self._fetch(wanted, extra)
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

    def _blob_readahead(self, requests: Sequence[ChunkRequest]) -> list[ChunkRequest]:
        """The chunks stored right after the last of `requests` in each blob (see the module doc)."""
        if not self.amplify_io:
            return []
        last: dict[int, ChunkRequest] = {}
        for request in requests:
            blob_index = request.record.blob_index
            if blob_index not in last or request.record.compressed_offset > last[blob_index].record.compressed_offset:
                last[blob_index] = request
        extra: list[ChunkRequest] = []
        for blob_index, request in last.items():
            order = self._blob_order(blob_index)
            if order is not None:
                extra += self._following(order, request)
        return extra

    def _blob_order(self, blob_index: int) -> BlobOrder | None:
        """The blob's chunks in stored order, or None while a background thread builds them."""
        if blob_index not in self._ordering:
            self._ordering.add(blob_index)
            if self.bootstrap.superblock.chunk_count <= INLINE_ORDER_CHUNKS:
                self._build_order(blob_index)
            else:
                threading.Thread(target=self._build_order, args=(blob_index,), daemon=True).start()
        return self._orders.get(blob_index)

    def _build_order(self, blob_index: int) -> None:
        started = time.monotonic()
        order = BlobOrder.build(self.bootstrap, blob_index)
        self._orders[blob_index] = order  # one dict store: safe to publish from a thread
        log.debug(
            "blob %d order: %d chunks, %d bytes, %.1f ms",
            blob_index,
            len(order),
            order.nbytes(),
            (time.monotonic() - started) * 1000,
        )

    def _following(self, order: BlobOrder, request: ChunkRequest) -> list[ChunkRequest]:
        """Chunks stored back to back after `request`, up to `amplify_io` bytes, none cached or in flight."""
        following: list[ChunkRequest] = []
        budget = self.amplify_io
        end = request.record.compressed_offset + request.record.compressed_size
        try:
            for index in order.after(request.record.compressed_offset):
                record = self.bootstrap.chunk(index)
                nxt = ChunkRequest(index, record, request.blob)
                if record.compressed_offset != end or record.compressed_size > budget:
                    break
                if self.cache.has(nxt.key) or nxt.key in self._flights:
                    break
                following.append(nxt)
                budget -= record.compressed_size
                end += record.compressed_size
        except NydusError as error:  # a corrupt record ends readahead, not the read
            log.warning("readahead stopped: %s", error)
        return following

    async def _fetch(
        self, requests: Sequence[ChunkRequest], optional: Sequence[ChunkRequest] = ()
    ) -> dict[ChunkKey, ChunkResult]:
        """Whole chunks for `requests` and `optional`: claim the ones nobody fetches, wait for the others.

        A reader that needs a chunk some other fetch took as optional and could not verify
        fetches it again itself (an optional chunk's failure is not retried by its fetcher).
        """
        claimed: dict[ChunkKey, _Flight] = {}
        joined: dict[ChunkKey, tuple[ChunkRequest, _Flight]] = {}
        to_fetch: list[ChunkRequest] = []
        optional_keys: set[ChunkKey] = set()
        for position, request in enumerate([*requests, *optional]):
            key = request.key
            if key in claimed or key in joined:
                continue
            is_optional = position >= len(requests)
            flight = self._flights.get(key)
            if flight is None:
                flight = claimed[key] = self._flights[key] = _Flight(optional=is_optional)
                to_fetch.append(request)
                if is_optional:
                    optional_keys.add(key)
            elif not is_optional:
                joined[key] = (request, flight)
        results: dict[ChunkKey, ChunkResult] = {}
        if to_fetch:
            try:
                results = await trio.to_thread.run_sync(
                    self._load, to_fetch, optional_keys, limiter=self.fetch_limiter, abandon_on_cancel=True
                )
            finally:
                for key, flight in claimed.items():
                    result = results.get(key)
                    flight.result = BackendError("fetch cancelled") if result is None else result
                    flight.done.set()
                    del self._flights[key]
            self.stats.fetched += len(to_fetch)
        again: list[ChunkRequest] = []
        for key, (request, flight) in joined.items():
            self.stats.shared_waits += 1
            await flight.done.wait()
            assert flight.result is not None
            if flight.optional and isinstance(flight.result, NydusError):
                again.append(request)
            else:
                results[key] = flight.result
        if again:
            results.update(await self._fetch(again))
        return results

    def _load(self, requests: Sequence[ChunkRequest], optional: set[ChunkKey]) -> dict[ChunkKey, ChunkResult]:
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
                    # readahead extends the run of the last miss: still one request
                    merging_size=self.merging_size + (self.amplify_io if optional else 0),
                    optional=optional,
                )
            )
        return results
