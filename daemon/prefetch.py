"""`Prefetcher`: fetch the prefetch list in the background after mounting.

What: the entries of `--prefetch-files` (whole files, or the chunks holding a byte range; a
directory means its whole subtree), or else the bootstrap's prefetch chunk table (the chunks a
traced start read, in the order it first read them), or else its prefetch table (whole files);
then, with `prefetch_all`, every chunk of every blob. How: the chunks not yet
cached are queued in merged runs, at prefetch priority (`daemon.chunks`), a batch at a time as
they are planned (the first batch is small, so the first requests go out at once): the fetch
workers take them whenever no on-demand read or readahead is waiting, so the link stays busy
without delaying reads, and `bandwidth_rate` (bytes/s, 0 = unlimited) paces them. A chunk being
prefetched is never fetched twice (single flight); a read that needs one not yet started moves
its run to the front. Runs in the daemon's nursery; cancelled at unmount.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import trio

from daemon.chunks import ChunkSource, Flight, Priority
from daemon.readahead import Readahead
from daemon.storage.cache import ChunkKey
from daemon.storage.fetch import ChunkRequest
from rafs.bootstrap import Bootstrap
from rafs.errors import NydusError
from rafs.pathlist import PrefetchEntry

log = logging.getLogger(__name__)


@dataclass
class PrefetchStats:
    chunks: int = 0
    bytes: int = 0
    errors: int = 0


def file_inodes(bootstrap: Bootstrap, paths: Iterable[bytes]) -> list[int]:
    """Regular files named by `paths` (a directory stands for every file below it), in order."""
    result: list[int] = []
    seen: set[int] = set()
    for path in paths:
        ino = bootstrap.resolve(path)
        if ino is None:
            log.warning("prefetch: %s is not in the image", path.decode(errors="replace"))
            continue
        stack = [ino]
        while stack:
            current = stack.pop()
            inode = bootstrap.inode(current)
            if inode.is_dir:
                stack.extend(reversed([entry.ino for entry in bootstrap.readdir(current)]))
            elif inode.is_reg and current not in seen:
                seen.add(current)
                result.append(current)
    return result


ALL_CHUNKS = -1  # in a listed (inode, chunk index): every chunk of the file


def listed_chunks(bootstrap: Bootstrap, entries: Iterable[PrefetchEntry]) -> Iterator[tuple[int, int]]:
    """(inode, chunk index in the file) that `entries` name, in list order: a range names the
    chunks holding its bytes, a whole file (or a directory, for each file below it) ALL_CHUNKS."""
    missing: set[bytes] = set()  # warned about once each (a trace names a file on many lines)
    for entry in entries:
        if entry.path in missing:
            continue
        if entry.end is None:
            yield from ((ino, ALL_CHUNKS) for ino in file_inodes(bootstrap, [entry.path]))
            continue
        ino = bootstrap.resolve(entry.path)
        inode = bootstrap.inode(ino) if ino is not None else None
        if ino is None or inode is None or not inode.is_reg:
            log.warning("prefetch: %s is not a file of the image", entry.path.decode(errors="replace"))
            missing.add(entry.path)
            continue
        yield from ((ino, index) for index in entry.chunk_indexes(bootstrap.chunk_size, inode.data_count))


def chunk_requests(chunks: ChunkSource, listed: Iterable[tuple[int, int]]) -> Iterator[ChunkRequest]:
    """The stored (non-zero) chunks listed as (inode, chunk index in the file or ALL_CHUNKS),
    each once, in list order. An entry naming no chunk of a regular file (a damaged table: the
    tables are only a hint) is skipped with a warning."""
    bootstrap = chunks.bootstrap
    seen: set[int] = set()
    skipped = 0
    for ino, index in listed:
        try:
            inode = bootstrap.inode(ino) if 1 <= ino <= bootstrap.inode_count else None
        except NydusError:
            inode = None
        if inode is None or not inode.is_reg or not ALL_CHUNKS <= index < inode.data_count:
            skipped += 1
            continue
        indexes = range(inode.data_count) if index == ALL_CHUNKS else (index,)
        for chunk_index in (inode.data_start + i for i in indexes):
            record = bootstrap.chunk(chunk_index)
            if not record.is_zero and chunk_index not in seen:
                seen.add(chunk_index)
                yield chunks.request(chunk_index, record)
    if skipped:
        log.warning("prefetch: %d entries name no chunk of a file in the image; skipped", skipped)


def all_requests(chunks: ChunkSource) -> Iterator[ChunkRequest]:
    """Every stored chunk in the image's chunk table."""
    bootstrap = chunks.bootstrap
    for index in range(bootstrap.superblock.chunk_count):
        record = bootstrap.chunk(index)
        if not record.is_zero:
            yield chunks.request(index, record)


FIRST_BATCH = 16  # chunks planned before the first requests go out
BATCH = 512  # then this many at a time


def _take(requests: Iterator[ChunkRequest], count: int) -> list[ChunkRequest]:
    return list(itertools.islice(requests, count))


class Prefetcher:
    """Background fetching that always yields to on-demand reads and readahead."""

    def __init__(
        self,
        chunks: ChunkSource,
        *,
        files: Sequence[PrefetchEntry] | None,
        prefetch_all: bool,
        readahead: Readahead | None = None,
    ) -> None:
        self.chunks = chunks
        self.files = files
        self.prefetch_all = prefetch_all
        self.readahead = readahead
        self.by_chunk: set[int] = set()  # files of which the plan names chunks, not the whole file
        self.stats = PrefetchStats()

    def plan(self) -> Iterator[ChunkRequest]:
        """Chunks to fetch, listed files first, each once. Lazy: looking an inode up verifies it
        and its directories (0.2 s for a trace of 2,000 files of a large image), so `run` plans
        in batches in a thread and sends each batch's requests before planning the next."""
        bootstrap = self.chunks.bootstrap
        listed: Iterable[tuple[int, int]]
        if self.files is not None:
            listed = self._noting_by_chunk(listed_chunks(bootstrap, self.files))
        elif table := bootstrap.prefetch_chunks():
            self.by_chunk = {ino for ino, _ in table}
            listed = table
        else:
            listed = [(ino, ALL_CHUNKS) for ino in bootstrap.prefetch_inodes()]
        planned: set[ChunkKey] = set()
        for request in chunk_requests(self.chunks, listed):
            planned.add(request.key)
            yield request
        if self.prefetch_all:
            yield from (request for request in all_requests(self.chunks) if request.key not in planned)

    def _noting_by_chunk(self, listed: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        for ino, index in listed:
            if index != ALL_CHUNKS:
                self.by_chunk.add(ino)
            yield ino, index

    async def run(self) -> None:
        """Fetch every planned chunk, then return; errors are logged and counted, never raised."""
        planned = self.plan()
        batch_size = FIRST_BATCH
        flights: list[Flight] = []
        listed = 0
        started = time.monotonic()
        while batch := await trio.to_thread.run_sync(_take, planned, batch_size):
            batch_size = BATCH
            listed += len(batch)
            if self.readahead is not None and self.by_chunk:
                self.readahead.leave_to_prefetch(self.by_chunk)
            wanted = [request for request in batch if self.chunks.absent(request)]
            self.stats.bytes += sum(request.record.compressed_size for request in wanted)
            flights += self.chunks.want(wanted, Priority.PREFETCH)
        if not flights:
            log.debug("prefetch: nothing to fetch (%d chunks listed)", listed)
            return
        log.info("prefetch: %d chunks, %d bytes", len(flights), self.stats.bytes)
        failed = await self.chunks.settle(flights)
        self.stats.chunks += len(flights) - failed
        self.stats.errors += failed
        if failed:
            log.warning("prefetch: %d chunk(s) failed", failed)
        log.info("prefetch done: %s in %.1f s", self.stats, time.monotonic() - started)
