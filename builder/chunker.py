"""Cut file contents into chunks, digest them, dedup them and hand new ones to a blob writer.

A `ChunkStore` lives for one build. It knows every chunk seen so far (by digest and size), in
this build's blobs or in a chunk dictionary, so an identical chunk is stored once. Chunk
records are `PendingChunk`s until the end of the build, because a blob's index in the blob
table and the final offsets (prefetch chunks move to the front) are only known then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from builder.blobs import BlobWriter, StoredChunk
from rafs import layout
from rafs.digest import chunk_digest
from rafs.records import BlobRecord, ChunkRecord


@dataclass(eq=False)
class BlobSlot:
    """A blob that chunks may refer to: one written by this build, or one from a chunk dict."""

    writer: BlobWriter | None = None
    record: BlobRecord | None = None
    used: bool = False


@dataclass(eq=False)
class PendingChunk:
    """A chunk whose blob index and offset become final when its blob is finished."""

    slot: BlobSlot | None
    stored: StoredChunk | None
    digest: bytes
    uncompressed_size: int
    flags: int
    compressed_offset: int = 0
    compressed_size: int = 0

    def record(self, file_offset: int, blob_index: dict[int, int]) -> ChunkRecord:
        """The final chunk record for this chunk at `file_offset` of some file."""
        flags = self.flags
        if self.stored is not None:
            offset, size = self.stored.final_offset, self.stored.stored_size
            if self.stored.compressed:
                flags |= layout.CHUNK_COMPRESSED
        else:
            offset, size = self.compressed_offset, self.compressed_size
        index = blob_index[id(self.slot)] if self.slot is not None else 0
        return ChunkRecord(index, flags, offset, size, self.uncompressed_size, file_offset, self.digest)


@dataclass
class ChunkStats:
    """Figures reported by `--output-json`."""

    chunks: int = 0
    deduplicated_chunks: int = 0
    zero_chunks: int = 0
    bytes_in: int = 0


@dataclass
class ChunkStore:
    """Dedup index plus the ordered list of blob slots of one build."""

    chunk_size: int
    digester: int
    compressor: int
    new_blob_writer: Callable[[], BlobWriter]
    slots: list[BlobSlot] = field(default_factory=list)
    known: dict[tuple[bytes, int], PendingChunk] = field(default_factory=dict)
    current: BlobSlot | None = None
    existing: dict[str, BlobSlot] = field(default_factory=dict)
    stats: ChunkStats = field(default_factory=ChunkStats)
    _zero_digests: dict[int, bytes] = field(default_factory=dict)

    def slot_for(self, blob: BlobRecord) -> BlobSlot:
        """The one slot of an existing blob, shared by every bootstrap that names it."""
        slot = self.existing.get(blob.blob_id)
        if slot is None:
            slot = self.existing[blob.blob_id] = BlobSlot(record=blob)
        return slot

    def add_dictionary(self, blobs: list[BlobRecord], chunks: list[ChunkRecord]) -> None:
        """Seed the index with another image's chunks (`--chunk-dict`); its blobs join on use."""
        dict_slots = [self.slot_for(blob) for blob in blobs]
        for chunk in chunks:
            if chunk.is_zero:
                continue
            key = (chunk.digest, chunk.uncompressed_size)
            if key not in self.known:
                self.known[key] = PendingChunk(
                    dict_slots[chunk.blob_index],
                    None,
                    chunk.digest,
                    chunk.uncompressed_size,
                    chunk.flags,
                    chunk.compressed_offset,
                    chunk.compressed_size,
                )

    def add_chunk(self, data: bytes) -> PendingChunk:
        """Digest `data`; reuse a known identical chunk or store it in the current blob."""
        self.stats.chunks += 1
        self.stats.bytes_in += len(data)
        if data.count(0) == len(data):
            self.stats.zero_chunks += 1
            zero_digest = self._zero_digests.get(len(data))
            if zero_digest is None:
                zero_digest = self._zero_digests[len(data)] = chunk_digest(data, self.digester)
            return PendingChunk(None, None, zero_digest, len(data), layout.CHUNK_ZERO)
        digest = chunk_digest(data, self.digester)
        key = (digest, len(data))
        known = self.known.get(key)
        if known is not None:
            self.stats.deduplicated_chunks += 1
            self.use(known.slot)
            return known
        slot = self._current_slot()
        assert slot.writer is not None
        stored = slot.writer.add(data)  # its COMPRESSED flag: known when the blob is finished
        pending = PendingChunk(slot, stored, digest, len(data), 0)
        self.known[key] = pending
        return pending

    def use(self, slot: BlobSlot | None) -> None:
        if slot is not None and not slot.used:
            slot.used = True
            self.slots.append(slot)

    def _current_slot(self) -> BlobSlot:
        if self.current is None:
            self.current = BlobSlot(writer=self.new_blob_writer())
            self.use(self.current)
        return self.current

    def finish_blob(self) -> None:
        """Close the current blob (end of a layer): later chunks go to a new blob. Its layout is
        made by `blob_table`, once prefetch ranks are given."""
        if self.current is not None and self.current.writer is not None:
            self.current.writer.seal()
        self.current = None

    def read_chunk(self, chunk: PendingChunk) -> bytes | None:
        """The uncompressed bytes of a chunk of this build (None: in a blob this build did not
        write, from a parent bootstrap or a chunk dictionary)."""
        if chunk.flags & layout.CHUNK_ZERO:
            return bytes(chunk.uncompressed_size)
        if chunk.stored is None or chunk.slot is None or chunk.slot.writer is None:
            return None
        return chunk.slot.writer.read_chunk(chunk.stored)

    @staticmethod
    def rank(chunk: PendingChunk, prefetch_rank: int) -> None:
        """Put `chunk` at `prefetch_rank` of its blob's head (the lowest rank given wins)."""
        stored = chunk.stored
        if stored is not None and (stored.prefetch_rank is None or prefetch_rank < stored.prefetch_rank):
            stored.prefetch_rank = prefetch_rank

    def blob_table(self) -> tuple[list[BlobRecord], dict[int, int]]:
        """Lay out every blob this build wrote; the blob table in first-use order, and slot id ->
        blob index."""
        self.finish_blob()
        for slot in self.slots:
            if slot.writer is not None and slot.record is None:
                slot.record = slot.writer.finish()
        records: list[BlobRecord] = []
        index: dict[int, int] = {}
        for slot in self.slots:
            assert slot.record is not None
            index[id(slot)] = len(records)
            records.append(slot.record)
        return records, index
