"""The chunk caches: visible only when complete, torn indexes ignored, shared, bound to digests, bounded memory."""

from __future__ import annotations

import os
import threading

from daemon.storage.cache import DATA_SUFFIX, INDEX_SUFFIX, ChunkKey, DiskChunkCache, MemoryChunkCache

BLOB = "ab" * 32
DIGEST = b"\x01" * 32
OTHER_DIGEST = b"\x02" * 32


def test_disk_cache_roundtrip_survives_restart(tmp_path: os.PathLike[str]) -> None:
    cache = DiskChunkCache(str(tmp_path))
    cache.prepare([BLOB])
    key = ChunkKey(BLOB, 4096)
    assert not cache.has(key, DIGEST) and cache.read(key, DIGEST, 0, 10) is None
    cache.put(key, DIGEST, b"0123456789")
    assert cache.has(key, DIGEST) and cache.read(key, DIGEST, 0, 10) == b"0123456789"
    assert cache.read(key, DIGEST, 3, 4) == b"3456"  # a slice is one pread, not the chunk
    assert cache.read(key, DIGEST, 8, 4) is None  # beyond the chunk: not served
    cache.close()
    restarted = DiskChunkCache(str(tmp_path))
    assert not restarted.has(key, DIGEST)  # unknown until prepared (or read once)
    assert restarted.read(key, DIGEST, 0, 10) == b"0123456789"
    assert restarted.has(key, DIGEST)


def test_a_record_serves_only_the_chunk_it_was_verified_as(tmp_path: os.PathLike[str]) -> None:
    cache = DiskChunkCache(str(tmp_path))
    key = ChunkKey(BLOB, 0)
    cache.put(key, DIGEST, b"data")
    assert not cache.has(key, OTHER_DIGEST)
    assert cache.read(key, OTHER_DIGEST, 0, 4) is None


def test_disk_cache_ignores_data_without_a_record_and_torn_records(tmp_path: os.PathLike[str]) -> None:
    cache = DiskChunkCache(str(tmp_path))
    published, unpublished = ChunkKey(BLOB, 0), ChunkKey(BLOB, 4)
    cache.put(published, DIGEST, b"good")
    cache.close()
    base = os.path.join(str(tmp_path), BLOB)
    with open(base + DATA_SUFFIX, "ab") as data:
        data.write(b"half")  # a crash after writing the data, before appending the record
    with open(base + INDEX_SUFFIX, "ab") as index:
        index.write(b"\x04\x00\x00")  # a torn record of offset 4
    restarted = DiskChunkCache(str(tmp_path))
    restarted.prepare([BLOB])
    assert restarted.read(published, DIGEST, 0, 4) == b"good"
    assert not restarted.has(unpublished, DIGEST) and restarted.read(unpublished, DIGEST, 0, 4) is None
    restarted.put(unpublished, DIGEST, b"next")  # appends after the orphan bytes, not over them
    assert DiskChunkCache(str(tmp_path)).read(unpublished, DIGEST, 0, 4) == b"next"
    assert DiskChunkCache(str(tmp_path)).read(published, DIGEST, 0, 4) == b"good"


def test_two_caches_share_a_work_dir_and_see_each_other_after_refresh(tmp_path: os.PathLike[str]) -> None:
    first, second = DiskChunkCache(str(tmp_path)), DiskChunkCache(str(tmp_path))
    first.prepare([BLOB])
    second.prepare([BLOB])
    first.put(ChunkKey(BLOB, 0), DIGEST, b"one")
    second.put(ChunkKey(BLOB, 3), DIGEST, b"two")
    assert not first.has(ChunkKey(BLOB, 3), DIGEST)
    first.refresh(BLOB)
    assert first.read(ChunkKey(BLOB, 3), DIGEST, 0, 3) == b"two"
    assert DiskChunkCache(str(tmp_path)).read(ChunkKey(BLOB, 0), DIGEST, 0, 3) == b"one"
    assert DiskChunkCache(str(tmp_path)).read(ChunkKey(BLOB, 3), DIGEST, 0, 3) == b"two"


def test_threads_storing_at_once_never_overlap(tmp_path: os.PathLike[str]) -> None:
    cache = DiskChunkCache(str(tmp_path))
    cache.prepare([BLOB])

    def store(worker: int) -> None:
        for index in range(50):
            offset = worker * 1000 + index
            cache.put(ChunkKey(BLOB, offset), DIGEST, bytes([worker]) * (1000 + index))

    threads = [threading.Thread(target=store, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    restarted = DiskChunkCache(str(tmp_path))
    for worker in range(8):
        for index in range(50):
            data = restarted.read(ChunkKey(BLOB, worker * 1000 + index), DIGEST, 0, 1000 + index)
            assert data == bytes([worker]) * (1000 + index)


def test_memory_cache_is_bounded() -> None:
    cache = MemoryChunkCache(max_bytes=25)
    keys = [ChunkKey(BLOB, offset * 10) for offset in range(3)]
    for key in keys:
        cache.put(key, DIGEST, bytes(10))
    assert not cache.has(keys[0], DIGEST) and cache.read(keys[0], DIGEST, 0, 10) is None
    assert cache.read(keys[2], DIGEST, 0, 10) == bytes(10)
    assert cache.read(keys[2], OTHER_DIGEST, 0, 10) is None
