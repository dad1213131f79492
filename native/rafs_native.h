/* The native hot path of the bootstrap reader: chunk lookup and batch decompression.
 *
 * Plain buffers and integers in, integers out; nothing is allocated that a caller must free and
 * no Python object is touched, so cffi runs these without the GIL. native/pure.py is the
 * specification: every function here must return what its twin returns, or the error code that
 * the Python wrapper turns into the exception the twin raises.
 */
#ifndef RAFS_NATIVE_H
#define RAFS_NATIVE_H

#include <stddef.h>
#include <stdint.h>

#define RAFS_OK 0
/* rafs_locate_chunks */
#define RAFS_ERR_RUN_OUTSIDE_TABLE (-1)  /* the chunk run does not lie inside the buffer */
#define RAFS_ERR_NO_CHUNK (-2)           /* ran off either end of the run */
#define RAFS_ERR_NOT_COVERING (-3)       /* the chunk found does not contain the offset */
#define RAFS_ERR_UNKNOWN_FLAGS (-4)
#define RAFS_ERR_BLOB_INDEX (-5)
#define RAFS_ERR_CAPACITY (-6)           /* more pieces than the caller's arrays hold */
/* rafs_decompress_batch */
#define RAFS_ERR_FRAME_OUTSIDE_SOURCE (-10)
#define RAFS_ERR_OUTPUT_SIZE (-11)
#define RAFS_ERR_RAW_SIZE (-12)          /* a stored raw chunk of the wrong length */
#define RAFS_ERR_ZSTD_MAGIC (-13)
#define RAFS_ERR_ZSTD_HEADER (-14)       /* unreadable frame header */
#define RAFS_ERR_ZSTD_CONTENT_SIZE (-15) /* header records another size, or none */
#define RAFS_ERR_ZSTD_FRAME (-16)        /* corrupt frame, or bytes after it */
#define RAFS_ERR_DECOMPRESSED_SIZE (-17)
#define RAFS_ERR_UNSUPPORTED (-18)       /* a compressor this build cannot decode (lz4) */
#define RAFS_ERR_BAD_COMPRESSOR (-19)    /* a compressed chunk in a blob that has no compressor */

/* Where a lookup failed: the chunk index and the file offset it was looking for. */
struct rafs_locate_error {
    uint64_t chunk_index;
    uint64_t cursor;
    uint64_t value; /* the offending flags or blob index */
};

/* The chunks of a file covering [offset, offset+size) clipped to file_size; see
 * native/pure.py:locate_chunks. Writes up to `capacity` pieces into `pieces` as triples (chunk
 * index, start in chunk, length) and returns how many, or a negative RAFS_ERR_* with details in *error. */
int64_t rafs_locate_chunks(const uint8_t *table, size_t table_len, uint64_t table_offset, uint64_t blob_count,
                           uint64_t first, uint64_t count, uint64_t file_size, uint64_t offset, uint64_t size,
                           uint64_t *pieces, size_t capacity,
                           struct rafs_locate_error *error);

/* Decompress `count` stored chunks of `source` back to back into `output`; see
 * native/pure.py:decompress_batch. Returns RAFS_OK or a negative RAFS_ERR_* with the failing
 * chunk's position in *failed. */
int rafs_decompress_batch(int compressor, const uint8_t *source, size_t source_len, const uint64_t *offsets,
                          const uint64_t *stored_lengths, const uint8_t *compressed, const uint64_t *sizes,
                          size_t count, uint8_t *output, size_t output_len, size_t *failed);

#endif
