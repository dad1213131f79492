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

`MemoryChunkCache` is a small LRU for mounts configured without a cache directory.
Synchronous and thread-safe; no event loop here.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from daemon.storage.backend import check_blob_id
from rafs.errors import NydusError

_OFFSET = struct.Struct("<Q")


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


class _BlobFiles:
    """The data file, the log and the set of complete offsets of one blob."""

    def __init__(self, work_dir: str, blob_id: str) -> None:
        check_blob_id(blob_id)
        base = os.path.join(work_dir, blob_id)
        self.data = os.open(base + ".blob.data", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.log = os.open(base + ".chunk_map", os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        raw = b""
        while part := os.read(self.log, 1 << 20):
            raw += part
        whole = len(raw) - len(raw) % _OFFSET.size  # a torn last record is not a record
        self.ready = {offset for (offset,) in _OFFSET.iter_unpack(raw[:whole])}

    def close(self) -> None:
        os.close(self.data)
        os.close(self.log)


class DiskChunkCache:
    """Sparse blob mirrors under `work_dir`; see the module docstring for the crash argument."""

    def __init__(self, work_dir: str) -> None:
        try:
            os.makedirs(work_dir, exist_ok=True)
        except OSError as error:
            raise CacheError(f"cache directory {work_dir}: {error.strerror}") from None
        self.work_dir = work_dir
        self._blobs: dict[str, _BlobFiles] = {}
        self._lock = threading.Lock()

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
            self._files(blob_id)

    def has(self, key: ChunkKey) -> bool:
        files = self._blobs.get(key.blob_id)
        return files is not None and key.compressed_offset in files.ready

    def get(self, key: ChunkKey) -> bytes | None:
        files = self._files(key.blob_id)
        if key.compressed_offset not in files.ready:
            return None
        stored = os.pread(files.data, key.compressed_size, key.compressed_offset)
        return stored if len(stored) == key.compressed_size else None

    def put(self, key: ChunkKey, stored: bytes) -> None:
        files = self._files(key.blob_id)
        try:
            os.pwrite(files.data, stored, key.compressed_offset)
            os.write(files.log, _OFFSET.pack(key.compressed_offset))
        except OSError as error:
            raise CacheError(f"cannot store a chunk in {self.work_dir}: {error.strerror}") from None
        files.ready.add(key.compressed_offset)

    def close(self) -> None:
        with self._lock:
            for files in self._blobs.values():
                files.close()
            self._blobs.clear()


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
