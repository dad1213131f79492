"""`ImageMount`: everything that serves one image, from its bootstrap to its FUSE operations.

One per image: the daemon's single image, or each `POST /api/v1/mount` in shared mode. Each has
its own backend, cache, fetch workers, prefetch and metrics, so one image's failure or unmount
never touches another's. `open_image` does everything that can fail (bootstrap, backend,
cache directory) before anything is served; `run` owns the background tasks (fetch workers,
prefetch) in a nursery of its own, so `stop` ends exactly this image's work; `close` releases
its files and connections.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from daemon.chunks import ChunkSource
from daemon.config import CacheConfig, DaemonConfig
from daemon.health import run_health_checks
from daemon.metered import MeteredOperations
from daemon.metrics import BackendMetrics, FsMetrics, Inflight, MeteredBackend
from daemon.prefetch import Prefetcher
from daemon.readahead import Readahead
from daemon.reader import FileReader
from daemon.storage.backend import BlobBackend, MirrorWarming
from daemon.storage.backends import open_backend
from daemon.storage.cache import DATA_SUFFIX, INDEX_SUFFIX, ChunkCache, DiskChunkCache, MemoryChunkCache, blob_usage
from daemon.storage.health import HealthCheck, HealthChecked
from daemon.storage.options import BackendConfig, HttpConfig, LocalFsConfig
from daemon.timeline import Timeline
from daemon.trace import AccessTrace
from rafs.bootstrap import Bootstrap
from rafs.mapped import open_bootstrap
from rafs.pathlist import PrefetchEntry

log = logging.getLogger(__name__)

MIRROR_WARMING_THREADS = 8  # blobs asked about at once at mount (each question is a few round trips)

SECRET_KEYS = ("auth", "registry_token", "password")


def backend_type(config: BackendConfig) -> str:
    """The config's `device.backend.type`: what the API and the backend metrics call it."""
    if isinstance(config, LocalFsConfig):
        return "localfs"
    if isinstance(config, HttpConfig):
        return "http"
    return "registry"


def open_cache(config: CacheConfig) -> ChunkCache:
    if config.type == "blobcache":
        return DiskChunkCache(config.work_dir, size_limit=config.size_limit)
    return MemoryChunkCache()


def redacted(value: object) -> object:
    """`value` with credentials blanked, for reporting a config over the API."""
    if isinstance(value, dict):
        return {k: "<redacted>" if k in SECRET_KEYS and v else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(item) for item in value]
    return value


@dataclass(frozen=True)
class MountOptions:
    """What one image is served with, beyond its config."""

    id: str = "/"  # the mountpoint within the FUSE mount; the metrics' `id`
    prefetch_files: tuple[PrefetchEntry, ...] | None = None  # overrides the bootstrap's prefetch table
    trace_out: str | None = None  # `--trace-out`: first-access order of files
    timeline: Timeline | None = None  # `--timeline-out`: requests and blocked reads
    ino_base: int = 0  # added to inode numbers reported as in flight (shared mode)


@dataclass
class PrefetchTimes:
    begin: float = 0.0
    end: float = 0.0


@dataclass
class ImageMount:
    source: str
    config: DaemonConfig
    options: MountOptions
    bootstrap: Bootstrap
    backend: BlobBackend
    cache: ChunkCache
    chunks: ChunkSource
    readahead: Readahead
    operations: MeteredOperations
    metrics: FsMetrics
    backend_metrics: BackendMetrics
    trace: AccessTrace | None
    mounted_time: float = field(default_factory=time.time)
    prefetcher: Prefetcher | None = None
    prefetch_times: PrefetchTimes = field(default_factory=PrefetchTimes)
    health_checks: Sequence[HealthCheck] = ()  # the backend's mirrors and proxy, pinged while mounted
    mirror_warming: MirrorWarming | None = None  # asked at mount to start mirrors caching every blob
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _distinct_chunks: int | None = None

    @property
    def id(self) -> str:
        return self.options.id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch workers, health checks and prefetch, until `stop` (or the daemon's nursery is cancelled)."""
        with self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.chunks.run)
                    if self.health_checks:
                        await nursery.start(run_health_checks, self.health_checks)
                    if self.mirror_warming is not None:
                        limiter = trio.CapacityLimiter(MIRROR_WARMING_THREADS)
                        for blob in self.bootstrap.blobs:
                            nursery.start_soon(self._warm_mirrors, self.mirror_warming, blob.blob_id, limiter)
                    prefetch = self.config.fs_prefetch
                    if prefetch.enable or self.options.prefetch_files is not None:
                        self.prefetcher = Prefetcher(
                            self.chunks,
                            files=self.options.prefetch_files,
                            prefetch_all=prefetch.prefetch_all,
                            readahead=self.operations.reader.readahead,
                        )
                        nursery.start_soon(self._prefetch, self.prefetcher)
                    task_status.started()
                    await trio.sleep_forever()
            except Exception:  # one image's failure must not take the daemon's other images down
                log.exception("%s: background work of %s stopped", self.id, self.source)

    async def _warm_mirrors(self, backend: MirrorWarming, blob_id: str, limiter: trio.CapacityLimiter) -> None:
        """Each blob's question in a thread of its own (a few at once, of the image's many
        layers), so that a mirror caches them side by side."""
        try:
            await trio.to_thread.run_sync(backend.warm_mirrors, blob_id, abandon_on_cancel=True, limiter=limiter)
        except Exception:  # only a hint: the reads ask again
            log.exception("%s: asking the mirrors to cache blob %s failed", self.id, blob_id)

    async def _prefetch(self, prefetcher: Prefetcher) -> None:
        self.prefetch_times.begin = time.time()
        try:
            await prefetcher.run()
        finally:
            self.prefetch_times.end = time.time()

    def stop(self) -> None:
        self._scope.cancel()

    def close(self) -> None:
        """Release connections and files (after `stop`)."""
        self.backend.close()
        self.cache.close()
        if self.trace is not None:
            self.trace.close()

    # -- what the API reports ---------------------------------------------------------------------

    def backend_info(self) -> dict[str, object]:
        """This mount's entry in `GET /api/v1/daemon`'s `backend_collection`."""
        backend = self.config.backend
        options = self.config.backend_as_written.get("config", {})
        return {
            "backend_type": backend_type(backend),
            "mountpoint": self.id,
            "mounted_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.mounted_time)),
            "source": self.source,
            "config": {
                "backend": {"type": backend_type(backend), "config": redacted(options)},
                "cache": {"type": self.config.cache.type, "work_dir": self.config.cache.work_dir},
            },
        }

    def blobcache_report(self) -> dict[str, object]:
        """`/metrics/blobcache`; blocking (stats the cache files), so called in a thread."""
        work_dir = self.config.cache.work_dir if self.config.cache.type == "blobcache" else ""
        blob_ids = {blob.blob_id for blob in self.bootstrap.blobs}
        entries = 0
        files: list[str] = []
        if work_dir:
            for usage in blob_usage(work_dir):
                if usage.blob_id in blob_ids:
                    entries += usage.chunks
                    base = os.path.join(work_dir, usage.blob_id)
                    files += [base + DATA_SUFFIX, base + INDEX_SUFFIX]
        stats = self.chunks.stats
        prefetch_stats = self.prefetcher.stats if self.prefetcher is not None else None
        begin, end = self.prefetch_times.begin, self.prefetch_times.end
        return {
            "id": self.id,
            "underlying_files": sorted(files),
            "store_path": work_dir,
            "partial_hits": 0,
            "whole_hits": stats.cache_hits,
            "total": stats.cache_hits + stats.cache_misses,
            "entries_count": entries,
            "prefetch_data_amount": prefetch_stats.bytes if prefetch_stats else 0,
            "prefetch_requests_count": stats.requests_by_priority["prefetch"],
            "prefetch_workers": self.config.fs_prefetch.threads_count,
            "prefetch_unmerged_chunks": prefetch_stats.chunks if prefetch_stats else 0,
            "prefetch_cumulative_time_millis": int((end - begin) * 1000) if end >= begin > 0 else 0,
            "prefetch_begin_time_secs": int(begin),
            "prefetch_begin_time_millis": int(begin * 1000) % 1000,
            "prefetch_end_time_secs": int(end),
            "prefetch_end_time_millis": int(end * 1000) % 1000,
            "buffered_backend_size": 0,
            "data_all_ready": bool(work_dir) and entries >= self.distinct_chunks(),
        }

    def distinct_chunks(self) -> int:
        """Stored chunks of the image, each counted once (a walk of the chunk table, done once)."""
        if self._distinct_chunks is None:
            keys = set()
            for index in range(self.bootstrap.superblock.chunk_count):
                record = self.bootstrap.chunk(index)
                if not record.is_zero:
                    keys.add((record.blob_index, record.compressed_offset))
            self._distinct_chunks = len(keys)
        return self._distinct_chunks


def open_image(
    source: str,
    config: DaemonConfig,
    options: MountOptions,
    inflight: Inflight,
    *,
    backend: BlobBackend | None = None,
) -> ImageMount:
    """Open `source` (a bootstrap file) with `config`; blocking, and raises before serving anything.

    `backend` replaces the configured one (tests, and `--image`, which made it to fetch the bootstrap).
    """
    bootstrap = open_bootstrap(source)
    backend_metrics = BackendMetrics(backend_type(config.backend))
    inner = backend if backend is not None else open_backend(config.backend)
    metered = MeteredBackend(inner, backend_metrics)
    try:
        cache = open_cache(config.cache)
        fetch_workers = config.fs_prefetch.threads_count
        chunks = ChunkSource(
            bootstrap,
            metered,
            cache,
            validate=config.digest_validate,
            merging_size=config.fs_prefetch.merging_size,
            fetch_workers=fetch_workers,
            demand_workers=max(1, fetch_workers // 4),
            bandwidth_rate=config.fs_prefetch.bandwidth_rate,
            timeline=options.timeline,
        )
        readahead = Readahead(
            bootstrap,
            chunks,
            amplify_io=config.amplify_io,
            whole_file_max=config.readahead.whole_file_max,
            window_max=config.readahead.window_max,
            adaptive_amplify=config.readahead.adaptive_amplify,
        )
        reader = FileReader(bootstrap, chunks, readahead, options.timeline)
        trace = AccessTrace(options.trace_out, bootstrap.chunk_size) if options.trace_out else None
    except BaseException:
        metered.close()
        raise
    metrics = FsMetrics(
        options.id,
        files=config.iostats_files,
        access_pattern=config.access_pattern,
        latest_read_files=config.latest_read_files,
    )
    operations = MeteredOperations(
        bootstrap,
        reader,
        metrics=metrics,
        inflight=inflight,
        ino_base=options.ino_base,
        enable_xattr=config.enable_xattr,
        trace=trace,
    )
    return ImageMount(
        source, config, options, bootstrap, metered, cache, chunks, readahead, operations, metrics, backend_metrics,
        trace,
        health_checks=inner.health_checks() if isinstance(inner, HealthChecked) else (),
        mirror_warming=inner if isinstance(inner, MirrorWarming) else None,
    )  # fmt: skip
