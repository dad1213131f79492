"""The blob side of the format: chunk framing, verification and blob naming.

A blob is the concatenation of its chunks' stored bytes. A chunk is stored either as one frame
of the blob's compressor (flag `CHUNK_COMPRESSED`) or raw, when compressing did not make it
smaller. A reader verifies before it trusts: exact sizes first, then the digest of the
decompressed bytes. Nothing here touches files or the network.
"""

from __future__ import annotations

import hashlib

import lz4.block
import zstandard

from rafs import layout
from rafs.digest import chunk_digest
from rafs.errors import ChunkDigestMismatch, CorruptChunk
from rafs.records import ChunkRecord

ZSTD_LEVEL = 3

COMPRESSORS_BY_NAME = {name: code for code, name in layout.COMPRESSOR_NAMES.items()}
DIGESTERS_BY_NAME = {name: code for code, name in layout.DIGESTER_NAMES.items()}


def compress_chunk(data: bytes, compressor: int) -> tuple[bytes, bool]:
    """Stored bytes for a chunk and whether they are compressed (only if that saves space)."""
    if compressor == layout.COMPRESSOR_NONE or not data:
        return data, False
    if compressor == layout.COMPRESSOR_ZSTD:
        frame = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False).compress(data)
    elif compressor == layout.COMPRESSOR_LZ4_BLOCK:
        frame = lz4.block.compress(data, store_size=False)
    else:
        raise ValueError(f"unknown compressor {compressor}")
    if len(frame) >= len(data):
        return data, False
    return frame, True


def decompress_chunk(stored: bytes, record: ChunkRecord, compressor: int) -> bytes:
    """The chunk's uncompressed bytes; `CorruptChunk` unless they are exactly the recorded size."""
    if len(stored) != record.compressed_size:
        raise CorruptChunk(f"stored size {len(stored)}, expected {record.compressed_size}")
    if not record.is_compressed:
        data = stored
    else:
        try:
            if compressor == layout.COMPRESSOR_ZSTD:
                data = zstandard.ZstdDecompressor().decompress(
                    stored, max_output_size=record.uncompressed_size, allow_extra_data=False
                )
            elif compressor == layout.COMPRESSOR_LZ4_BLOCK:
                data = lz4.block.decompress(stored, uncompressed_size=record.uncompressed_size)
            else:
                raise CorruptChunk(f"compressed chunk in a blob with compressor {compressor}")
        except (zstandard.ZstdError, lz4.block.LZ4BlockError) as error:
            raise CorruptChunk(f"cannot decompress: {error}") from None
    if len(data) != record.uncompressed_size:
        raise CorruptChunk(f"decompressed to {len(data)} bytes, expected {record.uncompressed_size}")
    return data


def decode_chunk(
    stored: bytes,
    record: ChunkRecord,
    compressor: int,
    digester: int,
    *,
    validate: bool = True,
) -> bytes:
    """Stored chunk bytes -> verified uncompressed bytes. Raises a `ChunkError` subclass."""
    if record.is_zero:
        return bytes(record.uncompressed_size)
    data = decompress_chunk(stored, record, compressor)
    if validate and chunk_digest(data, digester) != record.digest:
        raise ChunkDigestMismatch("digest mismatch")
    return data


def blob_id_of(data_sha256: hashlib._Hash) -> str:
    """A blob's id: the lowercase hex sha256 of its bytes, so it can be an OCI layer digest."""
    return data_sha256.hexdigest()
