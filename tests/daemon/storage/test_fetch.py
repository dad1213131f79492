"""Fetching: adjacent misses merged into one range, a corrupt chunk isolated and never cached."""

from __future__ import annotations

import os
import random

import pytest

from daemon.storage.backend import BlobNotFound, RangeNotSatisfied
from daemon.storage.cache import DiskChunkCache
from daemon.storage.fetch import ChunkRequest, fetch_chunks, merge_ranges
from daemon.storage.localfs import LocalFsBackend
from rafs import layout
from rafs.errors import ChunkDigestMismatch, CorruptChunk
from rafs.mapped import open_bootstrap
from tests.daemon.images import build_image


class CountingBackend(LocalFsBackend):
    """LocalFsBackend that records every range it is asked for."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.ranges: list[tuple[int, int]] = []

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        self.ranges.append((offset, length))
        return super().read_range(blob_id, offset, length)


@pytest.fixture
def image(tmp_path: os.PathLike[str]) -> tuple[str, str, bytes]:
    source = os.path.join(tmp_path, "src")
    os.makedirs(source)
    data = random.Random(1).randbytes(8 * 4096)
    with open(os.path.join(source, "file"), "wb") as file:
        file.write(data)
    built = build_image(source, str(tmp_path), chunk_size=4096, compressor=layout.COMPRESSOR_NONE)
    return built.bootstrap, built.blob_dir, data


def requests_of(bootstrap_path: str) -> list[ChunkRequest]:
    bootstrap = open_bootstrap(bootstrap_path)
    ino = bootstrap.resolve("/file")
    assert ino is not None
    first = bootstrap.inode(ino).data_start
    return [
        ChunkRequest(first + i, record, bootstrap.blobs[record.blob_index])
        for i, record in enumerate(bootstrap.chunks(ino))
    ]


def test_adjacent_misses_are_one_range(image: tuple[str, str, bytes], tmp_path: os.PathLike[str]) -> None:
    bootstrap, blob_dir, data = image
    requests = requests_of(bootstrap)
    assert len(merge_ranges(requests, 1 << 20)) == 1
    assert [len(run) for run in merge_ranges(requests, 3 * 4096)] == [3, 3, 2]
    assert len(merge_ranges(requests[::2], 1 << 20)) == 4  # gaps split runs
    backend = CountingBackend(blob_dir)
    cache = DiskChunkCache(os.path.join(tmp_path, "cache"))
    results = fetch_chunks(backend, cache, requests, digester=0, merging_size=1 << 20)
    assert backend.ranges == [(0, len(data))]
    assert b"".join(results[request.key] for request in requests) == data  # type: ignore[misc]
    assert all(cache.has(request.key, request.record.digest) for request in requests)
    # the cache holds the uncompressed bytes: a slice is read back as is
    assert cache.read(requests[2].key, requests[2].record.digest, 10, 20) == data[2 * 4096 + 10 : 2 * 4096 + 30]


@pytest.mark.logs_warnings  # provoked on purpose
def test_corrupt_chunk_is_isolated_and_not_cached(image: tuple[str, str, bytes], tmp_path: os.PathLike[str]) -> None:
    bootstrap, blob_dir, data = image
    requests = requests_of(bootstrap)
    blob_path = os.path.join(blob_dir, requests[0].blob.blob_id)
    with open(blob_path, "r+b") as blob:
        blob.seek(requests[3].record.compressed_offset + 100)
        byte = blob.read(1)
        blob.seek(-1, os.SEEK_CUR)
        blob.write(bytes([byte[0] ^ 0xFF]))
    cache = DiskChunkCache(os.path.join(tmp_path, "cache"))
    results = fetch_chunks(LocalFsBackend(blob_dir), cache, requests, digester=0, merging_size=1 << 20)
    error = results[requests[3].key]
    assert isinstance(error, ChunkDigestMismatch)
    assert error.chunk_index == requests[3].chunk_index and requests[0].blob.blob_id[:16] in str(error)
    assert not cache.has(requests[3].key, requests[3].record.digest)
    for index in (0, 1, 2, 4, 5, 6, 7):
        assert results[requests[index].key] == data[index * 4096 : (index + 1) * 4096]
    again = fetch_chunks(LocalFsBackend(blob_dir), cache, requests[3:4], digester=0, merging_size=1 << 20)
    assert isinstance(again[requests[3].key], ChunkDigestMismatch)  # verified on entry, whatever digest_validate says


def test_backend_errors(image: tuple[str, str, bytes], tmp_path: os.PathLike[str]) -> None:
    _, blob_dir, _ = image
    backend = LocalFsBackend(blob_dir)
    blob_id = os.listdir(blob_dir)[0]
    with pytest.raises(RangeNotSatisfied):
        backend.read_range(blob_id, 0, 1 << 30)
    with pytest.raises(BlobNotFound):
        backend.read_range("0" * 64, 0, 1)
    with pytest.raises(BlobNotFound):
        backend.read_range("../" + blob_id[3:], 0, 1)


@pytest.mark.logs_warnings  # provoked on purpose
def test_undecodable_frame_fails_alone_in_a_zstd_run(tmp_path: os.PathLike[str]) -> None:
    """A frame that does not decompress fails the C batch; the run is then decoded chunk by chunk."""
    source = os.path.join(tmp_path, "src")
    os.makedirs(source)
    words = random.Random(2).choices([b"alpha", b"beta", b"gamma", b"delta"], k=8000)
    data = b" ".join(words)[: 8 * 4096]
    with open(os.path.join(source, "file"), "wb") as file:
        file.write(data)
    built = build_image(source, str(tmp_path), chunk_size=4096, compressor=layout.COMPRESSOR_ZSTD)
    requests = requests_of(built.bootstrap)
    assert all(request.record.is_compressed for request in requests)
    with open(os.path.join(built.blob_dir, requests[0].blob.blob_id), "r+b") as blob:
        blob.seek(requests[3].record.compressed_offset)
        blob.write(b"\0\0\0\0")  # no zstd magic any more
    cache = DiskChunkCache(os.path.join(tmp_path, "cache"))
    results = fetch_chunks(LocalFsBackend(built.blob_dir), cache, requests, digester=0, merging_size=1 << 20)
    error = results[requests[3].key]
    assert isinstance(error, CorruptChunk) and error.chunk_index == requests[3].chunk_index
    assert not cache.has(requests[3].key, requests[3].record.digest)
    for index in (0, 1, 2, 4, 5, 6, 7):
        assert results[requests[index].key] == data[index * 4096 : (index + 1) * 4096]
        assert cache.has(requests[index].key, requests[index].record.digest)
