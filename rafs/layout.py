"""Every on-disk structure of the bootstrap, defined once.

`docs/format.md` is the source of truth; the byte tables there and the `struct` formats here
must agree. All integers are little-endian. The file is a superblock followed by fixed-size
record tables and one byte heap; every offset is from the start of the file.
"""

from __future__ import annotations

import struct

MAGIC = b"PYRAFS\x00\x01"
VERSION = 1

# Superblock, 256 bytes at offset 0 (see docs/format.md, "Superblock").
SUPERBLOCK = struct.Struct("<8sIIQIB3xQQQQQQQQQQQQ32sQQ76xI")
SUPERBLOCK_SIZE = 256
assert SUPERBLOCK.size == SUPERBLOCK_SIZE

# Feature bits (superblock `features`). A reader refuses a bit it does not know.
FEATURE_LAYER = 1 << 0  # a single layer's bootstrap: whiteouts are kept as entries
KNOWN_FEATURES = FEATURE_LAYER

# Digest algorithms (superblock `digester`).
DIGESTER_BLAKE3 = 0
DIGESTER_SHA256 = 1
DIGESTER_NAMES = {DIGESTER_BLAKE3: "blake3", DIGESTER_SHA256: "sha256"}
DIGEST_SIZE = 32

# Inode record, 112 bytes; inode number N is record N-1.
INODE = struct.Struct("<IIIIQQqIIQQIIQ32s")
assert INODE.size == 112
INODE_XATTR_SIZE_OFFSET = 68  # of the u32 `xattr_size` inside a record
assert struct.calcsize("<IIIIQQqIIQQI") == INODE_XATTR_SIZE_OFFSET

# Inode flags (inode `flags`). Only layer bootstraps (FEATURE_LAYER) may set them.
INODE_IMPLICIT_DIR = 1 << 0  # a directory the layer did not contain, made only to hold children
KNOWN_INODE_FLAGS = INODE_IMPLICIT_DIR

# Directory entry, 24 bytes; a directory's entries are contiguous and sorted by name bytes.
DIRENT = struct.Struct("<QIIQ")
assert DIRENT.size == 24

# Chunk record, 64 bytes; a file's chunks are contiguous and in file order.
CHUNK = struct.Struct("<IIQIIQ32s")
assert CHUNK.size == 64
CHUNK_COMPRESSED = 1 << 0  # stored bytes are a frame of the blob's compressor
CHUNK_ZERO = 1 << 1  # all-zero chunk: no bytes in any blob
KNOWN_CHUNK_FLAGS = CHUNK_COMPRESSED | CHUNK_ZERO

# Blob record, 88 bytes.
BLOB = struct.Struct("<64sQQII")
assert BLOB.size == 88
COMPRESSOR_NONE = 0
COMPRESSOR_ZSTD = 1
COMPRESSOR_LZ4_BLOCK = 2
COMPRESSOR_NAMES = {COMPRESSOR_NONE: "none", COMPRESSOR_ZSTD: "zstd", COMPRESSOR_LZ4_BLOCK: "lz4_block"}

# Prefetch table entry: an inode number, in the order the files should be fetched.
PREFETCH = struct.Struct("<Q")

# Prefetch chunk table entry: an inode number and the index of one of its chunks (0 = the file's
# first), in the order the chunks should be fetched. Optional (count 0 in older bootstraps).
PREFETCH_CHUNK = struct.Struct("<II")

# Xattr encoding inside the heap: count, then (name_len, value_len, name, value) sorted by name.
XATTR_COUNT = struct.Struct("<I")
XATTR_ENTRY = struct.Struct("<HI")

ROOT_INO = 1
MIN_CHUNK_SIZE = 0x1000
MAX_CHUNK_SIZE = 0x1000000
DEFAULT_CHUNK_SIZE = 0x100000

# Names of whiteout markers (OCI image spec, layer changesets).
WHITEOUT_PREFIX = b".wh."
OPAQUE_WHITEOUT = b".wh..wh..opq"


def is_valid_chunk_size(chunk_size: int) -> bool:
    """Chunk sizes are powers of two from 4 KiB to 16 MiB, as in Nydus."""
    return MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE and chunk_size & (chunk_size - 1) == 0
