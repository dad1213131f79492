"""The chunk cache: verified, uncompressed chunks, so a chunk is fetched from a backend once.

`DiskChunkCache` keeps one file per chunk under `work_dir/<blob_id>/`, named by the chunk's
offset in its blob. A chunk is written to a temporary name and renamed into place only after
its digest was verified, so a crash leaves either the whole chunk or nothing under its name;
leftover temporaries are removed the next time the blob's directory is opened. The cache is
shared by every mount (blobs are named by content, so ids never collide) and survives
restarts. `MemoryChunkCache` is a small LRU for mounts configured without a cache directory.
Synchronous, thread-safe; no event loop here.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from daemon.storage.backend import check_blob_id
from rafs.errors import NydusError

_TEMP_PREFIX = ".tmp-"


class CacheError(NydusError):
    """The cache directory cannot be used (permissions, full disk)."""

    exit_code = 5


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """A stored chunk: its blob, its offset in the blob and its uncompressed size."""

    blob_id: str
    compressed_offset: int
    uncompressed_size: int


class ChunkCache(Protocol):
    """What the read path needs of a cache; `put` only ever receives verified bytes."""

    def get(self, key: ChunkKey, start: int, length: int) -> bytes | None:
        """Bytes [start, start+length) of the chunk, or None if it is not cached."""
        ...

    def put(self, key: ChunkKey, data: bytes) -> None:
        """Publish a whole verified chunk."""
        ...


class DiskChunkCache:
    """Chunk files under `work_dir`; see the module docstring for the crash-safety argument."""

    def __init__(self, work_dir: str) -> None:
        try:
            os.makedirs(work_dir, exist_ok=True)
        except OSError as error:
            raise CacheError(f"cache directory {work_dir}: {error.strerror}") from None
        self.work_dir = work_dir
        self._swept: set[str] = set()
        self._lock = threading.Lock()

    def _blob_dir(self, blob_id: str) -> str:
        """The blob's directory, created and swept of a crashed run's temporaries on first use."""
        check_blob_id(blob_id)
        directory = os.path.join(self.work_dir, blob_id)
        with self._lock:
            if blob_id in self._swept:
                return directory
            os.makedirs(directory, exist_ok=True)
            for name in os.listdir(directory):
                if name.startswith(_TEMP_PREFIX):
                    try:
                        os.unlink(os.path.join(directory, name))
                    except FileNotFoundError:
                        pass
            self._swept.add(blob_id)
        return directory

    def path_of(self, key: ChunkKey) -> str:
        return os.path.join(self._blob_dir(key.blob_id), f"{key.compressed_offset:016x}")

    def get(self, key: ChunkKey, start: int, length: int) -> bytes | None:
        path = self.path_of(key)
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(descriptor).st_size != key.uncompressed_size:
                # Not one of ours (e.g. truncated by a full disk before rename): drop it.
                os.unlink(path)
                return None
            return os.pread(descriptor, length, start)
        finally:
            os.close(descriptor)

    def put(self, key: ChunkKey, data: bytes) -> None:
        path = self.path_of(key)
        temporary = f"{os.path.dirname(path)}/{_TEMP_PREFIX}{key.compressed_offset:x}.{threading.get_ident()}"
        try:
            with open(temporary, "wb") as file:
                file.write(data)
            os.rename(temporary, path)
        except OSError as error:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise CacheError(f"cannot store chunk in {self.work_dir}: {error.strerror}") from None


class MemoryChunkCache:
    """A bounded LRU of chunks in memory, for mounts without a cache directory."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[ChunkKey, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: ChunkKey, start: int, length: int) -> bytes | None:
        with self._lock:
            data = self._chunks.get(key)
            if data is None:
                return None
            self._chunks.move_to_end(key)
        return data[start : start + length]

    def put(self, key: ChunkKey, data: bytes) -> None:
        with self._lock:
            if key in self._chunks or len(data) > self.max_bytes:
                return
            self._chunks[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, evicted = self._chunks.popitem(last=False)
                self._bytes -= len(evicted)
