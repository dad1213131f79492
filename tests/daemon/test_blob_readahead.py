"""Blob-order amplification (`Readahead.along`): a demand miss also fetches the chunks stored after
it, in a request of its own right behind the miss's.

Files "a", "b", "c" are one small chunk each, stored back to back in that order.
"""

from __future__ import annotations

import os
import random
import threading

import pytest
import trio
import trio.testing

from daemon import readahead
from daemon.blob_order import BlobOrder
from daemon.chunks import ChunkSource
from daemon.readahead import Readahead
from daemon.reader import FileReader
from daemon.storage.cache import ChunkKey, DiskChunkCache
from rafs import layout
from rafs.bootstrap import Bootstrap
from rafs.errors import ChunkDigestMismatch
from rafs.mapped import open_bootstrap
from rafs.records import ChunkRecord
from tests.daemon.images import build_image
from tests.daemon.sources import idle, make_source, running
from tests.daemon.test_chunks import CHUNK, GatedBackend, read

AMPLIFY = 1 << 20
Image = tuple[Bootstrap, str, dict[str, bytes]]


@pytest.fixture
def image(tmp_path: os.PathLike[str]) -> Image:
    source = os.path.join(tmp_path, "src")
    os.makedirs(source)
    rng = random.Random(3)
    contents = {name: rng.randbytes(3000) for name in ("a", "b", "c")}
    for name, data in contents.items():
        with open(os.path.join(source, name), "wb") as file:
            file.write(data)
    built = build_image(source, str(tmp_path), chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE)
    bootstrap = open_bootstrap(built.bootstrap)
    offsets = [chunk_of(bootstrap, name).compressed_offset for name in ("a", "b", "c")]
    assert offsets == sorted(offsets)
    return bootstrap, built.blob_dir, contents


def chunk_of(bootstrap: Bootstrap, name: str) -> ChunkRecord:
    ino = bootstrap.resolve("/" + name)
    assert ino is not None
    (record,) = bootstrap.chunks(ino)
    return record


def source_for(
    image: Image, tmp_path: os.PathLike[str], amplify_io: int, cache_name: str = "cache"
) -> tuple[ChunkSource, GatedBackend, Readahead]:
    bootstrap, blob_dir, _ = image
    backend = GatedBackend(blob_dir)
    cache = DiskChunkCache(os.path.join(tmp_path, cache_name))
    source, policies = make_source(bootstrap, backend, cache, amplify_io=amplify_io)
    return source, backend, policies


def corrupt(image: Image, name: str, byte: bytes = b"\xff") -> bytes:
    """Overwrite the first stored byte of `name`'s chunk; returns the byte it had."""
    bootstrap, blob_dir, _ = image
    record = chunk_of(bootstrap, name)
    with open(os.path.join(blob_dir, bootstrap.blobs[record.blob_index].blob_id), "r+b") as blob:
        blob.seek(record.compressed_offset)
        old = blob.read(1)
        blob.seek(record.compressed_offset)
        blob.write(byte)
    return old


@pytest.mark.trio
@pytest.mark.parametrize(("amplify_io", "requests_for_b"), [(AMPLIFY, 0), (0, 1)])
async def test_next_file_rides_along(
    image: Image, tmp_path: os.PathLike[str], amplify_io: int, requests_for_b: int
) -> None:
    bootstrap, _, contents = image
    a = chunk_of(bootstrap, "a")
    source, backend, _ = source_for(image, tmp_path, amplify_io)
    async with running(source):
        assert await read(source, bootstrap, "a") == contents["a"]
        await idle(source)
        assert (a.compressed_offset, a.compressed_size) in backend.reads, "the miss waits for its own bytes only"
        before = len(backend.reads)
        assert await read(source, bootstrap, "b") == contents["b"]
        assert len(backend.reads) - before == requests_for_b


@pytest.mark.trio
async def test_readahead_stops_at_the_window_and_at_cached_chunks(image: Image, tmp_path: os.PathLike[str]) -> None:
    bootstrap, _, contents = image
    a, b, c = (chunk_of(bootstrap, name) for name in ("a", "b", "c"))
    source, backend, _ = source_for(image, tmp_path, b.compressed_size)  # room for one more chunk
    async with running(source):
        assert await read(source, bootstrap, "a") == contents["a"]
        await idle(source)
        assert sorted(backend.reads) == [
            (a.compressed_offset, a.compressed_size),
            (b.compressed_offset, b.compressed_size),
        ]
    source, backend, _ = source_for(image, tmp_path, AMPLIFY, "other-cache")
    async with running(source):
        assert await read(source, bootstrap, "b") == contents["b"]  # b, then c after it and a before
        await idle(source)
        assert sorted(backend.reads) == [
            (a.compressed_offset, a.compressed_size),
            (b.compressed_offset, b.compressed_size),
            (c.compressed_offset, c.compressed_size),
        ]
        assert await read(source, bootstrap, "a") == contents["a"]
        assert await read(source, bootstrap, "c") == contents["c"]
        assert len(backend.reads) == 3


@pytest.mark.trio
async def test_readahead_reaches_back_a_quarter_of_its_window(image: Image, tmp_path: os.PathLike[str]) -> None:
    """A miss on "c" brings "b", stored right before it, within a quarter of the window; "a" lies
    beyond it and waits for its own miss."""
    bootstrap, _, contents = image
    a, b, c = (chunk_of(bootstrap, name) for name in ("a", "b", "c"))
    assert readahead.AMPLIFY_BEFORE_SHARE == 1 / 4
    window = 4 * (c.compressed_offset - b.compressed_offset)  # a quarter of it holds b, not a too
    source, backend, _ = source_for(image, tmp_path, window)
    async with running(source):
        assert await read(source, bootstrap, "c") == contents["c"]
        await idle(source)
        assert sorted(backend.reads) == [
            (b.compressed_offset, b.compressed_size),
            (c.compressed_offset, c.compressed_size),
        ]
        assert await read(source, bootstrap, "b") == contents["b"]
        assert len(backend.reads) == 2
        assert await read(source, bootstrap, "a") == contents["a"]
        assert backend.reads[-1] == (a.compressed_offset, a.compressed_size)


@pytest.mark.trio
@pytest.mark.logs_warnings  # provoked on purpose
async def test_a_corrupt_neighbour_is_not_cached_and_fails_only_its_own_reader(
    image: Image, tmp_path: os.PathLike[str]
) -> None:
    bootstrap, _, contents = image
    b = chunk_of(bootstrap, "b")
    good = corrupt(image, "b")
    source, backend, _ = source_for(image, tmp_path, AMPLIFY)
    async with running(source):
        assert await read(source, bootstrap, "a") == contents["a"]
        await idle(source)
        assert len(backend.reads) == 2  # a, then b and c: no second try for a readahead chunk
        blob_id = bootstrap.blobs[b.blob_index].blob_id
        assert not source.cache.has(ChunkKey(blob_id, b.compressed_offset), b.digest)
        assert await read(source, bootstrap, "c") == contents["c"]  # c was read ahead and verified
        assert len(backend.reads) == 2
        with pytest.raises(ChunkDigestMismatch):
            await read(source, bootstrap, "b")
        corrupt(image, "b", good)
        assert await read(source, bootstrap, "b") == contents["b"]
        assert backend.reads[-1] == (b.compressed_offset, b.compressed_size)


@pytest.mark.trio
async def test_a_reader_waits_for_the_readahead_that_fetches_its_chunk(
    image: Image, tmp_path: os.PathLike[str]
) -> None:
    bootstrap, _, contents = image
    source, backend, _ = source_for(image, tmp_path, AMPLIFY)
    async with running(source):
        backend.gate.clear()
        results: dict[str, bytes] = {}

        async def reader(name: str) -> None:
            results[name] = await read(source, bootstrap, name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, "a")
            await trio.to_thread.run_sync(backend.waiting.wait, 10)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(reader, "b")
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()
        assert results == {"a": contents["a"], "b": contents["b"]}
        assert len(backend.reads) == 2  # a's, and the one carrying b and c
        assert source.stats.shared_waits == 1


@pytest.mark.trio
@pytest.mark.logs_warnings  # provoked on purpose
async def test_a_waiting_reader_fetches_again_when_the_readahead_copy_was_corrupt(
    image: Image, tmp_path: os.PathLike[str]
) -> None:
    bootstrap, _, contents = image
    corrupt(image, "b")
    source, backend, _ = source_for(image, tmp_path, AMPLIFY)
    async with running(source):
        backend.gate.clear()
        outcome: dict[str, object] = {}

        async def reader(name: str) -> None:
            try:
                outcome[name] = await read(source, bootstrap, name)
            except ChunkDigestMismatch as error:
                outcome[name] = error

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, "a")
            await trio.to_thread.run_sync(backend.waiting.wait, 10)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(reader, "b")
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()
        assert outcome["a"] == contents["a"]
        assert isinstance(outcome["b"], ChunkDigestMismatch)
        assert len(backend.reads) == 2 + 2  # a, b and c read ahead, then b's own fetch and its retry


def test_blob_order_lists_stored_chunks_once_in_offset_order(image: Image) -> None:
    bootstrap, _, _ = image
    order = BlobOrder.build(bootstrap, 0)
    records = [bootstrap.chunk(index) for index in order.after(-1)]
    assert [record.compressed_offset for record in records] == sorted({r.compressed_offset for r in records})
    assert len(order) == 3
    assert list(order.after(records[0].compressed_offset)) == list(order.indexes[1:])
    assert order.nbytes() == 3 * (8 + 4)


@pytest.mark.trio
async def test_a_large_table_is_ordered_in_the_background_without_delaying_the_first_miss(
    image: Image, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap, _, contents = image
    built = threading.Event()
    finished = threading.Event()
    build = BlobOrder.build

    def slow_build(bootstrap: Bootstrap, blob_index: int) -> BlobOrder:
        built.wait(10)
        try:
            return build(bootstrap, blob_index)
        finally:
            finished.set()

    monkeypatch.setattr(readahead, "INLINE_ORDER_CHUNKS", 0)
    monkeypatch.setattr(BlobOrder, "build", slow_build)
    source, backend, policies = source_for(image, tmp_path, AMPLIFY)
    async with running(source):
        with trio.fail_after(5):
            assert await read(source, bootstrap, "a") == contents["a"]  # not delayed, no readahead yet
        a = chunk_of(bootstrap, "a")
        assert backend.reads == [(a.compressed_offset, a.compressed_size)]
        built.set()
        assert await trio.to_thread.run_sync(finished.wait, 10), "the blob order was never built"
        await trio.testing.wait_all_tasks_blocked()  # the task that ran the build has stored its result
        assert policies._blob_order(0) is not None
        assert await read(source, bootstrap, "b") == contents["b"]  # b, then c
        await idle(source)
        assert await read(source, bootstrap, "c") == contents["c"]
        assert len(backend.reads) == 3


@pytest.mark.trio
@pytest.mark.parametrize("adaptive", [True, False], ids=["earned", "fixed"])
async def test_amplification_shrinks_while_what_it_brings_goes_unread(
    image: Image, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch, adaptive: bool
) -> None:
    """The window is `amplify_io` times the share of amplified bytes that reads used (full from
    `USED_FOR_FULL_WINDOW`, at least `MIN_AMPLIFY_FRACTION`); `adaptive_amplify: false` keeps it fixed."""
    monkeypatch.setattr(readahead, "LEARN_AMPLIFIED_BYTES", 1)  # judge from the first amplified chunk
    bootstrap, _, contents = image
    b, c = chunk_of(bootstrap, "b"), chunk_of(bootstrap, "c")
    source, backend, policies = source_for(image, tmp_path, AMPLIFY)
    policies.adaptive_amplify = adaptive
    reader = FileReader(bootstrap, source, policies)
    async with running(source):
        assert await reader.read(resolve(bootstrap, "a"), 0, 3000) == contents["a"]  # brings b and c along
        await idle(source)
        assert policies.amplified_bytes == b.compressed_size + c.compressed_size
        assert policies.amplified_used_bytes == 0
        assert policies.amplify_window() == (int(AMPLIFY * readahead.MIN_AMPLIFY_FRACTION) if adaptive else AMPLIFY)
        reads = len(backend.reads)
        assert await reader.read(resolve(bootstrap, "b"), 0, 3000) == contents["b"]  # a hit: b was brought
        assert len(backend.reads) == reads
        assert policies.amplified_used_bytes == b.compressed_size
        share = b.compressed_size / (b.compressed_size + c.compressed_size)
        assert share >= readahead.USED_FOR_FULL_WINDOW
        assert policies.amplify_window() == AMPLIFY
        assert await reader.read(resolve(bootstrap, "b"), 0, 3000) == contents["b"]  # counted once
        assert policies.amplified_used_bytes == b.compressed_size


def resolve(bootstrap: Bootstrap, name: str) -> int:
    ino = bootstrap.resolve("/" + name)
    assert ino is not None
    return ino
