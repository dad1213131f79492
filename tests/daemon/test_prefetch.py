"""Prefetch yields to on-demand reads and keeps its bandwidth; readahead: the sequential window and
whole files on open."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import trio
from pytest import MonkeyPatch

from daemon import prefetch
from daemon.chunks import ChunkSource
from daemon.prefetch import Prefetcher
from daemon.reader import FileReader
from daemon.storage.cache import MemoryChunkCache
from daemon.storage.localfs import LocalFsBackend
from rafs import layout
from rafs.bootstrap import Bootstrap
from rafs.mapped import open_bootstrap
from rafs.pathlist import PrefetchEntry
from tests.daemon.images import build_image
from tests.daemon.sources import make_source, running

CHUNK = 4096


class SlowBackend(LocalFsBackend):
    """Every range read takes `delay_s`; reads are logged in the order they start."""

    def __init__(self, directory: str, delay_s: float) -> None:
        super().__init__(directory)
        self.delay_s = delay_s
        self.reads: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        with self.lock:
            self.reads.append((offset, length))
        time.sleep(self.delay_s)
        return super().read_range(blob_id, offset, length)


def make_image(tmp_path: Path) -> tuple[Bootstrap, str, dict[str, bytes]]:
    source = tmp_path / "src"
    source.mkdir()
    rng = random.Random(3)
    files = {"big": rng.randbytes(64 * CHUNK), "small": rng.randbytes(100)}
    for name, data in files.items():
        (source / name).write_bytes(data)
    image = build_image(str(source), str(tmp_path / "image"), chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE)
    return open_bootstrap(image.bootstrap), image.blob_dir, files


def inode(bootstrap: Bootstrap, name: str) -> int:
    ino = bootstrap.resolve("/" + name)
    assert ino is not None
    return ino


def test_on_demand_read_overtakes_prefetch(tmp_path: Path) -> None:
    bootstrap, blob_dir, files = make_image(tmp_path)
    backend = SlowBackend(blob_dir, 0.02)
    chunks, readahead = make_source(
        bootstrap, backend, MemoryChunkCache(), fetch_workers=2, demand_workers=1, merging_size=4 * CHUNK
    )
    prefetcher = Prefetcher(chunks, files=None, prefetch_all=True)
    small = inode(bootstrap, "small")
    small_offset = bootstrap.chunks(small)[0].compressed_offset

    async def main() -> None:
        async with running(chunks) as nursery:
            nursery.start_soon(prefetcher.run)
            await trio.sleep(0.1)
            started_before = len(backend.reads)
            data = await FileReader(bootstrap, chunks, readahead).read(small, 0, 100)
            assert data == files["small"]
            position = [offset for offset, _ in backend.reads].index(small_offset)
            assert position <= started_before, "the read waited for prefetch runs to start before it"
            assert len(backend.reads) < 16, "prefetch was already done: the test proves nothing"
            while prefetcher.stats.chunks + prefetcher.stats.errors == 0:
                await trio.sleep(0.01)

    trio.run(main)
    assert prefetcher.stats.errors == 0
    assert all(length <= 4 * CHUNK for _, length in backend.reads)
    total = sum(blob.compressed_size for blob in bootstrap.blobs)
    assert sum(length for _, length in backend.reads) == total, "every chunk fetched exactly once"


def test_a_read_of_a_file_waiting_in_the_prefetch_list_moves_the_file_ahead(tmp_path: Path) -> None:
    """/a then /b are listed; a read of /b while /a is being prefetched brings the rest of /b
    before the rest of /a (a library whose code is listed last but runs as soon as it loads)."""
    source = tmp_path / "src"
    source.mkdir()
    rng = random.Random(5)
    files = {"a": rng.randbytes(16 * CHUNK), "b": rng.randbytes(16 * CHUNK)}
    for name, data in files.items():
        (source / name).write_bytes(data)
    image = build_image(str(source), str(tmp_path / "image"), chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE)
    bootstrap = open_bootstrap(image.bootstrap)
    backend = SlowBackend(image.blob_dir, 0.02)
    chunks, readahead = make_source(
        bootstrap, backend, MemoryChunkCache(), fetch_workers=2, demand_workers=1, merging_size=CHUNK
    )
    listed = [PrefetchEntry(b"/a"), PrefetchEntry(b"/b")]
    prefetcher = Prefetcher(chunks, files=listed, prefetch_all=False, readahead=readahead)
    a_offsets = {record.compressed_offset for record in bootstrap.chunks(inode(bootstrap, "a"))}
    b = inode(bootstrap, "b")
    b_offsets = {record.compressed_offset for record in bootstrap.chunks(b)}

    async def main() -> None:
        async with running(chunks) as nursery:
            nursery.start_soon(prefetcher.run)
            while len(backend.reads) < 3:
                await trio.sleep(0.005)
            data = await FileReader(bootstrap, chunks, readahead).read(b, 8 * CHUNK, CHUNK)
            assert data == files["b"][8 * CHUNK : 9 * CHUNK]
            fetched_a = sum(1 for offset, _ in backend.reads if offset in a_offsets)
            assert fetched_a < 12, "/a was nearly all fetched before the read: the test proves nothing"
            while prefetcher.stats.chunks + prefetcher.stats.errors == 0:
                await trio.sleep(0.01)

    trio.run(main)
    order = [offset for offset, _ in backend.reads]
    assert sorted(order) == sorted(a_offsets | b_offsets), "every chunk fetched exactly once"
    last_b = max(order.index(offset) for offset in b_offsets)
    last_a = max(order.index(offset) for offset in a_offsets)
    assert last_b < last_a, "the rest of /b waited behind the rest of /a"
    assert chunks.stats.requests_by_priority["readahead"] >= 14


def test_prefetch_keeps_the_link_busy_with_every_background_worker(tmp_path: Path) -> None:
    bootstrap, blob_dir, _ = make_image(tmp_path)
    backend = SlowBackend(blob_dir, 0.05)
    chunks, _ = make_source(
        bootstrap, backend, MemoryChunkCache(), fetch_workers=6, demand_workers=2, merging_size=CHUNK
    )
    prefetcher = Prefetcher(chunks, files=None, prefetch_all=True)

    async def main() -> None:
        async with running(chunks):
            await prefetcher.run()

    trio.run(main)
    assert prefetcher.stats.chunks == 65
    assert chunks.stats.max_in_flight == 4  # six workers, two kept for on-demand reads
    assert chunks.stats.requests_by_priority["prefetch"] == 65


def test_bandwidth_rate_paces_prefetch(tmp_path: Path) -> None:
    bootstrap, blob_dir, _ = make_image(tmp_path)
    rate = 256 * 1024
    chunks, _ = make_source(
        bootstrap, SlowBackend(blob_dir, 0), MemoryChunkCache(), merging_size=8 * CHUNK, bandwidth_rate=rate
    )
    prefetcher = Prefetcher(chunks, files=None, prefetch_all=True)

    async def main() -> None:
        async with running(chunks):
            await prefetcher.run()

    started = time.monotonic()
    trio.run(main)
    assert prefetcher.stats.bytes >= 64 * CHUNK
    # the last run may start once the ones before it have had their time: a lower bound only
    assert time.monotonic() - started >= (prefetcher.stats.bytes - 8 * CHUNK) / rate * 0.9


def test_sequential_reads_fetch_ahead_in_a_growing_window(tmp_path: Path) -> None:
    bootstrap, blob_dir, files = make_image(tmp_path)
    backend = SlowBackend(blob_dir, 0)
    chunks, readahead = make_source(
        bootstrap, backend, MemoryChunkCache(), window_max=32 * CHUNK, merging_size=8 * CHUNK
    )
    reader = FileReader(bootstrap, chunks, readahead)
    big = inode(bootstrap, "big")

    async def main() -> bytes:
        async with running(chunks):
            return b"".join([await reader.read(big, offset, CHUNK) for offset in range(0, 64 * CHUNK, CHUNK)])

    assert trio.run(main) == files["big"]
    assert sum(length for _, length in backend.reads) == 64 * CHUNK, "every chunk fetched once"
    assert len(backend.reads) <= 64 // 8 + 2, "reads ahead merged into few requests"
    assert chunks.stats.cache_hits >= 48, "most reads found their chunk already fetched"


def test_a_read_elsewhere_restarts_the_window(tmp_path: Path) -> None:
    bootstrap, blob_dir, _files = make_image(tmp_path)
    chunks, readahead = make_source(bootstrap, SlowBackend(blob_dir, 0), MemoryChunkCache(), window_max=32 * CHUNK)
    reader = FileReader(bootstrap, chunks, readahead)
    big = inode(bootstrap, "big")

    async def main() -> None:
        async with running(chunks):
            await reader.read(big, 40 * CHUNK, CHUNK)  # not from the start, not following: no readahead
            assert chunks.stats.requests_by_priority["readahead"] == 0
            await reader.read(big, 41 * CHUNK, CHUNK)  # follows: the window starts
            assert chunks.stats.requests_by_priority["readahead"] + chunks.pending_count() + chunks.in_flight >= 1

    trio.run(main)


def test_a_small_file_is_fetched_whole_on_its_first_open(tmp_path: Path) -> None:
    bootstrap, blob_dir, files = make_image(tmp_path)
    backend = SlowBackend(blob_dir, 0)
    chunks: ChunkSource
    chunks, readahead = make_source(bootstrap, backend, MemoryChunkCache(), whole_file_max=1 << 20)
    reader = FileReader(bootstrap, chunks, readahead)
    big = inode(bootstrap, "big")

    async def main() -> bytes:
        async with running(chunks):
            reader.opened(big)
            first = await reader.read(big, 60 * CHUNK, CHUNK)  # a read in the middle, as an mmap fault is
            while chunks.in_flight or chunks.pending_count():
                await trio.sleep(0.01)
            reader.opened(big)  # a second open queues nothing
            return first

    assert trio.run(main) == files["big"][60 * CHUNK : 61 * CHUNK]
    assert backend.reads == [(bootstrap.chunks(big)[0].compressed_offset, 64 * CHUNK)], "the whole file, at once"
    assert chunks.stats.promoted_jobs == 1, "the read moved the queued file to the front"


class TakenCounter(list[PrefetchEntry]):
    """A prefetch list that counts the entries taken from it so far."""

    taken = 0

    def __iter__(self) -> Iterator[PrefetchEntry]:
        for entry in super().__iter__():
            self.taken += 1
            yield entry


class TakenAtRead(LocalFsBackend):
    """Logs each range read with how many prefetch entries had been taken when it started."""

    def __init__(self, directory: str, entries: TakenCounter) -> None:
        super().__init__(directory)
        self.entries = entries
        self.reads: list[tuple[int, int]] = []  # (offset, entries taken)
        self.lock = threading.Lock()

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        with self.lock:
            self.reads.append((offset, self.entries.taken))
        return super().read_range(blob_id, offset, length)


def test_prefetch_sends_its_first_requests_before_the_rest_is_planned(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    """Planning looks every listed file up (and verifies it): on a large image that takes a
    while, so the first batch goes out before the next one is planned."""
    source = tmp_path / "src"
    source.mkdir()
    names = [f"f{number:02}" for number in range(40)]
    for position, name in enumerate(names):
        (source / name).write_bytes(bytes([position + 1]) * 1000)  # none all zeros (not stored)
    image = build_image(str(source), str(tmp_path / "image"), chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE)
    bootstrap = open_bootstrap(image.bootstrap)
    monkeypatch.setattr(prefetch, "FIRST_BATCH", 2)
    monkeypatch.setattr(prefetch, "BATCH", 5)
    listed = list(reversed(names))  # not blob order: the order must come from the list
    entries = TakenCounter(PrefetchEntry(b"/" + name.encode()) for name in listed)
    backend = TakenAtRead(image.blob_dir, entries)
    chunks, _ = make_source(bootstrap, backend, MemoryChunkCache(), fetch_workers=1, merging_size=1)
    prefetcher = Prefetcher(chunks, files=entries, prefetch_all=False)

    async def main() -> None:
        async with running(chunks):
            await prefetcher.run()

    trio.run(main)
    assert prefetcher.stats.chunks == len(names) and prefetcher.stats.errors == 0
    offsets = {name: bootstrap.chunks(inode(bootstrap, name))[0].compressed_offset for name in names}
    assert [offset for offset, _ in backend.reads] == [offsets[name] for name in listed], "once each, in list order"
    first_taken = backend.reads[0][1]
    assert first_taken < len(names), f"the first request waited for all {first_taken} entries to be planned"
