"""`Readahead`: which chunks to fetch before a FUSE read asks for them. One object, four policies.

Most images are converted without an access trace, so the daemon must guess what a start needs
next. It uses what the workload shows it:

- **Whole files on open** (`whole_file_max`): the first open of a regular file of at most that
  many bytes queues all its missing chunks, in file order, at readahead priority (unless the
  prefetch chunk table, a trace of a start, names the chunks of it to fetch). A start reads
  most of what it opens (a script, a module, a shared library mapped and faulted in page by page
  in no useful order), and fetching a file's chunks in parallel turns many serial misses into a
  few round trips. It is what a trace-built prefetch list would fetch, found at run time. The
  open counts as the file's first miss: blob-order amplification (below) applies to it.
- **A sequential window** (`window_max`): reads of one file that continue each other (a large
  file streamed) fetch the bytes after them, in a window that starts at `WINDOW_START` and
  doubles with each batch while the reads keep following each other, up to `window_max`; a new
  batch is asked for when half of the last one is used up, as the kernel's own readahead does.
  A read elsewhere in the file starts the window again.
- **Blob-order amplification** (`amplify_io`, Nydus's meaning): a demand miss (or a file's
  first open) also fetches the chunks stored in the `amplify_io` bytes right after it in the same
  blob, in a request of its own behind the miss's. The builder stores files in tar order (a
  package's files together) or in prefetch order, so they are often the next ones a start opens.
  It also reaches back a quarter of that window (`AMPLIFY_BEFORE_SHARE`): a tar stores a
  directory's files by name, and a start opens them in the order it needs them, so the next one
  is often stored just before the miss.
  How often is measured (`adaptive_amplify`, on by default): once `LEARN_AMPLIFIED_BYTES` have
  been brought this way, the window is `amplify_io` scaled by the share of those bytes that reads
  have used since (full at `USED_FOR_FULL_WINDOW`, never below `MIN_AMPLIFY_FRACTION` of it).
  On a large image whose libraries sit together it stays whole; on an image whose start reads
  one file here and one there it shrinks, and stops fetching what nobody reads.

- **A listed file the start reaches early**: a read that needs a chunk the prefetch list has
  queued but not yet started moves the file's other queued chunks ahead of the rest of the list
  (once per file). A library's code is listed at the end, since a start often runs little of
  it, but one whose code does run (LLVM's constructors, say) faults it in from the moment it is
  loaded, one chunk at a time, each a wait behind the whole list; this turns those waits into a
  few parallel fetches. On debian-sci's cold start it took 5.47-5.52 s against 5.64-5.77 s at
  400 Mbit/s, 7.68 against 7.79 s at 200 (medians of 3, alternating runs).

All four queue background jobs (`ChunkSource.want`); `ChunkSource` asks the third for each
demand miss. The per-blob stored order comes from `daemon.blob_order`, built on the
blob's first miss: on the event loop for a small chunk table, else in a background thread, so
the first miss never waits for it (misses in that blob meanwhile get no amplification).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.blob_order import BlobOrder
from daemon.chunks import ChunkSource, Priority
from daemon.storage.fetch import ChunkRequest
from rafs.bootstrap import Bootstrap
from rafs.errors import NydusError
from rafs.records import ChunkSlice

log = logging.getLogger(__name__)

WINDOW_START = 1 << 20
MAX_TRACKED_FILES = 4096
# A blob's order is built on the event loop when the chunk table has at most this many records
# (about 1 ms on the 2-core VM, ~0.5 us a record), else in a background thread.
INLINE_ORDER_CHUNKS = 2048
# Earned amplification: judged once this much has been brought, full window from this share used.
LEARN_AMPLIFIED_BYTES = 4 << 20
USED_FOR_FULL_WINDOW = 1 / 3
MIN_AMPLIFY_FRACTION = 1 / 8
MAX_TRACKED_AMPLIFIED = 1 << 16
# Amplification also reaches back this share of its window before a miss: a directory's files are
# stored by name, and a start opens them in the order it needs them (Python imports), not by name.
AMPLIFY_BEFORE_SHARE = 1 / 4


@dataclass
class _Stream:
    """One file read in order: where its last read ended, the window, and how far was asked for."""

    next_offset: int
    window: int
    ahead_end: int


class Readahead:
    """The readahead policies of one mount (see the module docstring)."""

    def __init__(
        self,
        bootstrap: Bootstrap,
        chunks: ChunkSource,
        *,
        amplify_io: int = 1 << 20,
        whole_file_max: int = 256 << 20,
        window_max: int = 32 << 20,
        adaptive_amplify: bool = True,
    ) -> None:
        self.bootstrap = bootstrap
        self.chunks = chunks
        self.amplify_io = amplify_io
        self.whole_file_max = whole_file_max
        self.window_max = window_max
        self.adaptive_amplify = adaptive_amplify
        self._amplified: dict[int, int] = {}  # chunk index -> stored bytes: amplified, not read yet
        self.amplified_bytes = 0  # stored bytes amplification asked for
        self.amplified_used_bytes = 0  # of those, read since
        self._opened: set[int] = set()  # files whose first open queued them whole
        self._prefetched_by_chunk: set[int] = set()  # files whose needed chunks a trace named
        self._hurried: set[int] = set()  # files whose queued prefetch chunks were moved ahead
        self._streams: dict[int, _Stream] = {}  # files being read in order
        self._orders: dict[int, BlobOrder] = {}  # by blob index, built on the blob's first miss
        self._ordering: set[int] = set()  # blob indexes whose order was asked for
        chunks.along = self.along

    # -- whole files on open ---------------------------------------------------------------------

    def leave_to_prefetch(self, inodes: set[int]) -> None:
        """These files' chunks that a start reads are being prefetched (a prefetch chunk table,
        made from a trace of a start): opening one does not fetch it whole, which would bring the
        parts of a large library the trace shows the start never touches."""
        self._prefetched_by_chunk |= inodes

    def opened(self, ino: int) -> None:
        """A file was opened: on its first open, queue all of it if it is small enough."""
        if not self.whole_file_max or ino in self._opened or ino in self._prefetched_by_chunk:
            return
        inode = self.bootstrap.inode(ino)
        if not inode.is_reg or inode.size > self.whole_file_max or inode.size == 0:
            return
        if len(self._opened) >= 1 << 20:
            self._opened.clear()
        self._opened.add(ino)
        requests = []
        for index in range(inode.data_start, inode.data_start + inode.data_count):
            record = self.bootstrap.chunk(index)
            if not record.is_zero:
                requests.append(self.chunks.request(index, record))
        if any(self.chunks.absent(request) for request in requests):
            # The open stands for the file's first miss: what is stored after it follows. (A file
            # already here, prefetched or brought by amplification, brings nothing more.)
            self.chunks.want(requests, Priority.READAHEAD)
            self.chunks.want(self.along(requests), Priority.READAHEAD)

    # -- listed files reached early -----------------------------------------------------------------

    def reached(self, ino: int, pieces: Sequence[ChunkSlice]) -> None:
        """A read of `pieces` of file `ino`: if one waits in the prefetch queue, move the file's
        other queued chunks ahead of the rest of the list (see the module docstring)."""
        if ino in self._hurried or not self.chunks.prefetch_waiting():
            return  # the check below costs a lookup a piece: skipped on warm reads and after prefetch
        if not any(
            self.chunks.queued_for_prefetch(self.chunks.request(piece.chunk_index, piece.record)) is not None
            for piece in pieces
            if not piece.record.is_zero
        ):
            return
        if len(self._hurried) >= MAX_TRACKED_FILES:
            self._hurried.clear()
        self._hurried.add(ino)
        inode = self.bootstrap.inode(ino)
        requests = []
        for index in range(inode.data_start, inode.data_start + inode.data_count):
            record = self.bootstrap.chunk(index)
            if not record.is_zero:
                requests.append(self.chunks.request(index, record))
        self.chunks.hurry_prefetch(requests)

    # -- sequential window ------------------------------------------------------------------------

    def followed(self, ino: int, offset: int, size: int) -> None:
        """A read of [offset, offset+size): if it continues the file's last read, keep fetching ahead.

        Like the kernel's readahead, a new batch is asked for only when the reads have used up
        half of what was asked for before, so the batches stay large (few range requests) and
        the window doubles with each one.
        """
        if not self.window_max or ino in self._opened:
            return
        end = offset + size
        stream = self._streams.get(ino)
        if offset != 0 and (stream is None or stream.next_offset != offset):
            self._remember(ino, _Stream(end, 0, end))  # a read elsewhere: the window starts again
            return
        if stream is None:
            stream = _Stream(end, 0, end)
        stream.next_offset = end
        if stream.window and stream.ahead_end - end >= stream.window // 2:
            self._remember(ino, stream)
            return
        stream.window = min(max(stream.window * 2, WINDOW_START), self.window_max)
        start = max(stream.ahead_end, end)
        stream.ahead_end = end + stream.window
        self._remember(ino, stream)
        pieces = self.bootstrap.chunk_span(ino, start, stream.ahead_end - start)
        requests = [
            self.chunks.request(piece.chunk_index, piece.record) for piece in pieces if not piece.record.is_zero
        ]
        self.chunks.want(requests, Priority.READAHEAD)

    def _remember(self, ino: int, stream: _Stream) -> None:
        if ino not in self._streams and len(self._streams) >= MAX_TRACKED_FILES:
            self._streams.clear()
        self._streams[ino] = stream

    # -- blob-order amplification ----------------------------------------------------------------

    def amplify_window(self) -> int:
        """Stored bytes to bring after a miss: `amplify_io`, scaled by how much of it reads used."""
        if not self.adaptive_amplify or self.amplified_bytes < LEARN_AMPLIFIED_BYTES:
            return self.amplify_io
        used = self.amplified_used_bytes / self.amplified_bytes
        fraction = max(MIN_AMPLIFY_FRACTION, min(1.0, used / USED_FOR_FULL_WINDOW))
        return int(self.amplify_io * fraction)

    def used(self, pieces: Sequence[ChunkSlice]) -> None:
        """A read asked for these chunks: count those that amplification brought as used."""
        if self._amplified:
            for piece in pieces:
                stored = self._amplified.pop(piece.chunk_index, 0)
                self.amplified_used_bytes += stored

    def along(self, requests: list[ChunkRequest]) -> list[ChunkRequest]:
        """The absent chunks stored in the window (`amplify_window`) after the last of `requests` in
        each blob, then those in the `AMPLIFY_BEFORE_SHARE` of it before the first."""
        window = self.amplify_window() if self.amplify_io else 0
        if not window:
            return []
        spans: dict[int, tuple[int, int]] = {}  # blob index -> (first stored offset, last stored end)
        for request in requests:
            record = request.record
            start, end = record.compressed_offset, record.compressed_offset + record.compressed_size
            first, last = spans.get(record.blob_index, (start, end))
            spans[record.blob_index] = (min(first, start), max(last, end))
        before = int(window * AMPLIFY_BEFORE_SHARE)
        extra: list[ChunkRequest] = []
        for blob_index, (first, last) in spans.items():
            order = self._blob_order(blob_index)
            if order is not None:
                extra += self._stored_after(order, blob_index, last, last + window)
                if before:
                    extra += self._stored_after(order, blob_index, max(0, first - before), first)
        if len(self._amplified) + len(extra) > MAX_TRACKED_AMPLIFIED:
            self._amplified.clear()  # bounded memory; the counts stay
        for request in extra:
            self._amplified[request.chunk_index] = request.record.compressed_size
            self.amplified_bytes += request.record.compressed_size
        return extra

    def _blob_order(self, blob_index: int) -> BlobOrder | None:
        """The blob's chunks in stored order, or None while a background thread builds them."""
        if blob_index not in self._ordering:
            self._ordering.add(blob_index)
            if self.bootstrap.superblock.chunk_count <= INLINE_ORDER_CHUNKS:
                self._build_order(blob_index)
            else:
                self.chunks.in_thread(lambda: self._build_order(blob_index))
        return self._orders.get(blob_index)

    def _build_order(self, blob_index: int) -> None:
        started = time.monotonic()
        order = BlobOrder.build(self.bootstrap, blob_index)
        self._orders[blob_index] = order  # one dict store: safe to publish from a thread
        log.debug("blob %d order: %d chunks, %d bytes, %.1f ms", blob_index, len(order), order.nbytes(),
                  (time.monotonic() - started) * 1000)  # fmt: skip

    def _stored_after(self, order: BlobOrder, blob_index: int, start: int, end: int) -> list[ChunkRequest]:
        """Absent chunks of the blob stored at [start, end), in stored order."""
        found: list[ChunkRequest] = []
        blob = self.bootstrap.blobs[blob_index]
        try:
            for index in order.after(start - 1):
                record = self.bootstrap.chunk(index)
                if record.compressed_offset + record.compressed_size > end:
                    break
                request = ChunkRequest(index, record, blob)
                if self.chunks.absent(request):
                    found.append(request)
        except NydusError as error:  # a corrupt record ends amplification, not the read
            log.warning("readahead stopped: %s", error)
        return found
