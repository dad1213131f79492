"""Fetch missing chunks: one range read per run of neighbours, decode and verify, cache.

Synchronous: the daemon calls `fetch_chunks` from a worker thread. Every chunk is verified
against its digest before anything is published (`rafs.blob.decode_run`); what verified goes to
the cache as uncompressed bytes, so a later hit needs no decompression and no digest. A chunk
that fails is reported as a `ChunkError` for that chunk alone and never reaches the cache, while
its neighbours in the same range are served. A failed chunk is fetched once more on its own,
from the origin (past any mirror or proxy, which may be what altered it: bytes altered in
transit or by a cache pass the second time; a corrupt blob fails again and its error stands),
except `optional` chunks (readahead: nobody waits for them), which are just not cached.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from daemon.storage.backend import BackendError, BlobBackend
from daemon.storage.cache import CacheError, ChunkCache, ChunkKey
from daemon.storage.purpose import reading
from rafs.blob import decode_run
from rafs.errors import ChunkError, NydusError
from rafs.records import BlobRecord, ChunkRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """One chunk the read path needs: its index in the chunk table, record and blob.

    The one chunk noun of the daemon: built by `ChunkSource.request`, carried to the fetch and
    the cache, which know it by `key` (blob and stored offset) and `record.digest`.
    """

    chunk_index: int
    record: ChunkRecord
    blob: BlobRecord

    @property
    def key(self) -> ChunkKey:
        return ChunkKey(self.blob.blob_id, self.record.compressed_offset)


ChunkResult = bytes | NydusError


def merge_ranges(requests: Sequence[ChunkRequest], merging_size: int) -> list[list[ChunkRequest]]:
    """Runs of chunks stored back to back in one blob, each spanning at most `merging_size`.

    A single chunk larger than `merging_size` still forms a run of its own. Runs come in the
    order their first chunk appears in `requests` (a prefetch list is in access order).
    """
    unique = {request.key: request for request in requests}
    first_seen = {key: position for position, key in enumerate(unique)}
    ordered = sorted(unique.values(), key=lambda r: (r.blob.blob_id, r.record.compressed_offset))
    runs: list[list[ChunkRequest]] = []
    for request in ordered:
        if runs:
            run = runs[-1]
            last, first = run[-1], run[0]
            end = request.record.compressed_offset + request.record.compressed_size
            if (
                request.blob.blob_id == last.blob.blob_id
                and request.record.compressed_offset == last.record.compressed_offset + last.record.compressed_size
                and end - first.record.compressed_offset <= merging_size
            ):
                run.append(request)
                continue
        runs.append([request])
    runs.sort(key=lambda run: min(first_seen[request.key] for request in run))
    return runs


def run_bytes(run: Sequence[ChunkRequest]) -> int:
    """Stored bytes a run's range request carries."""
    return run[-1].record.compressed_offset + run[-1].record.compressed_size - run[0].record.compressed_offset


def fetch_run(backend: BlobBackend, run: Sequence[ChunkRequest], digester: int) -> dict[ChunkKey, ChunkResult]:
    """Read one run with a single range request; every chunk's verified bytes or its error."""
    start = run[0].record.compressed_offset
    try:
        stored_run = backend.read_range(run[0].blob.blob_id, start, run_bytes(run))
    except BackendError as error:
        return {request.key: error for request in run}
    pieces = decode_run(stored_run, start, [request.record for request in run], run[0].blob.compressor, digester)
    results: dict[ChunkKey, ChunkResult] = {}
    for request, piece in zip(run, pieces, strict=True):
        if isinstance(piece, ChunkError):
            piece = type(piece)(str(piece.args[0]), blob_id=request.blob.blob_id, chunk_index=request.chunk_index)
        results[request.key] = piece
    return results


def publish(cache: ChunkCache, run: Sequence[ChunkRequest], results: dict[ChunkKey, ChunkResult]) -> None:
    """Store the verified chunks of a run; a cache that cannot store is logged, never fatal."""
    for request in run:
        data = results[request.key]
        if isinstance(data, bytes):
            try:
                cache.put(request.key, request.record.digest, data)
            except CacheError as error:
                log.warning("chunk not cached: %s", error)
                return


def fetch_chunks(
    backend: BlobBackend,
    cache: ChunkCache,
    requests: Sequence[ChunkRequest],
    *,
    digester: int,
    merging_size: int,
    optional: Collection[ChunkKey] = frozenset(),
) -> dict[ChunkKey, ChunkResult]:
    """Every requested chunk's bytes or the error that stopped it; verified chunks are cached."""
    results: dict[ChunkKey, ChunkResult] = {}
    again: list[ChunkRequest] = []
    for run in merge_ranges(requests, merging_size):
        run_results = fetch_run(backend, run, digester)
        publish(cache, run, run_results)
        results.update(run_results)
        for request in run:
            if isinstance(run_results[request.key], ChunkError):
                if request.key in optional:
                    log.warning("readahead chunk not cached: %s", run_results[request.key])
                else:
                    again.append(request)
    for request in again:
        log.warning("fetching again after a failed verification, from the origin: %s", results[request.key])
        with reading(origin_only=True):
            run_results = fetch_run(backend, [request], digester)
        publish(cache, [request], run_results)
        results.update(run_results)
    return results
