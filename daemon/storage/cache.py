"""The chunk cache: verified chunks on local disk, so each is fetched from a backend once.

`DiskChunkCache` mirrors each blob sparsely: `work_dir/<blob_id>.blob.data` holds a chunk's
stored bytes at the chunk's own offset in the blob, and `work_dir/<blob_id>.chunk_map` is an
append-only log of the offsets whose chunk is complete. A chunk is published by writing its
bytes first and appending its offset second, and only chunks that passed verification are
published, so a crash between the two leaves the chunk absent (it is fetched again), never
half-present; a torn record at the log's end is ignored. Locations are fixed by the blob's
layout, so several daemons may share one `work_dir` (they write identical bytes to identical
places), and the cache survives restarts. Caching stored bytes keeps one layout for every
compressor; a hit is decompressed again, which costs less than the fetch it saves.

With a `size_limit`, least recently used blobs are evicted whole once the files in `work_dir`
take more space than that; a blob's last use is its map's mtime, touched on reads (at most
every few seconds), stores and mounts. `blob_usage` reports what is cached (`nydusctl cache`).

`MemoryChunkCache` is a small LRU for mounts configured without a cache directory.
Synchronous and thread-safe; no event loop here.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from daemon.storage.backend import check_blob_id
from rafs.errors import NydusError

_OFFSET = struct.Struct("<Q")
_HEX64 = re.compile(r"[0-9a-f]{64}")
DATA_SUFFIX = ".blob.data"
MAP_SUFFIX = ".chunk_map"
TOUCH_INTERVAL_S = 10.0
EVICT_TO = 0.9  # eviction frees space down to this fraction of the limit

log = logging.getLogger(__name__)


class CacheError(NydusError):
    """The cache directory cannot be used (permissions, full disk)."""

    exit_code = 5


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """A stored chunk: its blob, and where its stored bytes lie in the blob."""

    blob_id: str
    compressed_offset: int
    compressed_size: int


class ChunkCache(Protocol):
    """What the read path needs of a cache; `put` only ever receives verified chunks."""

    def prepare(self, blob_ids: Iterable[str]) -> None:
        """Load what is known about these blobs, so `has` answers without I/O."""
        ...

    def has(self, key: ChunkKey) -> bool:
        """Whether the chunk is cached; cheap, no I/O."""
        ...

    def get(self, key: ChunkKey) -> bytes | None:
        """The chunk's stored bytes, or None if it is not cached."""
        ...

    def put(self, key: ChunkKey, stored: bytes) -> None:
        """Publish a verified chunk's stored bytes (again, to repair a damaged copy)."""
        ...

    def close(self) -> None: ...


def _read_map(descriptor: int) -> set[int]:
    """The complete offsets recorded in a chunk map; a torn last record is not a record."""
    raw = b""
    while part := os.read(descriptor, 1 << 20):
        raw += part
    whole = len(raw) - len(raw) % _OFFSET.size
    return {offset for (offset,) in _OFFSET.iter_unpack(raw[:whole])}


class _BlobFiles:
    """The data file, the log and the set of complete offsets of one blob."""

    def __init__(self, work_dir: str, blob_id: str) -> None:
        check_blob_id(blob_id)
        base = os.path.join(work_dir, blob_id)
        self.data = os.open(base + DATA_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.log = os.open(base + MAP_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.ready = _read_map(self.log)
        self.touched = 0.0  # when this process last marked the blob as used (monotonic)

    def touch(self) -> None:
        """Mark the blob used now (the map's mtime), at most once per `TOUCH_INTERVAL_S`."""
        now = time.monotonic()
        if now - self.touched >= TOUCH_INTERVAL_S:
            self.touched = now
            try:
                os.utime(self.log)
            except OSError:
                pass

    def close(self) -> None:
        os.close(self.data)
        os.close(self.log)


class DiskChunkCache:
    """Sparse blob mirrors under `work_dir`; see the module docstring for the crash argument."""

    def __init__(self, work_dir: str, *, size_limit: int = 0) -> None:
        try:
            os.makedirs(work_dir, exist_ok=True)
        except OSError as error:
            raise CacheError(f"cache directory {work_dir}: {error.strerror}") from None
        self.work_dir = work_dir
        self.size_limit = size_limit
        self._blobs: dict[str, _BlobFiles] = {}
        self._retired: list[_BlobFiles] = []  # evicted while in use: closed with the cache
        self._lock = threading.Lock()
        self._evict_lock = threading.Lock()
        self._used = sum(usage.disk_bytes for usage in blob_usage(work_dir)) if size_limit else 0

    def _files(self, blob_id: str) -> _BlobFiles:
        files = self._blobs.get(blob_id)
        if files is None:
            with self._lock:
                files = self._blobs.get(blob_id)
                if files is None:
                    try:
                        files = self._blobs[blob_id] = _BlobFiles(self.work_dir, blob_id)
                    except OSError as error:
                        raise CacheError(f"cache of blob {blob_id[:16]}: {error.strerror}") from None
        return files

    def prepare(self, blob_ids: Iterable[str]) -> None:
        for blob_id in blob_ids:
            self._files(blob_id).touch()

    def has(self, key: ChunkKey) -> bool:
        files = self._blobs.get(key.blob_id)
        return files is not None and key.compressed_offset in files.ready

    def get(self, key: ChunkKey) -> bytes | None:
        files = self._files(key.blob_id)
        if key.compressed_offset not in files.ready:
            return None
        stored = os.pread(files.data, key.compressed_size, key.compressed_offset)
        files.touch()
        return stored if len(stored) == key.compressed_size else None

    def put(self, key: ChunkKey, stored: bytes) -> None:
        files = self._files(key.blob_id)
        try:
            os.pwrite(files.data, stored, key.compressed_offset)
            os.write(files.log, _OFFSET.pack(key.compressed_offset))
        except OSError as error:
            raise CacheError(f"cannot store a chunk in {self.work_dir}: {error.strerror}") from None
        files.ready.add(key.compressed_offset)
        if self.size_limit:
            self._used += len(stored)
            if self._used > self.size_limit:
                self.evict()

    def evict(self) -> None:
        """Remove least recently used blobs until the cache is under `EVICT_TO` of its limit.

        Usage is measured on disk, so chunks other daemons stored count too. A blob is removed
        by unlinking its map, then its data: a crash in between leaves data without a map,
        which holds no ready chunk. A daemon that still has the files open keeps reading its
        own (now unlinked) copy; this one starts the blob afresh.
        """
        with self._evict_lock:
            usages = sorted(blob_usage(self.work_dir), key=lambda usage: usage.last_use)
            used = sum(usage.disk_bytes for usage in usages)
            target = int(self.size_limit * EVICT_TO)
            for usage in usages:
                if used <= target:
                    break
                base = os.path.join(self.work_dir, usage.blob_id)
                for suffix in (MAP_SUFFIX, DATA_SUFFIX):
                    try:
                        os.unlink(base + suffix)
                    except FileNotFoundError:
                        pass
                with self._lock:
                    files = self._blobs.pop(usage.blob_id, None)
                    if files is not None:
                        self._retired.append(files)
                used -= usage.disk_bytes
                log.info("cache: evicted blob %s (%d bytes, last used %s)", usage.blob_id[:16], usage.disk_bytes,
                         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(usage.last_use)))  # fmt: skip
            self._used = used

    def close(self) -> None:
        with self._lock:
            for files in [*self._blobs.values(), *self._retired]:
                files.close()
            self._blobs.clear()
            self._retired.clear()


@dataclass(frozen=True)
class BlobUsage:
    """What the cache holds of one blob: for `nydusctl cache` and for eviction."""

    blob_id: str
    chunks: int  # complete chunks recorded in its map
    disk_bytes: int  # space its files take on disk (the data file is sparse)
    last_use: float  # seconds since the epoch: when a daemon last read, stored or mounted it


def blob_usage(work_dir: str) -> list[BlobUsage]:
    """Every blob cached in `work_dir`, in no particular order."""
    try:
        names = os.listdir(work_dir)
    except FileNotFoundError:
        return []
    result = []
    for name in names:
        blob_id = name[: -len(MAP_SUFFIX)]
        if not name.endswith(MAP_SUFFIX) or not _HEX64.fullmatch(blob_id):
            continue
        base = os.path.join(work_dir, blob_id)
        try:
            with open(base + MAP_SUFFIX, "rb") as chunk_map:
                chunks = len(_read_map(chunk_map.fileno()))
                map_stat = os.fstat(chunk_map.fileno())
            data_blocks = os.stat(base + DATA_SUFFIX).st_blocks
        except FileNotFoundError:  # evicted meanwhile, or data not yet created
            continue
        result.append(BlobUsage(blob_id, chunks, (data_blocks + map_stat.st_blocks) * 512, map_stat.st_mtime))
    return result


class MemoryChunkCache:
    """A bounded LRU of stored chunks in memory, for mounts without a cache directory."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[ChunkKey, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def prepare(self, blob_ids: Iterable[str]) -> None:
        """Nothing to load: a memory cache starts empty."""

    def has(self, key: ChunkKey) -> bool:
        return key in self._chunks

    def get(self, key: ChunkKey) -> bytes | None:
        with self._lock:
            stored = self._chunks.get(key)
            if stored is not None:
                self._chunks.move_to_end(key)
            return stored

    def put(self, key: ChunkKey, stored: bytes) -> None:
        with self._lock:
            if key in self._chunks or len(stored) > self.max_bytes:
                return
            self._chunks[key] = stored
            self._bytes += len(stored)
            while self._bytes > self.max_bytes:
                _, evicted = self._chunks.popitem(last=False)
                self._bytes -= len(evicted)

    def close(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._bytes = 0
