"""The C backend: thin wrappers that give `native._rafs_native` the twin's Python interface.

Each wrapper checks its arguments exactly as `native.pure` does (with the same helpers), calls
the C function (cffi releases the GIL around it) and turns a negative status into the exception
the twin raises. Importing this module raises ImportError when the extension is not built.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from native import pure
from native._rafs_native import ffi, lib
from native.errors import BadChunkTable, BadFrame


def locate_chunks(
    table: pure.ReadableBuffer,
    table_offset: int,
    blob_count: int,
    first: int,
    count: int,
    file_size: int,
    offset: int,
    size: int,
) -> list[pure.ChunkPiece]:
    pure.check_u64(
        table_offset=table_offset,
        blob_count=blob_count,
        first=first,
        count=count,
        file_size=file_size,
        offset=offset,
        size=size,
    )
    scratch = _scratch()
    found = _locate(scratch, table, table_offset, blob_count, first, count, file_size, offset, size)
    if found == lib.RAFS_ERR_CAPACITY:
        # Every piece is at least one byte of a distinct chunk, so this many always suffice.
        scratch = _Scratch(max(0, min(count, min(offset + size, file_size) - offset)))
        found = _locate(scratch, table, table_offset, blob_count, first, count, file_size, offset, size)
    if found < 0:
        raise _locate_error(found, scratch.error, len(table), first, count)
    pieces = scratch.pieces
    return [(pieces[3 * i], pieces[3 * i + 1], pieces[3 * i + 2]) for i in range(found)]


class _Scratch:
    """Output arrays for `rafs_locate_chunks`: room for `capacity` pieces, stored as triples."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pieces = ffi.new("uint64_t[]", 3 * capacity)
        self.error = ffi.new("struct rafs_locate_error *")


_SCRATCH_PIECES = 64  # a 128 KiB read touches one or two chunks; more takes the slow path
_local = threading.local()


def _scratch() -> _Scratch:
    """This thread's reusable arrays (the C call runs without the GIL, so never shared)."""
    scratch: _Scratch | None = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = _Scratch(_SCRATCH_PIECES)
    return scratch


def _locate(
    scratch: _Scratch,
    table: pure.ReadableBuffer,
    table_offset: int,
    blob_count: int,
    first: int,
    count: int,
    file_size: int,
    offset: int,
    size: int,
) -> int:
    found: int = lib.rafs_locate_chunks(
        ffi.from_buffer("uint8_t[]", table),
        len(table),
        table_offset,
        blob_count,
        first,
        count,
        file_size,
        offset,
        size,
        scratch.pieces,
        scratch.capacity,
        scratch.error,
    )
    return found


def _locate_error(status: int, error: object, table_len: int, first: int, count: int) -> Exception:
    """The twin's exception for a negative status of `rafs_locate_chunks`."""
    index, cursor, value = error.chunk_index, error.cursor, error.value  # type: ignore[attr-defined]
    if status == lib.RAFS_ERR_RUN_OUTSIDE_TABLE:
        return BadChunkTable(f"chunk run [{first}, +{count}) lies outside the {table_len}-byte table buffer")
    if status == lib.RAFS_ERR_NO_CHUNK:
        return BadChunkTable(f"no chunk covers offset {cursor}")
    if status == lib.RAFS_ERR_NOT_COVERING:
        return BadChunkTable(f"chunk {index} does not cover offset {cursor}")
    if status == lib.RAFS_ERR_UNKNOWN_FLAGS:
        return BadChunkTable(f"chunk {index}: unknown flags {value:#x}")
    if status == lib.RAFS_ERR_BLOB_INDEX:
        return BadChunkTable(f"chunk {index}: blob index {value} out of range")
    return AssertionError(f"rafs_locate_chunks returned {status}")


_CHUNK_MESSAGES = {
    "RAFS_ERR_RAW_SIZE": "stored raw chunk has the wrong length",
    "RAFS_ERR_ZSTD_MAGIC": "not a zstd frame (bad magic)",
    "RAFS_ERR_ZSTD_HEADER": "unreadable zstd frame header",
    "RAFS_ERR_ZSTD_CONTENT_SIZE": "zstd frame does not record the expected content size",
    "RAFS_ERR_ZSTD_FRAME": "corrupt zstd frame",
    "RAFS_ERR_DECOMPRESSED_SIZE": "decompressed to the wrong size",
    "RAFS_ERR_BAD_COMPRESSOR": "compressed chunk in a blob without a known compressor",
}


def decompress_batch(
    compressor: int,
    source: pure.ReadableBuffer,
    chunks: Sequence[pure.StoredChunk],
    output: bytearray | memoryview,
) -> None:
    pure.check_batch(source, chunks, output)
    if compressor == pure.COMPRESSOR_LZ4_BLOCK and any(compressed for _, _, compressed, _ in chunks):
        # This build links no liblz4: LZ4 blobs take the twin (python-lz4 is C too).
        pure.decompress_batch(compressor, source, chunks, output)
        return
    count = len(chunks)
    offsets = ffi.new("uint64_t[]", [start for start, _, _, _ in chunks])
    stored_lengths = ffi.new("uint64_t[]", [length for _, length, _, _ in chunks])
    compressed = ffi.new("uint8_t[]", [1 if flag else 0 for _, _, flag, _ in chunks])
    sizes = ffi.new("uint64_t[]", [size for _, _, _, size in chunks])
    failed = ffi.new("size_t *")
    status = lib.rafs_decompress_batch(
        compressor,
        ffi.from_buffer("uint8_t[]", source),
        len(source),
        offsets,
        stored_lengths,
        compressed,
        sizes,
        count,
        ffi.from_buffer("uint8_t[]", output, require_writable=True),
        len(output),
        failed,
    )
    if status == lib.RAFS_OK:
        return
    for name, message in _CHUNK_MESSAGES.items():
        if status == getattr(lib, name):
            raise BadFrame(f"frame {failed[0]} of the batch: {message}")
    raise AssertionError(f"rafs_decompress_batch returned {status} (arguments were checked)")
