/* See rafs_native.h; native/pure.py is the specification. */
#include "rafs_native.h"

#include <string.h>
#include <zstd.h>

#define CHUNK_RECORD_SIZE 64u
#define CHUNK_COMPRESSED 1u
#define CHUNK_ZERO 2u
#define KNOWN_CHUNK_FLAGS (CHUNK_COMPRESSED | CHUNK_ZERO)
#define COMPRESSOR_ZSTD 1
#define COMPRESSOR_LZ4_BLOCK 2

static uint32_t load_u32(const uint8_t *bytes) {
    return (uint32_t)bytes[0] | (uint32_t)bytes[1] << 8 | (uint32_t)bytes[2] << 16 | (uint32_t)bytes[3] << 24;
}

static uint64_t load_u64(const uint8_t *bytes) {
    return (uint64_t)load_u32(bytes) | (uint64_t)load_u32(bytes + 4) << 32;
}

/* The fields of one chunk record that a lookup needs. */
struct chunk_head {
    uint32_t blob_index;
    uint32_t flags;
    uint32_t uncompressed_size;
    uint64_t file_offset;
};

/* Record `position` of the run starting at byte `run_start`; 0 if it lies inside the buffer. */
static int read_chunk(const uint8_t *table, size_t table_len, uint64_t run_start, uint64_t position,
                      struct chunk_head *head) {
    if (position > (UINT64_MAX - run_start) / CHUNK_RECORD_SIZE) return -1;
    uint64_t at = run_start + position * CHUNK_RECORD_SIZE;
    if (at > table_len || table_len - at < CHUNK_RECORD_SIZE) return -1;
    const uint8_t *record = table + at;
    head->blob_index = load_u32(record);
    head->flags = load_u32(record + 4);
    head->uncompressed_size = load_u32(record + 20);
    head->file_offset = load_u64(record + 24);
    return 0;
}

int64_t rafs_locate_chunks(const uint8_t *table, size_t table_len, uint64_t table_offset, uint64_t blob_count,
                           uint64_t first, uint64_t count, uint64_t file_size, uint64_t offset, uint64_t size,
                           uint64_t *pieces, size_t capacity,
                           struct rafs_locate_error *error) {
    memset(error, 0, sizeof *error);
    /* The whole run must lie inside the buffer: run_start + count * 64 <= table_len. */
    if (first > (UINT64_MAX - table_offset) / CHUNK_RECORD_SIZE) return RAFS_ERR_RUN_OUTSIDE_TABLE;
    uint64_t run_start = table_offset + first * CHUNK_RECORD_SIZE;
    if (run_start > table_len || count > (table_len - run_start) / CHUNK_RECORD_SIZE) {
        return RAFS_ERR_RUN_OUTSIDE_TABLE;
    }
    if (offset >= file_size) return 0;
    uint64_t end = size > file_size - offset ? file_size : offset + size;
    if (offset >= end) return 0;

    struct chunk_head head;
    uint64_t low = 0, high = count;
    while (low < high) {
        uint64_t middle = low + (high - low) / 2;
        if (read_chunk(table, table_len, run_start, middle, &head) != 0) return RAFS_ERR_RUN_OUTSIDE_TABLE;
        if (offset < head.file_offset) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    /* `position` is low - 1 as in the twin; low == 0 means no chunk starts at or before offset. */
    uint64_t cursor = offset;
    size_t found = 0;
    for (uint64_t position = low; cursor < end; position++) {
        error->cursor = cursor;
        if (position == 0 || position - 1 >= count) return RAFS_ERR_NO_CHUNK;
        uint64_t index_in_run = position - 1;
        error->chunk_index = first + index_in_run;
        if (read_chunk(table, table_len, run_start, index_in_run, &head) != 0) return RAFS_ERR_RUN_OUTSIDE_TABLE;
        if (head.flags & ~KNOWN_CHUNK_FLAGS) {
            error->value = head.flags;
            return RAFS_ERR_UNKNOWN_FLAGS;
        }
        if (!(head.flags & CHUNK_ZERO) && head.blob_index >= blob_count) {
            error->value = head.blob_index;
            return RAFS_ERR_BLOB_INDEX;
        }
        /* file_offset <= cursor < file_offset + uncompressed_size, without overflowing. */
        if (head.file_offset > cursor || cursor - head.file_offset >= head.uncompressed_size) {
            return RAFS_ERR_NOT_COVERING;
        }
        uint64_t start = cursor - head.file_offset;
        uint64_t length = head.uncompressed_size - start;
        if (length > end - cursor) length = end - cursor;
        if (found == capacity) return RAFS_ERR_CAPACITY;
        pieces[3 * found] = first + index_in_run;
        pieces[3 * found + 1] = start;
        pieces[3 * found + 2] = length;
        found++;
        cursor += length;
    }
    return (int64_t)found;
}

static int decompress_zstd(const uint8_t *stored, size_t stored_len, uint8_t *output, size_t size) {
    static const uint8_t magic[4] = {0x28, 0xb5, 0x2f, 0xfd};
    if (stored_len < sizeof magic || memcmp(stored, magic, sizeof magic) != 0) return RAFS_ERR_ZSTD_MAGIC;
    unsigned long long content_size = ZSTD_getFrameContentSize(stored, stored_len);
    if (content_size == ZSTD_CONTENTSIZE_ERROR) return RAFS_ERR_ZSTD_HEADER;
    if (content_size == ZSTD_CONTENTSIZE_UNKNOWN || content_size != size) return RAFS_ERR_ZSTD_CONTENT_SIZE;
    /* One frame and nothing after it: ZSTD_decompress would go on into a second frame. */
    size_t frame_len = ZSTD_findFrameCompressedSize(stored, stored_len);
    if (ZSTD_isError(frame_len) || frame_len != stored_len) return RAFS_ERR_ZSTD_FRAME;
    /* One decompression context per thread, made on first use and kept for the thread's life:
     * ZSTD_decompress makes and frees one on every call, which cost ~3.5 us of the ~7 us per
     * small (5 KB) chunk measured on the 2-core VM. If it cannot be made, fall back to that. */
    static _Thread_local ZSTD_DCtx *context = NULL;
    if (context == NULL) context = ZSTD_createDCtx();
    size_t written = context != NULL ? ZSTD_decompressDCtx(context, output, size, stored, stored_len)
                                     : ZSTD_decompress(output, size, stored, stored_len);
    if (ZSTD_isError(written)) return RAFS_ERR_ZSTD_FRAME;
    if (written != size) return RAFS_ERR_DECOMPRESSED_SIZE;
    return RAFS_OK;
}

int rafs_decompress_batch(int compressor, const uint8_t *source, size_t source_len, const uint64_t *offsets,
                          const uint64_t *stored_lengths, const uint8_t *compressed, const uint64_t *sizes,
                          size_t count, uint8_t *output, size_t output_len, size_t *failed) {
    *failed = 0;
    /* Check every frame and the output length before writing anything. */
    size_t total = 0;
    for (size_t position = 0; position < count; position++) {
        *failed = position;
        if (offsets[position] > source_len || stored_lengths[position] > source_len - offsets[position]) {
            return RAFS_ERR_FRAME_OUTSIDE_SOURCE;
        }
        if (sizes[position] > output_len - total) return RAFS_ERR_OUTPUT_SIZE;
        total += (size_t)sizes[position];
    }
    *failed = 0;
    if (total != output_len) return RAFS_ERR_OUTPUT_SIZE;

    size_t cursor = 0;
    for (size_t position = 0; position < count; position++) {
        *failed = position;
        const uint8_t *stored = source + offsets[position];
        size_t stored_len = (size_t)stored_lengths[position];
        size_t size = (size_t)sizes[position];
        if (!compressed[position]) {
            if (stored_len != size) return RAFS_ERR_RAW_SIZE;
            memcpy(output + cursor, stored, size);
        } else if (compressor == COMPRESSOR_ZSTD) {
            int status = decompress_zstd(stored, stored_len, output + cursor, size);
            if (status != RAFS_OK) return status;
        } else if (compressor == COMPRESSOR_LZ4_BLOCK) {
            return RAFS_ERR_UNSUPPORTED;
        } else {
            return RAFS_ERR_BAD_COMPRESSOR;
        }
        cursor += size;
    }
    return RAFS_OK;
}
