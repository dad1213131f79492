"""`Prefetcher`: fetch likely-needed chunks in the background after mounting.

What: the files of `--prefetch-files` (or else the bootstrap's prefetch table; a directory means
its whole subtree), then, with `prefetch_all`, every chunk of every blob. How: chunks not yet
cached, sorted by blob and offset, cut into runs of adjacent chunks of at most `merging_size`
bytes, one range request each, through `ChunkSource` so a chunk being prefetched is never
fetched twice (single flight). On-demand reads go first: a run starts only when no read waits
for a fetch slot, and prefetch holds one slot at a time. `bandwidth_rate` (bytes/s, 0 =
unlimited) paces the runs. Runs in the daemon's nursery; cancelled at unmount.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from daemon.chunks import ChunkSource
from daemon.storage.fetch import ChunkRequest, merge_ranges
from rafs.bootstrap import Bootstrap
from rafs.errors import NydusError

log = logging.getLogger(__name__)

POLL_S = 0.005


@dataclass
class PrefetchStats:
    runs: int = 0
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
    """Every stored (non-zero) chunk of these files."""
    bootstrap = chunks.bootstrap
    requests: list[ChunkRequest] = []
    for ino in inodes:
        inode = bootstrap.inode(ino)
        for index in range(inode.data_start, inode.data_start + inode.data_count):
            record = bootstrap.chunk(index)
            if not record.is_zero:
                requests.append(ChunkRequest(index, record, bootstrap.blobs[record.blob_index]))
    return requests


def all_requests(chunks: ChunkSource) -> list[ChunkRequest]:
    """Every stored chunk in the image's chunk table."""
    bootstrap = chunks.bootstrap
    requests: list[ChunkRequest] = []
    for index in range(bootstrap.superblock.chunk_count):
        record = bootstrap.chunk(index)
        if not record.is_zero:
            requests.append(ChunkRequest(index, record, bootstrap.blobs[record.blob_index]))
    return requests


class Prefetcher:
    """Background fetching that always yields to on-demand reads."""

    def __init__(
        self,
        chunks: ChunkSource,
        *,
        files: Sequence[bytes] | None,
        prefetch_all: bool,
        merging_size: int,
        bandwidth_rate: int = 0,
    ) -> None:
        self.chunks = chunks
        self.files = files
        self.prefetch_all = prefetch_all
        self.merging_size = merging_size
        self.bandwidth_rate = bandwidth_rate
        self.stats = PrefetchStats()

    def plan(self) -> list[list[ChunkRequest]]:
        """Runs to fetch, hinted files first; blocking (walks tables), so run in a thread."""
        bootstrap = self.chunks.bootstrap
        inodes = file_inodes(bootstrap, self.files) if self.files is not None else bootstrap.prefetch_inodes()
        runs = self._runs(file_requests(self.chunks, inodes))
        if self.prefetch_all:
            planned = {request.key for run in runs for request in run}
            runs += self._runs([r for r in all_requests(self.chunks) if r.key not in planned])
        return runs

    def _runs(self, requests: list[ChunkRequest]) -> list[list[ChunkRequest]]:
        missing = [request for request in requests if not self.chunks.cache.has(request.key)]
        return merge_ranges(missing, self.merging_size)

    async def _turn(self) -> None:
        """Wait until no on-demand read waits for a fetch slot and one is free."""
        limiter = self.chunks.fetch_limiter
        while True:
            stats = limiter.statistics()
            if stats.tasks_waiting == 0 and stats.borrowed_tokens < stats.total_tokens:
                return
            await trio.sleep(POLL_S)

    async def run(self) -> None:
        """Fetch every planned run, then return; errors are logged and counted, never raised."""
        runs = await trio.to_thread.run_sync(self.plan)
        total = sum(request.record.compressed_size for run in runs for request in run)
        log.info("prefetch: %d chunks in %d runs, %d bytes", sum(map(len, runs)), len(runs), total)
        started = time.monotonic()
        for run in runs:
            await self._turn()
            run = [request for request in run if not self.chunks.cache.has(request.key)]
            if not run:
                continue
            results = await self.chunks.fetch(run)
            failed = [result for result in results.values() if isinstance(result, NydusError)]
            self.stats.runs += 1
            self.stats.chunks += len(run) - len(failed)
            self.stats.bytes += sum(request.record.compressed_size for request in run)
            if failed:
                self.stats.errors += len(failed)
                log.warning("prefetch: %d chunk(s) failed: %s", len(failed), failed[0])
            if self.bandwidth_rate:
                ahead = self.stats.bytes / self.bandwidth_rate - (time.monotonic() - started)
                if ahead > 0:
                    await trio.sleep(ahead)
        log.info("prefetch done: %s in %.1f s", self.stats, time.monotonic() - started)
