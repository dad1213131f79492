"""The chunk cache: verified, uncompressed chunks on local disk, so a hit is one `pread`.

`DiskChunkCache` keeps two files per blob under `work_dir`:

- `<blob_id>.chunks`: the uncompressed bytes of cached chunks, appended one after another;
- `<blob_id>.chunk_index`: an append-only log of 56-byte records, one per cached chunk: where
  the chunk is stored in the blob (its key), where its bytes sit in the `.chunks` file, how many
  there are, and the chunk's digest.

Only chunks that passed verification against their digest are ever stored (the fetch path
verifies before `put`), so a record in the index means "these bytes are this chunk". A chunk is
published by writing its bytes first and its record second, under an exclusive `flock` on the
index (which also picks the append position), so a crash between the two leaves bytes nobody
points at, never a record pointing at missing bytes; a torn record at the log's end is ignored
(and cut off by the next writer, under the lock).
Several daemons may share one `work_dir`: each appends under the lock, and a daemon picks up
what others stored (`refresh`) before it fetches. A hit is checked against the digest the reader
expects (a cheap comparison, no hashing), so a record can never be served for another chunk;
re-hashing the bytes on every hit is the caller's choice (`digest_validate`).

With a `size_limit`, least recently used blobs are evicted whole once the files in `work_dir`
take more space than that; a blob's last use is its index's mtime, touched on reads (at most
every few seconds), stores and mounts. `blob_usage` reports what is cached (`nydusctl cache`).

`MemoryChunkCache` is a small LRU for mounts configured without a cache directory.
Synchronous and thread-safe; no event loop here.
"""

from __future__ import annotations

import fcntl
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
from rafs.errors import CacheError as CacheError  # the branch root, raised here

# compressed_offset (the key), position in the .chunks file, uncompressed size, reserved, digest
_RECORD = struct.Struct("<QQII32s")
_HEX64 = re.compile(r"[0-9a-f]{64}")
DATA_SUFFIX = ".chunks"
INDEX_SUFFIX = ".chunk_index"
TOUCH_INTERVAL_S = 10.0
EVICT_TO = 0.9  # eviction frees space down to this fraction of the limit

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """A chunk of a blob, named by where its stored bytes begin in the blob (unique per blob)."""

    blob_id: str
    compressed_offset: int


@dataclass(frozen=True, slots=True)
class CachedChunk:
    """Where a cached chunk's uncompressed bytes are, and the digest they were verified against."""

    position: int
    size: int
    digest: bytes


class ChunkCache(Protocol):
    """What the read path needs of a cache; `put` only ever receives verified chunks."""

    def prepare(self, blob_ids: Iterable[str]) -> None:
        """Load what is known about these blobs, so `has` answers without I/O."""
        ...

    def has(self, key: ChunkKey, digest: bytes) -> bool:
        """Whether the chunk is cached (and is the chunk with `digest`); cheap, no I/O."""
        ...

    def read(self, key: ChunkKey, digest: bytes, start: int, length: int, *, nowait: bool = False) -> bytes | None:
        """Bytes [start, start+length) of the cached chunk, or None if it is not cached.

        With `nowait`, raise `BlockingIOError` instead of waiting for the disk (the bytes are not
        all in the page cache): the event loop may read, but never wait.
        """
        ...

    def put(self, key: ChunkKey, digest: bytes, data: bytes) -> None:
        """Publish a verified chunk's uncompressed bytes."""
        ...

    def refresh(self, blob_id: str) -> None:
        """Pick up chunks that other daemons sharing the cache stored meanwhile."""
        ...

    def close(self) -> None: ...


class _BlobFiles:
    """The data file, the index and the loaded records of one blob."""

    def __init__(self, work_dir: str, blob_id: str) -> None:
        check_blob_id(blob_id)
        base = os.path.join(work_dir, blob_id)
        self.data = os.open(base + DATA_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.index = os.open(base + INDEX_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.chunks: dict[int, CachedChunk] = {}
        self.loaded = 0  # bytes of the index read so far
        self.touched = 0.0  # when this process last marked the blob as used (monotonic)
        self.lock = threading.Lock()  # guards `chunks` and `loaded`
        self.append_lock = threading.Lock()
        self.load()

    def load(self) -> None:
        """Read index records appended since the last call; a torn last record waits for the next."""
        with self.lock:
            size = os.fstat(self.index).st_size
            if size - self.loaded < _RECORD.size:
                return
            raw = os.pread(self.index, size - self.loaded, self.loaded)
            whole = len(raw) - len(raw) % _RECORD.size
            for offset, position, length, _, digest in _RECORD.iter_unpack(raw[:whole]):
                self.chunks[offset] = CachedChunk(position, length, digest)
            self.loaded += whole

    def append(self, offset: int, digest: bytes, data: bytes) -> None:
        """Store `data` at the end of the data file, then its record.

        The threading lock keeps this process's threads apart (a `flock` is held by the open
        file, which they share); the `flock` keeps other processes sharing the cache apart.
        """
        with self.append_lock:
            fcntl.flock(self.index, fcntl.LOCK_EX)
            try:
                torn = os.fstat(self.index).st_size % _RECORD.size
                if torn:  # a writer died mid-record (none can be writing now): drop its part
                    os.ftruncate(self.index, os.fstat(self.index).st_size - torn)
                position = os.fstat(self.data).st_size
                written = os.pwrite(self.data, data, position)
                if written != len(data):
                    raise OSError(28, "short write")  # ENOSPC is what a short write means here
                os.write(self.index, _RECORD.pack(offset, position, len(data), 0, digest))
            finally:
                fcntl.flock(self.index, fcntl.LOCK_UN)
        with self.lock:
            self.chunks[offset] = CachedChunk(position, len(data), digest)

    def touch(self) -> None:
        """Mark the blob used now (the index's mtime), at most once per `TOUCH_INTERVAL_S`."""
        now = time.monotonic()
        if now - self.touched >= TOUCH_INTERVAL_S:
            self.touched = now
            try:
                os.utime(self.index)
            except OSError:
                pass

    def close(self) -> None:
        os.close(self.data)
        os.close(self.index)


class DiskChunkCache:
    """Uncompressed chunks under `work_dir`; see the module docstring for the crash argument."""

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

    def _cached(self, key: ChunkKey, digest: bytes, *, open_files: bool) -> tuple[_BlobFiles, CachedChunk] | None:
        files = self._blobs.get(key.blob_id)
        if files is None:
            if not open_files:
                return None
            files = self._files(key.blob_id)
        cached = files.chunks.get(key.compressed_offset)
        if cached is None or cached.digest != digest:
            return None
        return files, cached

    def has(self, key: ChunkKey, digest: bytes) -> bool:
        return self._cached(key, digest, open_files=False) is not None

    def read(self, key: ChunkKey, digest: bytes, start: int, length: int, *, nowait: bool = False) -> bytes | None:
        found = self._cached(key, digest, open_files=True)
        if found is None:
            return None
        files, cached = found
        if start + length > cached.size:
            return None
        if nowait:
            buffer = bytearray(length)
            if os.preadv(files.data, [buffer], cached.position + start, os.RWF_NOWAIT) != length:
                raise BlockingIOError("not all in the page cache")  # (a short read: part of it is)
            data = bytes(buffer)
        else:
            data = os.pread(files.data, length, cached.position + start)
        files.touch()
        return data if len(data) == length else None

    def put(self, key: ChunkKey, digest: bytes, data: bytes) -> None:
        files = self._files(key.blob_id)
        try:
            files.append(key.compressed_offset, digest, data)
        except OSError as error:
            raise CacheError(f"cannot store a chunk in {self.work_dir}: {error.strerror}") from None
        if self.size_limit:
            self._used += len(data) + _RECORD.size
            if self._used > self.size_limit:
                self.evict()

    def refresh(self, blob_id: str) -> None:
        files = self._blobs.get(blob_id)
        if files is not None:
            try:
                files.load()
            except OSError as error:
                log.warning("cache index of blob %s unreadable: %s", blob_id[:16], error.strerror)

    def evict(self) -> None:
        """Remove least recently used blobs until the cache is under `EVICT_TO` of its limit.

        Usage is measured on disk, so chunks other daemons stored count too. A blob is removed
        by unlinking its index, then its data: a crash in between leaves data without an index,
        which holds no chunk. A daemon that still has the files open keeps reading its own (now
        unlinked) copy; this one starts the blob afresh.
        """
        with self._evict_lock:
            usages = sorted(blob_usage(self.work_dir), key=lambda usage: usage.last_use)
            used = sum(usage.disk_bytes for usage in usages)
            target = int(self.size_limit * EVICT_TO)
            for usage in usages:
                if used <= target:
                    break
                base = os.path.join(self.work_dir, usage.blob_id)
                for suffix in (INDEX_SUFFIX, DATA_SUFFIX):
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
    chunks: int  # chunks recorded in its index
    disk_bytes: int  # space its files take on disk
    last_use: float  # seconds since the epoch: when a daemon last read, stored or mounted it


def blob_usage(work_dir: str) -> list[BlobUsage]:
    """Every blob cached in `work_dir`, in no particular order."""
    try:
        names = os.listdir(work_dir)
    except FileNotFoundError:
        return []
    result = []
    for name in names:
        blob_id = name[: -len(INDEX_SUFFIX)]
        if not name.endswith(INDEX_SUFFIX) or not _HEX64.fullmatch(blob_id):
            continue
        base = os.path.join(work_dir, blob_id)
        try:
            index_stat = os.stat(base + INDEX_SUFFIX)
            data_blocks = os.stat(base + DATA_SUFFIX).st_blocks
        except FileNotFoundError:  # evicted meanwhile, or data not yet created
            continue
        chunks = index_stat.st_size // _RECORD.size
        disk_bytes = (data_blocks + index_stat.st_blocks) * 512
        result.append(BlobUsage(blob_id, chunks, disk_bytes, index_stat.st_mtime))
    return result


class MemoryChunkCache:
    """A bounded LRU of uncompressed chunks in memory, for mounts without a cache directory."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[ChunkKey, tuple[bytes, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def prepare(self, blob_ids: Iterable[str]) -> None:
        """Nothing to load: a memory cache starts empty."""

    def has(self, key: ChunkKey, digest: bytes) -> bool:
        found = self._chunks.get(key)
        return found is not None and found[0] == digest

    def read(self, key: ChunkKey, digest: bytes, start: int, length: int, *, nowait: bool = False) -> bytes | None:
        with self._lock:
            found = self._chunks.get(key)
            if found is None or found[0] != digest or start + length > len(found[1]):
                return None
            self._chunks.move_to_end(key)
        data = found[1]
        return data if start == 0 and length == len(data) else data[start : start + length]

    def put(self, key: ChunkKey, digest: bytes, data: bytes) -> None:
        with self._lock:
            if key in self._chunks or len(data) > self.max_bytes:
                return
            self._chunks[key] = (digest, data)
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._chunks.popitem(last=False)
                self._bytes -= len(evicted)

    def refresh(self, blob_id: str) -> None:
        """Nothing to pick up: a memory cache is this process's own."""

    def close(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._bytes = 0
