"""The chunk caches: visible only when complete, crash leftovers swept, bounded memory."""

from __future__ import annotations

import os

from daemon.storage.cache import ChunkKey, DiskChunkCache, MemoryChunkCache

BLOB = "ab" * 32


def test_disk_cache_roundtrip_and_slices(tmp_path: os.PathLike[str]) -> None:
    cache = DiskChunkCache(str(tmp_path))
    key = ChunkKey(BLOB, 4096, 10)
    assert cache.get(key, 0, 10) is None
    cache.put(key, b"0123456789")
    assert cache.get(key, 0, 10) == b"0123456789"
    assert cache.get(key, 3, 4) == b"3456"
    assert DiskChunkCache(str(tmp_path)).get(key, 0, 10) == b"0123456789"  # survives a restart


def test_disk_cache_sweeps_temporaries_and_drops_wrong_sizes(tmp_path: os.PathLike[str]) -> None:
    cache = DiskChunkCache(str(tmp_path))
    key = ChunkKey(BLOB, 0, 10)
    directory = os.path.dirname(cache.path_of(key))
    with open(os.path.join(directory, ".tmp-0.123"), "wb") as file:
        file.write(b"half")  # what a crash between write and rename leaves
    with open(cache.path_of(key), "wb") as file:
        file.write(b"short")  # not a complete chunk: never served
    restarted = DiskChunkCache(str(tmp_path))
    assert restarted.get(key, 0, 10) is None
    assert os.listdir(directory) == []


def test_memory_cache_is_bounded() -> None:
    cache = MemoryChunkCache(max_bytes=25)
    keys = [ChunkKey(BLOB, offset, 10) for offset in range(3)]
    for key in keys:
        cache.put(key, bytes(10))
    assert cache.get(keys[0], 0, 10) is None
    assert cache.get(keys[2], 2, 3) == bytes(3)
