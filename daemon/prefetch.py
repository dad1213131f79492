"""`Prefetcher`: fetch the prefetch list in the background after mounting.

What: the files of `--prefetch-files` (or else the bootstrap's prefetch table; a directory means
its whole subtree), then, with `prefetch_all`, every chunk of every blob. How: the chunks not yet
cached are queued at once, in merged runs, at prefetch priority (`daemon.chunks`): the fetch
workers take them whenever no on-demand read or readahead is waiting, so the link stays busy
without delaying reads, and `bandwidth_rate` (bytes/s, 0 = unlimited) paces them. A chunk being
prefetched is never fetched twice (single flight); a read that needs one not yet started moves
its run to the front. Runs in the daemon's nursery; cancelled at unmount.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from daemon.chunks import ChunkSource, Priority
from daemon.storage.fetch import ChunkRequest
from rafs.bootstrap import Bootstrap

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


def file_requests(chunks: ChunkSource, inodes: Iterable[int]) -> list[ChunkRequest]:
    """Every stored (non-zero) chunk of these files, in list order."""
    bootstrap = chunks.bootstrap
    requests: list[ChunkRequest] = []
    for ino in inodes:
        inode = bootstrap.inode(ino)
        for index in range(inode.data_start, inode.data_start + inode.data_count):
            record = bootstrap.chunk(index)
            if not record.is_zero:
                requests.append(chunks.request(index, record))
    return requests


def all_requests(chunks: ChunkSource) -> list[ChunkRequest]:
    """Every stored chunk in the image's chunk table."""
    bootstrap = chunks.bootstrap
    requests: list[ChunkRequest] = []
    for index in range(bootstrap.superblock.chunk_count):
        record = bootstrap.chunk(index)
        if not record.is_zero:
            requests.append(chunks.request(index, record))
    return requests


class Prefetcher:
    """Background fetching that always yields to on-demand reads and readahead."""

    def __init__(self, chunks: ChunkSource, *, files: Sequence[bytes] | None, prefetch_all: bool) -> None:
        self.chunks = chunks
        self.files = files
        self.prefetch_all = prefetch_all
        self.stats = PrefetchStats()

    def plan(self) -> list[ChunkRequest]:
        """Chunks to fetch, listed files first; blocking (walks tables), so run in a thread."""
        bootstrap = self.chunks.bootstrap
        inodes = file_inodes(bootstrap, self.files) if self.files is not None else bootstrap.prefetch_inodes()
        requests = file_requests(self.chunks, inodes)
        if self.prefetch_all:
            planned = {request.key for request in requests}
            requests += [request for request in all_requests(self.chunks) if request.key not in planned]
        return requests

    async def run(self) -> None:
        """Fetch every planned chunk, then return; errors are logged and counted, never raised."""
        requests = await trio.to_thread.run_sync(self.plan)
        wanted = [request for request in requests if self.chunks.absent(request)]
        total = sum(request.record.compressed_size for request in wanted)
        if not wanted:
            log.debug("prefetch: nothing to fetch (%d chunks listed)", len(requests))
            return
        log.info("prefetch: %d chunks, %d bytes", len(wanted), total)
        started = time.monotonic()
        failed = await self.chunks.fetch(wanted, Priority.PREFETCH)
        self.stats.chunks += len(wanted) - failed
        self.stats.bytes += total
        self.stats.errors += failed
        if failed:
            log.warning("prefetch: %d chunk(s) failed", failed)
        log.info("prefetch done: %s in %.1f s", self.stats, time.monotonic() - started)
