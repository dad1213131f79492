"""`BlobOrder`: the chunks of one blob in stored order, for readahead across files.

The builder stores files' chunks in tar order, so the chunks a workload needs after a miss are
often the blob's next ones, whatever file they belong to. To find them, the read path needs
the chunk table sorted by stored offset within one blob. A `BlobOrder` holds just that, as two
compact arrays (8 + 4 bytes per chunk): the stored offsets, ascending, and for each the index
of a chunk record in the bootstrap's chunk table (the first one, when several files share a
deduplicated chunk). Zero chunks are stored nowhere and are left out.

Building one scans the whole chunk table (one C-level unpack of the fields it needs), so it is
done lazily, on the blob's first miss and in a worker thread, never at mount.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from itertools import islice

from rafs import layout
from rafs.bootstrap import Bootstrap

# blob_index, flags and compressed_offset of a chunk record; the rest of its 64 bytes skipped.
_PLACE = struct.Struct(f"<IIQ{layout.CHUNK.size - 16}x")


class BlobOrder:
    """Chunk indexes of one blob sorted by stored offset."""

    def __init__(self, offsets: array[int], indexes: array[int]) -> None:
        self.offsets = offsets
        self.indexes = indexes

    @classmethod
    def build(cls, bootstrap: Bootstrap, blob_index: int) -> BlobOrder:
        """Scan the chunk table for the stored chunks of blob `blob_index`."""
        sb = bootstrap.superblock
        start = sb.chunk_table_offset
        end = start + sb.chunk_count * layout.CHUNK.size
        with memoryview(bootstrap.buffer) as whole, whole[start:end] as table:
            places = sorted(
                (offset, index)
                for index, (blob, flags, offset) in enumerate(_PLACE.iter_unpack(table))
                if blob == blob_index and not flags & layout.CHUNK_ZERO
            )
        offsets: array[int] = array("Q")
        indexes: array[int] = array("I")
        for offset, index in places:
            if not offsets or offsets[-1] != offset:  # a shared chunk: keep its first record
                offsets.append(offset)
                indexes.append(index)
        return cls(offsets, indexes)

    def __len__(self) -> int:
        return len(self.offsets)

    def after(self, offset: int) -> Iterator[int]:
        """Chunk indexes of the chunks stored after `offset`, in stored order."""
        return islice(self.indexes, bisect_right(self.offsets, offset), None)

    def nbytes(self) -> int:
        """Memory held by the two arrays."""
        return self.offsets.itemsize * len(self.offsets) + self.indexes.itemsize * len(self.indexes)
