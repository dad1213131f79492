"""`ChunkSource` without a mount: single flight, cache hits beside a stuck fetch, corrupt chunks."""

from __future__ import annotations

import os
import random
import threading

import pytest
import trio

from daemon.chunks import ChunkSource
from daemon.storage.cache import DiskChunkCache, MemoryChunkCache
from daemon.storage.localfs import LocalFsBackend
from rafs import layout
from rafs.bootstrap import Bootstrap
from rafs.errors import ChunkDigestMismatch
from rafs.mapped import open_bootstrap
from tests.daemon.images import build_image

CHUNK = 4096


class GatedBackend(LocalFsBackend):
    """Test backend: reads wait until `gate` is set, and are counted."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()
        self.reads: list[tuple[int, int]] = []

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        self.waiting.set()
        self.gate.wait(30)
        self.reads.append((offset, length))
        return super().read_range(blob_id, offset, length)


@pytest.fixture
def image(tmp_path: os.PathLike[str]) -> tuple[Bootstrap, str, dict[str, bytes]]:
    source = os.path.join(tmp_path, "src")
    os.makedirs(source)
    rng = random.Random(2)
    contents = {"a": rng.randbytes(4 * CHUNK), "b": rng.randbytes(4 * CHUNK), "zeros": bytes(2 * CHUNK)}
    for name, data in contents.items():
        with open(os.path.join(source, name), "wb") as file:
            file.write(data)
    built = build_image(source, str(tmp_path), chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE)
    return open_bootstrap(built.bootstrap), built.blob_dir, contents


async def read(source: ChunkSource, bootstrap: Bootstrap, name: str, offset: int = 0, size: int = 1 << 20) -> bytes:
    ino = bootstrap.resolve("/" + name)
    assert ino is not None
    return b"".join(await source.read(bootstrap.chunk_span(ino, offset, size)))


@pytest.mark.trio
async def test_concurrent_misses_share_one_fetch(image: tuple[Bootstrap, str, dict[str, bytes]]) -> None:
    bootstrap, blob_dir, contents = image
    backend = GatedBackend(blob_dir)
    backend.gate.clear()
    source = ChunkSource(bootstrap, backend, MemoryChunkCache())
    results: list[bytes] = []

    async def reader() -> None:
        results.append(await read(source, bootstrap, "a"))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
        await trio.to_thread.run_sync(backend.waiting.wait, 10)
        await trio.sleep(0.05)
        backend.gate.set()
    assert results == [contents["a"]] * 5
    assert backend.reads == [(backend.reads[0][0], 4 * CHUNK)]
    assert source.stats.shared_waits == 4 * 4


@pytest.mark.trio
async def test_cache_hit_is_served_while_the_only_fetch_thread_is_stuck(
    image: tuple[Bootstrap, str, dict[str, bytes]], tmp_path: os.PathLike[str]
) -> None:
    bootstrap, blob_dir, contents = image
    backend = GatedBackend(blob_dir)
    source = ChunkSource(bootstrap, backend, DiskChunkCache(os.path.join(tmp_path, "cache")), fetch_threads=1)
    assert await read(source, bootstrap, "a") == contents["a"]
    backend.gate.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, source, bootstrap, "b")
        await trio.to_thread.run_sync(backend.waiting.wait, 10)
        with trio.fail_after(10):
            assert await read(source, bootstrap, "a", CHUNK, 2 * CHUNK) == contents["a"][CHUNK : 3 * CHUNK]
        backend.gate.set()


@pytest.mark.trio
async def test_zero_chunks_need_no_backend(image: tuple[Bootstrap, str, dict[str, bytes]]) -> None:
    bootstrap, blob_dir, contents = image
    backend = GatedBackend(blob_dir)
    source = ChunkSource(bootstrap, backend, MemoryChunkCache())
    assert await read(source, bootstrap, "zeros", 100, 5000) == contents["zeros"][100:5100]
    assert backend.reads == []


@pytest.mark.trio
async def test_corrupt_chunk_raises_every_time_and_is_never_cached(
    image: tuple[Bootstrap, str, dict[str, bytes]], tmp_path: os.PathLike[str]
) -> None:
    bootstrap, blob_dir, contents = image
    ino = bootstrap.resolve("/b")
    assert ino is not None
    record = bootstrap.chunks(ino)[1]
    blob_path = os.path.join(blob_dir, bootstrap.blobs[record.blob_index].blob_id)
    with open(blob_path, "r+b") as blob:
        blob.seek(record.compressed_offset)
        blob.write(b"\xff")
    cache = DiskChunkCache(os.path.join(tmp_path, "cache"))
    source = ChunkSource(bootstrap, LocalFsBackend(blob_dir), cache)
    for _ in range(2):
        with pytest.raises(ChunkDigestMismatch):
            await read(source, bootstrap, "b")
    assert await read(source, bootstrap, "b", 2 * CHUNK, 2 * CHUNK) == contents["b"][2 * CHUNK :]
    assert await read(source, bootstrap, "b", 0, CHUNK) == contents["b"][:CHUNK]
