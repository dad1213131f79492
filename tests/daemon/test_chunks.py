"""`ChunkSource` without a mount: single flight, hits beside a stuck fetch, corrupt chunks, the
uncompressed cache (hits decode nothing), `digest_validate`, and range requests in flight."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable

import pytest
import trio
import trio.testing

from daemon.chunks import ChunkSource, Priority
from daemon.storage import fetch
from daemon.storage.backend import BackendError
from daemon.storage.cache import DATA_SUFFIX, DiskChunkCache, MemoryChunkCache
from daemon.storage.localfs import LocalFsBackend
from rafs import layout
from rafs.bootstrap import Bootstrap
from rafs.errors import ChunkDigestMismatch
from rafs.mapped import open_bootstrap
from tests.daemon.images import build_image
from tests.daemon.sources import make_source, running

CHUNK = 4096


class GatedBackend(LocalFsBackend):
    """Test backend: reads wait until `gate` is set, and are counted (also how many at once)."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()
        self.reads: list[tuple[int, int]] = []
        self.lock = threading.Condition()
        self.in_flight = 0
        self.max_in_flight = 0

    def wait_in_flight(self, count: int, timeout_s: float = 10.0) -> None:
        """Block (in a worker thread) until `count` reads are in the backend at once."""
        with self.lock:
            if not self.lock.wait_for(lambda: self.in_flight >= count, timeout_s):
                raise AssertionError(f"{self.in_flight} reads in flight after {timeout_s} s, not {count}")

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.lock.notify_all()
        try:
            self.waiting.set()
            self.gate.wait(30)
            with self.lock:
                self.reads.append((offset, length))
            return super().read_range(blob_id, offset, length)
        finally:
            with self.lock:
                self.in_flight -= 1


class FailingBackend(LocalFsBackend):
    """A backend that must not be asked: every read fails the test."""

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        raise AssertionError(f"backend asked for [{offset}, +{length}) of {blob_id[:12]}")


Image = tuple[Bootstrap, str, dict[str, bytes]]


@pytest.fixture
def image(tmp_path: os.PathLike[str]) -> Image:
    source = os.path.join(tmp_path, "src")
    os.makedirs(source)
    rng = random.Random(2)
    contents = {"a": rng.randbytes(4 * CHUNK), "b": rng.randbytes(4 * CHUNK), "zeros": bytes(2 * CHUNK)}
    for name, data in contents.items():
        with open(os.path.join(source, name), "wb") as file:
            file.write(data)
    built = build_image(source, str(tmp_path), chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE)
    return open_bootstrap(built.bootstrap), built.blob_dir, contents


@pytest.fixture
def zstd_image(tmp_path: os.PathLike[str]) -> Image:
    source = os.path.join(tmp_path, "zsrc")
    os.makedirs(source)
    words = random.Random(4).choices([b"alpha", b"beta", b"gamma", b"delta"], k=9000)
    contents = {"text": b" ".join(words)[: 8 * CHUNK]}
    with open(os.path.join(source, "text"), "wb") as file:
        file.write(contents["text"])
    built = build_image(source, os.path.join(tmp_path, "zimage"), chunk_size=CHUNK, compressor=layout.COMPRESSOR_ZSTD)
    return open_bootstrap(built.bootstrap), built.blob_dir, contents


async def read(source: ChunkSource, bootstrap: Bootstrap, name: str, offset: int = 0, size: int = 1 << 20) -> bytes:
    ino = bootstrap.resolve("/" + name)
    assert ino is not None
    return b"".join(await source.read(bootstrap.chunk_span(ino, offset, size)))


@pytest.mark.trio
async def test_concurrent_misses_share_one_fetch(image: Image) -> None:
    bootstrap, blob_dir, contents = image
    backend = GatedBackend(blob_dir)
    backend.gate.clear()
    source, _ = make_source(bootstrap, backend, MemoryChunkCache())
    results: list[bytes] = []

    async def reader() -> None:
        results.append(await read(source, bootstrap, "a"))

    async with running(source), trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
        await trio.to_thread.run_sync(backend.waiting.wait, 10)
        await trio.testing.wait_all_tasks_blocked()
        backend.gate.set()
    assert results == [contents["a"]] * 5
    assert backend.reads == [(backend.reads[0][0], 4 * CHUNK)]
    assert source.stats.shared_waits == 4 * 4


@pytest.mark.trio
async def test_cache_hit_is_served_while_the_only_fetch_worker_is_stuck(
    image: Image, tmp_path: os.PathLike[str]
) -> None:
    bootstrap, blob_dir, contents = image
    backend = GatedBackend(blob_dir)
    cache = DiskChunkCache(os.path.join(tmp_path, "cache"))
    source, _ = make_source(bootstrap, backend, cache, fetch_workers=1)
    async with running(source) as nursery:
        assert await read(source, bootstrap, "a") == contents["a"]
        backend.gate.clear()
        backend.waiting.clear()
        nursery.start_soon(read, source, bootstrap, "b")
        await trio.to_thread.run_sync(backend.waiting.wait, 10)
        with trio.fail_after(10):
            assert await read(source, bootstrap, "a", CHUNK, 2 * CHUNK) == contents["a"][CHUNK : 3 * CHUNK]
        backend.gate.set()


@pytest.mark.trio
async def test_zero_chunks_need_no_backend(image: Image) -> None:
    bootstrap, blob_dir, contents = image
    source, _ = make_source(bootstrap, FailingBackend(blob_dir), MemoryChunkCache())
    async with running(source):
        assert await read(source, bootstrap, "zeros", 100, 5000) == contents["zeros"][100:5100]


@pytest.mark.trio
@pytest.mark.logs_warnings  # provoked on purpose
async def test_corrupt_chunk_raises_every_time_and_is_never_cached(image: Image, tmp_path: os.PathLike[str]) -> None:
    bootstrap, blob_dir, contents = image
    ino = bootstrap.resolve("/b")
    assert ino is not None
    record = bootstrap.chunks(ino)[1]
    blob_path = os.path.join(blob_dir, bootstrap.blobs[record.blob_index].blob_id)
    with open(blob_path, "r+b") as blob:
        blob.seek(record.compressed_offset)
        blob.write(b"\xff")
    cache = DiskChunkCache(os.path.join(tmp_path, "cache"))
    source, _ = make_source(bootstrap, LocalFsBackend(blob_dir), cache)
    async with running(source):
        for _ in range(2):
            with pytest.raises(ChunkDigestMismatch):
                await read(source, bootstrap, "b")
        assert await read(source, bootstrap, "b", 2 * CHUNK, 2 * CHUNK) == contents["b"][2 * CHUNK :]
        assert await read(source, bootstrap, "b", 0, CHUNK) == contents["b"][:CHUNK]


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Wrap `module.name` so each call is counted in the returned list."""
    calls: list[int] = []
    original: Callable[..., object] = getattr(module, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.trio
async def test_a_hit_after_restart_touches_no_backend_and_decompresses_nothing(
    zstd_image: Image, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap, blob_dir, contents = zstd_image
    assert all(record.is_compressed for record in bootstrap.chunks(bootstrap.resolve("/text") or 0))
    work_dir = os.path.join(tmp_path, "cache")
    decodes = count_calls(monkeypatch, fetch, "decode_run")
    first, _ = make_source(bootstrap, LocalFsBackend(blob_dir), DiskChunkCache(work_dir))
    async with running(first):
        assert await read(first, bootstrap, "text") == contents["text"]
    assert decodes, "the first read fetched and decoded"
    decodes.clear()
    restarted, _ = make_source(bootstrap, FailingBackend(blob_dir), DiskChunkCache(work_dir))
    async with running(restarted):
        assert await read(restarted, bootstrap, "text") == contents["text"]
        assert await read(restarted, bootstrap, "text", 5000, 3000) == contents["text"][5000:8000]
    assert decodes == [], "a cache hit decompressed"
    assert restarted.stats.cache_hits == 8 + 1
    assert restarted.stats.range_requests == 0


@pytest.mark.trio
@pytest.mark.logs_warnings  # provoked on purpose
async def test_a_damaged_cache_entry_is_never_served_with_digest_validate(
    image: Image, tmp_path: os.PathLike[str]
) -> None:
    bootstrap, blob_dir, contents = image
    work_dir = os.path.join(tmp_path, "cache")
    first, _ = make_source(bootstrap, LocalFsBackend(blob_dir), DiskChunkCache(work_dir))
    async with running(first):
        assert await read(first, bootstrap, "a") == contents["a"]
    (data_file,) = [name for name in os.listdir(work_dir) if name.endswith(DATA_SUFFIX)]
    with open(os.path.join(work_dir, data_file), "r+b") as data:
        data.seek(CHUNK + 10)  # inside the second chunk of "a"
        data.write(b"\x00\x01\x02")
    backend = GatedBackend(blob_dir)
    checking, _ = make_source(bootstrap, backend, DiskChunkCache(work_dir), validate=True)
    async with running(checking):
        assert await read(checking, bootstrap, "a") == contents["a"]
        assert backend.reads == [(CHUNK, CHUNK)], "only the damaged chunk was fetched again"
        assert await read(checking, bootstrap, "a") == contents["a"]  # the new copy is served
    assert len(backend.reads) == 1


@pytest.mark.trio
async def test_requests_in_flight_reach_the_configured_concurrency(image: Image) -> None:
    bootstrap, blob_dir, _ = image
    backend = GatedBackend(blob_dir)
    backend.gate.clear()
    source, _ = make_source(
        bootstrap, backend, MemoryChunkCache(), fetch_workers=5, demand_workers=1, merging_size=CHUNK
    )
    ino = bootstrap.resolve("/a")
    assert ino is not None
    requests = [source.request(piece.chunk_index, piece.record) for piece in bootstrap.chunk_span(ino, 0, 4 * CHUNK)]
    ino_b = bootstrap.resolve("/b")
    assert ino_b is not None
    requests += [source.request(p.chunk_index, p.record) for p in bootstrap.chunk_span(ino_b, 0, 4 * CHUNK)]
    async with running(source) as nursery:
        nursery.start_soon(source.fetch, requests, Priority.PREFETCH)
        await trio.to_thread.run_sync(backend.wait_in_flight, 4)  # the background share: all but the demand worker
        assert source.in_flight == 4
        with trio.fail_after(10):
            reading = trio.Event()

            async def demand() -> None:  # the last queued chunk: its job moves to the demand queue
                await read(source, bootstrap, "b", 3 * CHUNK, 10)
                reading.set()

            nursery.start_soon(demand)
            await trio.to_thread.run_sync(backend.wait_in_flight, 5)  # the demand worker joins: all five
        backend.gate.set()
        with trio.fail_after(10):
            await reading.wait()
    assert backend.max_in_flight == 5
    assert source.stats.max_in_flight == 5
    assert source.stats.promoted_jobs == 1


class BuggyBackend(LocalFsBackend):
    """A backend whose first read raises what no backend should (a bug), then reads well."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.calls = 0

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        self.calls += 1
        if self.calls == 1:
            raise OverflowError("a bug in a backend")
        return super().read_range(blob_id, offset, length)


@pytest.mark.trio
@pytest.mark.logs_warnings
async def test_an_unexpected_error_in_a_fetch_fails_its_reads_and_the_source_serves_on(image: Image) -> None:
    bootstrap, blob_dir, contents = image
    source, _ = make_source(bootstrap, BuggyBackend(blob_dir), MemoryChunkCache())
    async with running(source):
        with pytest.raises(BackendError, match="unexpected error while fetching: OverflowError"):
            await read(source, bootstrap, "a")
        assert await read(source, bootstrap, "a") == contents["a"]  # the worker lived; asked again
        assert await read(source, bootstrap, "b") == contents["b"]
