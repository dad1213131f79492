"""cffi build script for `native._rafs_native` (API mode, out of line).

Run by setuptools through `cffi_modules` in setup.py (`pip install -e .`), or directly:
`python native/build.py` builds the extension in place. `RAFS_NATIVE_CFLAGS` adds compiler
flags (scripts/native-asan.sh uses it for -fsanitize=address).
"""

from __future__ import annotations

import os
import pathlib

import cffi

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = cffi.FFI()
ffibuilder.cdef(
    """
    #define RAFS_OK ...
    #define RAFS_ERR_RUN_OUTSIDE_TABLE ...
    #define RAFS_ERR_NO_CHUNK ...
    #define RAFS_ERR_NOT_COVERING ...
    #define RAFS_ERR_UNKNOWN_FLAGS ...
    #define RAFS_ERR_BLOB_INDEX ...
    #define RAFS_ERR_CAPACITY ...
    #define RAFS_ERR_FRAME_OUTSIDE_SOURCE ...
    #define RAFS_ERR_OUTPUT_SIZE ...
    #define RAFS_ERR_RAW_SIZE ...
    #define RAFS_ERR_ZSTD_MAGIC ...
    #define RAFS_ERR_ZSTD_HEADER ...
    #define RAFS_ERR_ZSTD_CONTENT_SIZE ...
    #define RAFS_ERR_ZSTD_FRAME ...
    #define RAFS_ERR_DECOMPRESSED_SIZE ...
    #define RAFS_ERR_UNSUPPORTED ...
    #define RAFS_ERR_BAD_COMPRESSOR ...
    struct rafs_locate_error { uint64_t chunk_index; uint64_t cursor; uint64_t value; };
    int64_t rafs_locate_chunks(const uint8_t *table, size_t table_len, uint64_t table_offset, uint64_t blob_count,
                               uint64_t first, uint64_t count, uint64_t file_size, uint64_t offset, uint64_t size,
                               uint64_t *pieces, size_t capacity,
                               struct rafs_locate_error *error);
    int rafs_decompress_batch(int compressor, const uint8_t *source, size_t source_len, const uint64_t *offsets,
                              const uint64_t *stored_lengths, const uint8_t *compressed, const uint64_t *sizes,
                              size_t count, uint8_t *output, size_t output_len, size_t *failed);
    """
)
ffibuilder.set_source(
    "native._rafs_native",
    '#include "rafs_native.h"',
    sources=[str((HERE / "rafs_native.c").relative_to(HERE.parent))],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    libraries=["zstd"],
    extra_compile_args=["-Wall", "-Wextra", "-Wconversion", *os.environ.get("RAFS_NATIVE_CFLAGS", "").split()],
    extra_link_args=os.environ.get("RAFS_NATIVE_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir=".", verbose=True)
