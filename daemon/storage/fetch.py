"""Fetch missing chunks: merge neighbours into one range read, decompress, verify, cache.

With the C backend, a run of several neighbouring chunks is decompressed in one
`native.decompress_batch` call and each chunk's digest is then checked on its own slice of the
output; otherwise each chunk is decoded on its own (`use_batch` says why). Verification
comes before anything is published: a chunk whose bytes do not decode to its recorded digest is
reported as a `ChunkError` for that chunk alone and never reaches the cache, while its
neighbours in the same range are served (if the batch itself fails, every chunk of the run is
decoded again on its own to find the bad one). Each step is one function so the read path can
be followed top to bottom.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import native
from daemon.storage.backend import BackendError, BlobBackend
from daemon.storage.cache import CacheError, ChunkCache, ChunkKey
from rafs.blob import decode_chunk
from rafs.digest import chunk_digest
from rafs.errors import ChunkDigestMismatch, ChunkError, CorruptChunk, NydusError
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


def decode_each(
    run: Sequence[ChunkRequest], stored_run: bytes, start: int, digester: int, validate: bool
) -> dict[ChunkKey, ChunkResult]:
    """Decode every chunk of a run on its own: each chunk's bytes, or its own `ChunkError`."""
    results: dict[ChunkKey, ChunkResult] = {}
    for request in run:
        position = request.record.compressed_offset - start
        stored = stored_run[position : position + request.record.compressed_size]
        try:
            results[request.key] = decode(request, stored, digester, validate)
        except ChunkError as error:
            results[request.key] = error
    return results


def decode_batch(
    run: Sequence[ChunkRequest], stored_run: bytes, start: int, digester: int, validate: bool
) -> dict[ChunkKey, ChunkResult]:
    """Decompress a whole run with one `native.decompress_batch` call, then verify each chunk.

    A chunk whose digest differs fails alone. If the batch cannot decompress (some chunk is
    corrupt or truncated), the run is decoded again chunk by chunk, which names the bad chunk
    and still serves the others.
    """
    records = [request.record for request in run]
    frames = [(r.compressed_offset - start, r.compressed_size, r.is_compressed, r.uncompressed_size) for r in records]
    output = bytearray(sum(record.uncompressed_size for record in records))
    try:
        native.decompress_batch(run[0].blob.compressor, stored_run, frames, output)
    except (CorruptChunk, ValueError):
        return decode_each(run, stored_run, start, digester, validate)
    results: dict[ChunkKey, ChunkResult] = {}
    view = memoryview(output)
    cursor = 0
    for request in run:
        data = view[cursor : cursor + request.record.uncompressed_size]
        cursor += request.record.uncompressed_size
        if validate and chunk_digest(data, digester) != request.record.digest:
            error = ChunkDigestMismatch(
                "digest mismatch", blob_id=request.blob.blob_id, chunk_index=request.chunk_index
            )
            results[request.key] = error
        else:
            results[request.key] = bytes(data)
    return results


def use_batch(run: Sequence[ChunkRequest]) -> bool:
    """Whether to decompress `run` with one `native.decompress_batch` call.

    Only with the C backend and for runs of several chunks, where it is faster. Measured on the
    2-core VM over the `/usr/include` image (decompress and verify, per chunk): runs merged up to
    1 MiB took 30 us in a C batch and 32 us one by one; a single 5 KB chunk took 49 us through
    a batch of one and 25 us on its own (the batch call has a fixed cost of ~15 us); the pure
    twin's batch took 48 us. Zero chunks store no frame, so a run holding one is decoded one by
    one.
    """
    return native.backend == "c" and len(run) > 1 and not any(request.record.is_zero for request in run)


def fetch_run(
    backend: BlobBackend, run: Sequence[ChunkRequest], digester: int, validate: bool
) -> tuple[dict[ChunkKey, ChunkResult], dict[ChunkKey, bytes]]:
    """Read one run with a single range request, decompress and verify its chunks.

    Returns every chunk's bytes or error, and the stored bytes of the chunks that verified.
    """
    start = run[0].record.compressed_offset
    end = run[-1].record.compressed_offset + run[-1].record.compressed_size
    try:
        stored_run = backend.read_range(run[0].blob.blob_id, start, end - start)
    except BackendError as error:
        return {request.key: error for request in run}, {}
    if use_batch(run):
        results = decode_batch(run, stored_run, start, digester, validate)
    else:
        results = decode_each(run, stored_run, start, digester, validate)
    verified: dict[ChunkKey, bytes] = {}
    for request in run:
        if isinstance(results[request.key], bytes):
            position = request.record.compressed_offset - start
            verified[request.key] = stored_run[position : position + request.record.compressed_size]
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
    optional: Collection[ChunkKey] = frozenset(),
) -> dict[ChunkKey, ChunkResult]:
    """Every requested chunk's bytes or the error that stopped it; verified chunks are cached.

    A chunk that fails verification is fetched once more on its own: bytes altered in transit
    pass the second time, while a corrupt blob fails again and its error stands. `optional`
    chunks (readahead: nobody waits for them) are not fetched again; they are just not cached.
    """
    results: dict[ChunkKey, ChunkResult] = {}
    again: list[ChunkRequest] = []
    for run in merge_ranges(requests, merging_size):
        run_results, verified = fetch_run(backend, run, digester, validate)
        publish(cache, verified)
        results.update(run_results)
        for request in run:
            error = run_results[request.key]
            if isinstance(error, ChunkError):
                if request.key in optional:
                    log.warning("readahead chunk not cached: %s", error)
                else:
                    again.append(request)
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
