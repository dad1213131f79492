"""The pure-Python twin of the native hot path, and its specification.

Every function here has a C counterpart in `native/rafs_native.c` that must give the same
result and raise the same exception type for every input; `tests/native/` holds them to that.
Both work over plain buffers (usually the mmapped bootstrap or a fetched blob range) and trust
nothing in them: each read of the chunk table is checked against the buffer's length, because
the table came from the network.

Errors: a table that contradicts itself raises `native.errors.BadChunkTable`; stored bytes that
do not decompress to exactly the promised size raise `native.errors.BadFrame`; arguments that
no caller holding a valid bootstrap would pass (negative numbers, a frame outside its source
buffer, an output buffer of the wrong length) raise `ValueError`. This package imports nothing from the project; `rafs` translates
these errors into its own, with the context it knows.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence

from native.errors import BadChunkTable, BadFrame

# The chunk record as `rafs.layout.CHUNK` defines it; repeated so that the C side and this twin
# read the same fields at the same places (a test checks that both agree with rafs.layout).
CHUNK_RECORD_SIZE = 64
_CHUNK_HEAD = struct.Struct("<IIQIIQ")  # blob_index, flags, compressed_offset, sizes, file_offset
CHUNK_COMPRESSED = 1 << 0
CHUNK_ZERO = 1 << 1
KNOWN_CHUNK_FLAGS = CHUNK_COMPRESSED | CHUNK_ZERO

COMPRESSOR_NONE = 0
COMPRESSOR_ZSTD = 1
COMPRESSOR_LZ4_BLOCK = 2

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
U64_LIMIT = 1 << 64

# What the functions read: the bootstrap (bytes, or an mmap of its file) or fetched blob bytes.
ReadableBuffer = bytes | bytearray | memoryview | mmap.mmap
# One wanted piece of a chunk: (chunk index in the table, start in the chunk, length).
ChunkPiece = tuple[int, int, int]
# One stored chunk in a batch: (offset in source, stored length, compressed?, uncompressed size).
StoredChunk = tuple[int, int, bool, int]


def check_u64(**values: int) -> None:
    """`ValueError` unless every value fits an unsigned 64-bit integer (the C side's type)."""
    for name, value in values.items():
        if not 0 <= value < U64_LIMIT:
            raise ValueError(f"{name}={value} is not an unsigned 64-bit integer")


def locate_chunks(
    table: ReadableBuffer,
    table_offset: int,
    blob_count: int,
    first: int,
    count: int,
    file_size: int,
    offset: int,
    size: int,
) -> list[ChunkPiece]:
    """The chunks of one file that cover its bytes [offset, offset+size), clipped to `file_size`.

    `table` is the whole bootstrap buffer; the file's chunk records are `count` consecutive
    64-byte records starting at record `first` of the table at `table_offset`. They must cover
    the file in order without gaps, so the first wanted chunk is found by binary search over
    `file_offset` (`bisect_right`, exactly as `bisect` does it), and the rest follow it.

    Returns (chunk index, start in chunk, length) for each chunk touched, in file order; an empty
    list when the range is empty or starts at or past the end of the file. Raises
    `BadChunkTable` if the run lies outside `table`, if a chunk has unknown flags or names a
    blob index >= `blob_count` (zero chunks excepted), or if no chunk covers some wanted offset.

    >>> record = struct.Struct("<IIQIIQ32s")
    >>> table = record.pack(0, 0, 0, 4096, 4096, 0, bytes(32)) + record.pack(0, 0, 4096, 10, 10, 4096, bytes(32))
    >>> locate_chunks(table, 0, 1, 0, 2, 4106, 4000, 200)
    [(0, 4000, 96), (1, 0, 10)]
    """
    check_u64(
        table_offset=table_offset,
        blob_count=blob_count,
        first=first,
        count=count,
        file_size=file_size,
        offset=offset,
        size=size,
    )
    run_start = table_offset + first * CHUNK_RECORD_SIZE
    if run_start + count * CHUNK_RECORD_SIZE > len(table):
        raise BadChunkTable(f"chunk run [{first}, +{count}) lies outside the {len(table)}-byte table buffer")
    end = min(offset + size, file_size)
    if offset >= end:
        return []

    def file_offset_of(position: int) -> int:
        value: int = _CHUNK_HEAD.unpack_from(table, run_start + position * CHUNK_RECORD_SIZE)[5]
        return value

    low, high = 0, count
    while low < high:
        middle = (low + high) // 2
        if offset < file_offset_of(middle):
            high = middle
        else:
            low = middle + 1
    position = low - 1
    pieces: list[ChunkPiece] = []
    cursor = offset
    while cursor < end:
        if position < 0 or position >= count:
            raise BadChunkTable(f"no chunk covers offset {cursor}")
        index = first + position
        blob_index, flags, _, _, uncompressed_size, chunk_offset = _CHUNK_HEAD.unpack_from(
            table, run_start + position * CHUNK_RECORD_SIZE
        )
        if flags & ~KNOWN_CHUNK_FLAGS:
            raise BadChunkTable(f"chunk {index}: unknown flags {flags:#x}")
        if not flags & CHUNK_ZERO and blob_index >= blob_count:
            raise BadChunkTable(f"chunk {index}: blob index {blob_index} out of range")
        chunk_end = chunk_offset + uncompressed_size
        if not chunk_offset <= cursor < chunk_end:
            raise BadChunkTable(f"chunk {index} does not cover offset {cursor}")
        length = min(chunk_end, end) - cursor
        pieces.append((index, cursor - chunk_offset, length))
        cursor += length
        position += 1
    return pieces


def check_batch(
    source: ReadableBuffer,
    chunks: Sequence[StoredChunk],
    output: bytearray | memoryview,
) -> None:
    """`ValueError` unless every stored chunk lies inside `source` and `output` is exactly as
    long as all uncompressed sizes together (`TypeError` if it is read-only). Shared by both backends, run before any work."""
    if memoryview(output).readonly:
        raise TypeError("output must be a writable buffer")
    total = 0
    for position, (start, length, _, uncompressed_size) in enumerate(chunks):
        check_u64(offset=start, length=length, uncompressed_size=uncompressed_size)
        if start + length > len(source):
            raise ValueError(f"frame {position} [{start}, +{length}) lies outside the {len(source)}-byte source")
        total += uncompressed_size
    if total != len(output):
        raise ValueError(f"output is {len(output)} bytes, the batch decompresses to {total}")


def decompress_one(compressor: int, stored: bytes | memoryview, compressed: bool, uncompressed_size: int) -> bytes:
    """One chunk's uncompressed bytes, exactly `uncompressed_size` of them, or `BadFrame`.

    A stored (not compressed) chunk must already be exactly that long. A zstd chunk must be one
    frame starting with the zstd magic, recording its content size, equal to `uncompressed_size`,
    with no byte after it. An LZ4 chunk is one block without a size prefix.
    """
    if not compressed:
        if len(stored) != uncompressed_size:
            raise BadFrame(f"stored raw chunk is {len(stored)} bytes, expected {uncompressed_size}")
        return bytes(stored)
    # Imported here, not at the top: with the C backend a daemon never loads them (~20 ms at start).
    import lz4.block
    import zstandard

    if compressor == COMPRESSOR_ZSTD:
        if bytes(stored[:4]) != ZSTD_MAGIC:
            raise BadFrame("not a zstd frame (bad magic)")
        try:
            content_size = zstandard.frame_content_size(stored)
        except zstandard.ZstdError:
            raise BadFrame("unreadable zstd frame header") from None
        if content_size != uncompressed_size:
            raise BadFrame(f"zstd frame records content size {content_size}, expected {uncompressed_size}")
        try:
            if uncompressed_size == 0:
                # python-zstandard answers b"" for any frame recording content size 0 without
                # reading the rest: a truncated frame, or bytes after it, would pass (libzstd's
                # ZSTD_findFrameCompressedSize, as the C twin uses, rejects both).
                stream = zstandard.ZstdDecompressor().decompressobj()
                data = stream.decompress(stored)
                if not stream.eof or stream.unused_data:
                    raise BadFrame("corrupt zstd frame (truncated, or bytes after it)")
            else:
                data = zstandard.ZstdDecompressor().decompress(
                    stored, max_output_size=uncompressed_size, allow_extra_data=False
                )
        except zstandard.ZstdError:
            raise BadFrame("corrupt zstd frame") from None
    elif compressor == COMPRESSOR_LZ4_BLOCK:
        try:
            data = lz4.block.decompress(stored, uncompressed_size=uncompressed_size)
        except lz4.block.LZ4BlockError:
            raise BadFrame("corrupt lz4 block") from None
    else:
        raise BadFrame(f"compressed chunk in a blob with compressor {compressor}")
    if len(data) != uncompressed_size:
        raise BadFrame(f"decompressed to {len(data)} bytes, expected {uncompressed_size}")
    return data


def decompress_batch(
    compressor: int,
    source: ReadableBuffer,
    chunks: Sequence[StoredChunk],
    output: bytearray | memoryview,
) -> None:
    """Decompress many stored chunks of one blob into `output`, one after another.

    Each chunk is (offset in `source`, stored length, compressed?, uncompressed size); its bytes
    land in `output` right after the previous chunk's. `output` must be writable and exactly as
    long as the sizes together (`ValueError` otherwise, checked before any work). A chunk that
    does not give exactly its size raises `BadFrame`, with the chunk's position in the batch
    in the message; `output` is then partly written and must not be used.

    >>> import zstandard
    >>> frame = zstandard.ZstdCompressor(level=3).compress(b"a" * 100)
    >>> output = bytearray(103)
    >>> decompress_batch(COMPRESSOR_ZSTD, frame + b"xyz", [(0, len(frame), True, 100), (len(frame), 3, False, 3)], output)
    >>> bytes(output[-5:])
    b'aaxyz'
    """
    check_batch(source, chunks, output)
    view = memoryview(source)
    cursor = 0
    for position, (start, length, compressed, uncompressed_size) in enumerate(chunks):
        try:
            data = decompress_one(compressor, view[start : start + length], compressed, uncompressed_size)
        except BadFrame as error:
            raise BadFrame(f"frame {position} of the batch: {error}") from None
        output[cursor : cursor + uncompressed_size] = data
        cursor += uncompressed_size
