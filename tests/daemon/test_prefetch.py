"""Prefetch yields to on-demand reads, fetches in merged runs, honours its bandwidth; readahead."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import trio

from daemon.chunks import ChunkSource
from daemon.prefetch import Prefetcher
from daemon.reader import FileReader
from daemon.storage.cache import MemoryChunkCache
from daemon.storage.localfs import LocalFsBackend
from rafs import layout
from rafs.bootstrap import Bootstrap
from rafs.mapped import open_bootstrap
from tests.daemon.images import build_image

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


def test_on_demand_read_overtakes_prefetch(tmp_path: Path) -> None:
    bootstrap, blob_dir, files = make_image(tmp_path)
    backend = SlowBackend(blob_dir, 0.02)
    chunks = ChunkSource(bootstrap, backend, MemoryChunkCache(), fetch_threads=1)
    prefetcher = Prefetcher(chunks, files=None, prefetch_all=True, merging_size=4 * CHUNK)
    small = bootstrap.resolve("/small")
    assert small is not None
    small_offset = bootstrap.chunks(small)[0].compressed_offset

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prefetcher.run)
            await trio.sleep(0.1)
            runs_before = len(backend.reads)
            data = await FileReader(bootstrap, chunks).read(small, 0, 100)
            assert data == files["small"]
            position = [offset for offset, _ in backend.reads].index(small_offset)
            assert position <= runs_before + 1, "the read waited for more than the run in flight"
            assert prefetcher.stats.runs < 16, "prefetch was already done: the test proves nothing"

    trio.run(main)
    assert prefetcher.stats.errors == 0
    assert all(length <= 4 * CHUNK for _, length in backend.reads)
    total = sum(blob.compressed_size for blob in bootstrap.blobs)
    assert sum(length for _, length in backend.reads) == total, "every chunk fetched exactly once"


def test_bandwidth_rate_paces_prefetch(tmp_path: Path) -> None:
    bootstrap, blob_dir, _ = make_image(tmp_path)
    chunks = ChunkSource(bootstrap, SlowBackend(blob_dir, 0), MemoryChunkCache())
    rate = 256 * 1024
    prefetcher = Prefetcher(chunks, files=None, prefetch_all=True, merging_size=8 * CHUNK, bandwidth_rate=rate)
    started = time.monotonic()
    trio.run(prefetcher.run)
    assert prefetcher.stats.bytes >= 64 * CHUNK
    assert time.monotonic() - started >= prefetcher.stats.bytes / rate * 0.9 - 0.2


def test_sequential_reads_fetch_ahead_in_the_same_range(tmp_path: Path) -> None:
    bootstrap, blob_dir, files = make_image(tmp_path)
    backend = SlowBackend(blob_dir, 0)
    chunks = ChunkSource(bootstrap, backend, MemoryChunkCache(), merging_size=1 << 20)
    reader = FileReader(bootstrap, chunks, readahead=8 * CHUNK)
    big = bootstrap.resolve("/big")
    assert big is not None

    async def main() -> bytes:
        parts = [await reader.read(big, offset, CHUNK) for offset in range(0, 64 * CHUNK, CHUNK)]
        return b"".join(parts)

    assert trio.run(main) == files["big"]
    # The first read is not sequential; each later miss brings the next 8 chunks along.
    assert len(backend.reads) <= 1 + 64 // 9 + 1
    assert sum(length for _, length in backend.reads) == 64 * CHUNK
