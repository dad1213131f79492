"""Fetch missing chunks: merge neighbours into one range read, verify, decompress, cache.

Verification comes before anything is published: a chunk whose bytes do not decode to its
recorded digest is reported as a `ChunkError` for that chunk alone and never reaches the cache,
while its neighbours in the same range are served. Each step is one function so the read path
can be followed top to bottom.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.storage.backend import BackendError, BlobBackend
from daemon.storage.cache import CacheError, ChunkCache, ChunkKey
from rafs.blob import decode_chunk
from rafs.errors import ChunkError, NydusError
from rafs.records import BlobRecord, ChunkRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """One chunk the read path needs: its index in the chunk table, record and blob."""

    chunk_index: int
    record: ChunkRecord
    blob: BlobRecord

    @property
    def key(self) -> ChunkKey:
        return ChunkKey(self.blob.blob_id, self.record.compressed_offset, self.record.compressed_size)


ChunkResult = bytes | NydusError


def merge_ranges(requests: Sequence[ChunkRequest], merging_size: int) -> list[list[ChunkRequest]]:
    """Runs of chunks stored back to back in one blob, each spanning at most `merging_size`.

    A single chunk larger than `merging_size` still forms a run of its own.
    """
    unique = {request.key: request for request in requests}
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
    return runs


def decode(request: ChunkRequest, stored: bytes, digester: int, validate: bool) -> bytes:
    """Verified, decompressed bytes; a `ChunkError` that names the blob and chunk otherwise."""
    try:
        return decode_chunk(stored, request.record, request.blob.compressor, digester, validate=validate)
    except ChunkError as error:
        raise type(error)(str(error.args[0]), blob_id=request.blob.blob_id, chunk_index=request.chunk_index) from None


def fetch_run(
    backend: BlobBackend, run: Sequence[ChunkRequest], digester: int, validate: bool
) -> tuple[dict[ChunkKey, ChunkResult], dict[ChunkKey, bytes]]:
    """Read one run with a single range request and decode each chunk on its own.

    Returns every chunk's bytes or error, and the stored bytes of the chunks that verified.
    """
    start = run[0].record.compressed_offset
    end = run[-1].record.compressed_offset + run[-1].record.compressed_size
    try:
        stored_run = backend.read_range(run[0].blob.blob_id, start, end - start)
    except BackendError as error:
        return {request.key: error for request in run}, {}
    results: dict[ChunkKey, ChunkResult] = {}
    verified: dict[ChunkKey, bytes] = {}
    for request in run:
        position = request.record.compressed_offset - start
        stored = stored_run[position : position + request.record.compressed_size]
        try:
            results[request.key] = decode(request, stored, digester, validate)
        except ChunkError as error:
            results[request.key] = error
        else:
            verified[request.key] = stored
    return results, verified


def publish(cache: ChunkCache, verified: dict[ChunkKey, bytes]) -> None:
    """Store verified chunks; a cache that cannot store is logged, never fatal to a read."""
    for key, stored in verified.items():
        try:
            cache.put(key, stored)
        except CacheError as error:
            log.warning("chunk not cached: %s", error)


def fetch_chunks(
    backend: BlobBackend,
    cache: ChunkCache,
    requests: Sequence[ChunkRequest],
    *,
    digester: int,
    validate: bool,
    merging_size: int,
) -> dict[ChunkKey, ChunkResult]:
    """Every requested chunk's bytes or the error that stopped it; verified chunks are cached.

    A chunk that fails verification is fetched once more on its own: bytes altered in transit
    pass the second time, while a corrupt blob fails again and its error stands.
    """
    results: dict[ChunkKey, ChunkResult] = {}
    again: list[ChunkRequest] = []
    for run in merge_ranges(requests, merging_size):
        run_results, verified = fetch_run(backend, run, digester, validate)
        publish(cache, verified)
        results.update(run_results)
        again += [request for request in run if isinstance(run_results[request.key], ChunkError)]
    for request in again:
        log.warning("fetching again after a failed verification: %s", results[request.key])
        run_results, verified = fetch_run(backend, [request], digester, validate)
        publish(cache, verified)
        results.update(run_results)
    return results


def read_cached(cache: ChunkCache, request: ChunkRequest, digester: int, validate: bool) -> bytes | None:
    """A cached chunk's bytes, or None if it is absent or its copy no longer decodes."""
    stored = cache.get(request.key)
    if stored is None:
        return None
    try:
        return decode(request, stored, digester, validate)
    except ChunkError as error:
        log.warning("cached copy dropped, fetching again: %s", error)
        return None
