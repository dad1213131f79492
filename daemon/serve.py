"""`serve`: open everything, mount, answer FUSE requests until told to stop, unmount.

Everything that can fail (bootstrap, config, backend, cache directory, stale mount) is done
before `pyfuse3.init` mounts, so the mountpoint appears only when the daemon can serve it.
SIGINT and SIGTERM stop the FUSE loop; requests still waiting on a backend get a short grace
period and are then cancelled, and the filesystem is unmounted on every exit path Python
controls. A daemon killed outright leaves a stale mount that the next start clears
(`daemon.mountpoint`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from functools import partial

import pyfuse3
import trio

from daemon.chunks import ChunkSource
from daemon.config import CacheConfig, DaemonConfig
from daemon.fs import RafsOperations
from daemon.mountpoint import mounts_at, prepare_mountpoint
from daemon.prefetch import Prefetcher
from daemon.readahead import Readahead
from daemon.reader import FileReader
from daemon.storage.backend import BlobBackend
from daemon.storage.backends import open_backend
from daemon.storage.cache import ChunkCache, DiskChunkCache, MemoryChunkCache
from daemon.timeline import Timeline
from daemon.trace import AccessTrace
from rafs.mapped import open_bootstrap

log = logging.getLogger(__name__)

# The kernel's largest FUSE request (FUSE_MAX_MAX_PAGES = 256 pages since Linux 4.20).
MAX_READ_BYTES = 1 << 20
STOP_GRACE_S = 2.0
MAX_FUSE_TASKS = 128


@dataclass(frozen=True)
class ServeOptions:
    bootstrap: str
    mountpoint: str
    config: DaemonConfig
    allow_other: bool = True
    prefetch_files: tuple[bytes, ...] | None = None  # `--prefetch-files`: overrides the bootstrap's table
    trace_out: str | None = None  # `--trace-out`: first-access order of files
    timeline_out: str | None = None  # `--timeline-out`: requests and blocked reads, for benchmarks
    started_at: float = 0.0  # when the process began (time.time()), for the timeline


def open_cache(config: CacheConfig) -> ChunkCache:
    if config.type == "blobcache":
        return DiskChunkCache(config.work_dir, size_limit=config.size_limit)
    return MemoryChunkCache()


def mount_options(allow_other: bool) -> set[str]:
    """Kernel permission checks and read-only.

    No `max_read=`: libfuse refuses it unless `init()` sets the same value, which pyfuse3
    cannot. Without it the kernel's limit is `max_pages`, which libfuse already negotiates at
    its maximum (1 MiB requests); `raise_readahead` lets sequential reads use them.
    """
    options = {"default_permissions", "ro", "fsname=nydusd", "subtype=rafs"}
    if allow_other:
        options.add("allow_other")
    return options


def raise_readahead(mountpoint: str) -> None:
    """Let sequential reads reach the daemon in 1 MiB requests (the kernel default is 128 KiB).

    Only once the kernel's INIT has been answered (the `stat` waits for it): the knob set
    earlier is overwritten by INIT's negotiation.
    """
    os.stat(mountpoint)
    for entry in mounts_at(mountpoint):
        path = f"/sys/class/bdi/{entry.device}/read_ahead_kb"
        try:
            with open(path, "w", encoding="ascii") as knob:
                knob.write(str(MAX_READ_BYTES // 1024))
        except OSError as error:
            log.debug("cannot raise readahead via %s: %s", path, error)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            await trio.sleep(STOP_GRACE_S)
            log.warning("requests still pending after %.0f s: cancelling them", STOP_GRACE_S)
            scope.cancel()
            return


async def serve(
    options: ServeOptions,
    *,
    backend: BlobBackend | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount `options.bootstrap` at `options.mountpoint` and serve until unmounted or signalled."""
    config = options.config
    bootstrap = open_bootstrap(options.bootstrap)
    backend = backend if backend is not None else open_backend(config.backend)
    timeline = Timeline(options.started_at or time.time()) if options.timeline_out else None
    fetch_workers = config.fs_prefetch.threads_count
    chunks = ChunkSource(
        bootstrap,
        backend,
        open_cache(config.cache),
        validate=config.digest_validate,
        merging_size=config.fs_prefetch.merging_size,
        fetch_workers=fetch_workers,
        demand_workers=max(1, fetch_workers // 4),
        bandwidth_rate=config.fs_prefetch.bandwidth_rate,
        timeline=timeline,
    )
    readahead = Readahead(
        bootstrap,
        chunks,
        amplify_io=config.amplify_io,
        whole_file_max=config.readahead.whole_file_max,
        window_max=config.readahead.window_max,
    )
    reader = FileReader(bootstrap, chunks, readahead, timeline)
    trace = AccessTrace(options.trace_out) if options.trace_out else None
    operations = RafsOperations(bootstrap, reader, enable_xattr=config.enable_xattr, trace=trace)
    mountpoint = os.path.abspath(options.mountpoint)
    prepare_mountpoint(mountpoint)
    pyfuse3.init(operations, mountpoint, mount_options(options.allow_other))
    if timeline is not None:
        timeline.mounted()
    log.info(
        "mounted %s at %s (%d inodes, %d blobs)",
        options.bootstrap,
        mountpoint,
        bootstrap.inode_count,
        len(bootstrap.blobs),
    )
    try:
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            await nursery.start(chunks.run)
            nursery.start_soon(partial(trio.to_thread.run_sync, raise_readahead, mountpoint, abandon_on_cancel=True))
            prefetch = config.fs_prefetch
            if prefetch.enable or options.prefetch_files is not None:
                prefetcher = Prefetcher(chunks, files=options.prefetch_files, prefetch_all=prefetch.prefetch_all)
                nursery.start_soon(prefetcher.run)
            await pyfuse3.main(max_tasks=MAX_FUSE_TASKS)
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)
        backend.close()
        if trace is not None:
            trace.close()
        if timeline is not None and options.timeline_out:
            timeline.write(options.timeline_out)
        log.info("unmounted %s (%s)", mountpoint, chunks.stats)
