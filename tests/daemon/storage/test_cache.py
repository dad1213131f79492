"""The chunk caches: visible only when complete, torn logs ignored, shared, bounded memory."""

from __future__ import annotations

import os

from daemon.storage.cache import ChunkKey, DiskChunkCache, MemoryChunkCache

BLOB = "ab" * 32


def test_disk_cache_roundtrip_survives_restart(tmp_path: os.PathLike[str]) -> None:
    cache = DiskChunkCache(str(tmp_path))
    cache.prepare([BLOB])
    key = ChunkKey(BLOB, 4096, 10)
    assert not cache.has(key) and cache.get(key) is None
    cache.put(key, b"0123456789")
    assert cache.has(key) and cache.get(key) == b"0123456789"
    cache.close()
    restarted = DiskChunkCache(str(tmp_path))
    assert not restarted.has(key)  # unknown until prepared: the read path then asks get()
    assert restarted.get(key) == b"0123456789"
    assert restarted.has(key)


def test_disk_cache_ignores_data_without_a_record_and_torn_records(tmp_path: os.PathLike[str]) -> None:
    cache = DiskChunkCache(str(tmp_path))
    published, unpublished = ChunkKey(BLOB, 0, 4), ChunkKey(BLOB, 4, 4)
    cache.put(published, b"good")
    cache.close()
    base = os.path.join(str(tmp_path), BLOB)
    with open(base + ".blob.data", "r+b") as data:
        data.seek(4)
        data.write(b"half")  # a crash after writing the data, before appending the record
    with open(base + ".chunk_map", "ab") as log:
        log.write(b"\x04\x00\x00")  # a torn record of offset 4
    restarted = DiskChunkCache(str(tmp_path))
    restarted.prepare([BLOB])
    assert restarted.get(published) == b"good"
    assert not restarted.has(unpublished) and restarted.get(unpublished) is None


def test_two_caches_share_a_work_dir(tmp_path: os.PathLike[str]) -> None:
    first, second = DiskChunkCache(str(tmp_path)), DiskChunkCache(str(tmp_path))
    first.prepare([BLOB])
    second.prepare([BLOB])
    first.put(ChunkKey(BLOB, 0, 3), b"one")
    second.put(ChunkKey(BLOB, 3, 3), b"two")
    assert DiskChunkCache(str(tmp_path)).get(ChunkKey(BLOB, 0, 3)) == b"one"
    assert DiskChunkCache(str(tmp_path)).get(ChunkKey(BLOB, 3, 3)) == b"two"


def test_memory_cache_is_bounded() -> None:
    cache = MemoryChunkCache(max_bytes=25)
    keys = [ChunkKey(BLOB, offset * 10, 10) for offset in range(3)]
    for key in keys:
        cache.put(key, bytes(10))
    assert not cache.has(keys[0]) and cache.get(keys[0]) is None
    assert cache.get(keys[2]) == bytes(10)
