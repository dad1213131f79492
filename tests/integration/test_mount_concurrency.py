"""Many readers at once, a stalled backend, corrupt blobs and unmounting under load."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from daemon.readahead import AMPLIFY_BEFORE_SHARE
from rafs import layout
from rafs.mapped import open_bootstrap
from tests.daemon.images import Image, build_image
from tests.daemon.nydusd import Daemon, force_unmount, is_mounted, mounted, requires_fuse, write_config

pytestmark = [pytest.mark.fuse, requires_fuse]

STALLING_NYDUSD = [sys.executable, "-m", "tests.daemon.stalling_nydusd"]
CHUNK = 0x10000


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> Image:
    base = str(tmp_path_factory.mktemp("many"))
    rng = random.Random(3)
    source = os.path.join(base, "src")
    for number in range(160):
        directory = os.path.join(source, f"d{number % 8}")
        os.makedirs(directory, exist_ok=True)
        size = rng.choice([0, 10, 5000, CHUNK, 3 * CHUNK + 17, 700_000, 2_500_000])
        with open(os.path.join(directory, f"f{number}"), "wb") as file:
            file.write(rng.randbytes(size))
    return build_image(source, base, chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE)


def sha256_of(path: str, read_size: int = 1 << 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(read_size):
            digest.update(block)
    return digest.hexdigest()


def relative_files(root: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(directory, name), root) for directory, _, names in os.walk(root) for name in names
    )


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def stall(flag: str) -> Iterator[None]:
    """Backend reads of a stalling daemon wait inside this block."""
    with open(flag, "w"):
        pass
    try:
        yield
    finally:
        if os.path.exists(flag):
            os.unlink(flag)


def test_32_parallel_readers_get_correct_bytes(many_files: Image, tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    files = relative_files(many_files.source)
    expected = {name: sha256_of(os.path.join(many_files.source, name)) for name in files}
    config = write_config(os.path.join(work, "c.json"), many_files.blob_dir, os.path.join(work, "cache"))
    with mounted(many_files.bootstrap, os.path.join(work, "mnt"), config, os.path.join(work, "log")) as daemon:

        def reader(seed: int) -> dict[str, str]:
            order = files[:]
            random.Random(seed).shuffle(order)
            read_size = [4096, 65536, 1 << 20][seed % 3]
            return {name: sha256_of(os.path.join(daemon.mountpoint, name), read_size) for name in order[:60]}

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(reader, range(32)))
        assert daemon.process.poll() is None
    for result in results:
        assert result == {name: expected[name] for name in result}


def backend_reads(daemon: Daemon) -> list[tuple[int, int]]:
    return [(int(offset), int(length)) for offset, length in re.findall(r"backend read \w+ (\d+) (\d+)", daemon.log())]


def start_in_thread(function: Callable[[], bytes]) -> tuple[threading.Thread, list[bytes]]:
    result: list[bytes] = []
    thread = threading.Thread(target=lambda: result.append(function()), daemon=True)
    thread.start()
    return thread, result


def read_file(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def test_cached_file_is_not_blocked_by_a_stalled_fetch(many_files: Image, tmp_path: os.PathLike[str]) -> None:
    """One fetch thread, stuck on the backend: a chunk-cache hit elsewhere is still served."""
    work = str(tmp_path)
    large = [
        n for n in relative_files(many_files.source) if os.path.getsize(os.path.join(many_files.source, n)) > 2 * CHUNK
    ]
    cached_name, stalled_name = large[0], large[1]
    flag = os.path.join(work, "stall")
    config = write_config(
        os.path.join(work, "c.json"),
        many_files.blob_dir,
        os.path.join(work, "cache"),
        fs_prefetch={"threads_count": 1},
        amplify_io=0,  # readahead would cache the stalled file's chunks with the warm one's
        readahead={"whole_file_max": 0, "window_max": 0},
    )
    mountpoint = os.path.join(work, "mnt")
    with mounted(many_files.bootstrap, mountpoint, config, os.path.join(work, "warm.log")):
        read_file(os.path.join(mountpoint, cached_name))  # fills the chunk cache
    expected = {name: read_file(os.path.join(many_files.source, name)) for name in (cached_name, stalled_name)}
    with (
        stall(flag),
        mounted(
            many_files.bootstrap,
            mountpoint,
            config,
            os.path.join(work, "stall.log"),
            command=[*STALLING_NYDUSD, "--stall-flag", flag],
        ) as daemon,
    ):
        slow, slow_result = start_in_thread(lambda: read_file(os.path.join(mountpoint, stalled_name)))
        wait_for(lambda: "stalling read" in daemon.log(), "the backend to stall")
        fast, fast_result = start_in_thread(lambda: read_file(os.path.join(mountpoint, cached_name)))
        fast.join(60)
        assert fast_result == [expected[cached_name]], "a cached file waited for a stalled fetch"
        assert slow.is_alive()
        os.unlink(flag)
        slow.join(60)
        assert slow_result == [expected[stalled_name]]


def test_concurrent_misses_of_a_chunk_are_fetched_once(many_files: Image, tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    name = next(
        n for n in relative_files(many_files.source) if os.path.getsize(os.path.join(many_files.source, n)) > 2_000_000
    )
    expected = read_file(os.path.join(many_files.source, name))
    flag = os.path.join(work, "stall")
    config = write_config(os.path.join(work, "c.json"), many_files.blob_dir, os.path.join(work, "cache"))
    mountpoint = os.path.join(work, "mnt")
    with (
        stall(flag),
        mounted(
            many_files.bootstrap,
            mountpoint,
            config,
            os.path.join(work, "log"),
            command=[*STALLING_NYDUSD, "--stall-flag", flag],
        ) as daemon,
    ):
        readers = [start_in_thread(lambda: read_file(os.path.join(mountpoint, name))) for _ in range(8)]
        wait_for(lambda: "stalling read" in daemon.log(), "the backend to stall")
        time.sleep(0.5)  # let the other readers' requests arrive and join the flights
        os.unlink(flag)
        for thread, result in readers:
            thread.join(60)
            assert result == [expected]
        reads = sorted(backend_reads(daemon))
    for (offset, length), (next_offset, _) in itertools.pairwise(reads):
        assert offset + length <= next_offset, f"bytes fetched twice: {reads}"
    # the file, and what blob-order readahead took after it (amplify_io, 1 MiB by default) and before
    amplified = (1 << 20) + int((1 << 20) * AMPLIFY_BEFORE_SHARE)
    assert len(expected) <= sum(length for _, length in reads) <= len(expected) + amplified


def test_corrupt_chunk_answers_eio_for_its_range_only(tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    source = os.path.join(work, "src")
    os.makedirs(source)
    data = random.Random(5).randbytes(4 * CHUNK)
    for name in ("victim", "bystander"):
        with open(os.path.join(source, name), "wb") as file:
            file.write(data if name == "victim" else data[::-1])
    image = build_image(source, work, chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE)
    bootstrap = open_bootstrap(image.bootstrap)
    ino = bootstrap.resolve("/victim")
    assert ino is not None
    victim_chunk = bootstrap.inode(ino).data_start + 2
    record = bootstrap.chunk(victim_chunk)
    with open(os.path.join(image.blob_dir, bootstrap.blobs[record.blob_index].blob_id), "r+b") as blob:
        blob.seek(record.compressed_offset + 1234)
        byte = blob.read(1)[0]
        blob.seek(record.compressed_offset + 1234)
        blob.write(bytes([byte ^ 0x01]))
    config = write_config(os.path.join(work, "c.json"), image.blob_dir, os.path.join(work, "cache"))
    with mounted(image.bootstrap, os.path.join(work, "mnt"), config, os.path.join(work, "log")) as daemon:
        descriptor = os.open(os.path.join(daemon.mountpoint, "victim"), os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
            for index in (0, 1, 3):
                assert os.pread(descriptor, CHUNK, index * CHUNK) == data[index * CHUNK : (index + 1) * CHUNK]
            for _ in range(2):  # never cached: fails again
                with pytest.raises(OSError) as raised:
                    os.pread(descriptor, 4096, 2 * CHUNK + 8192)
                assert raised.value.errno == errno.EIO
        finally:
            os.close(descriptor)
        assert read_file(os.path.join(daemon.mountpoint, "bystander")) == data[::-1]
        assert daemon.process.poll() is None
        log = daemon.log()
        assert re.search(
            rf"read failed on /victim \(inode {ino}\): ChunkDigestMismatch: .*chunk {victim_chunk}", log
        ), log


@pytest.mark.parametrize("repaired", [False, True])
def test_corrupt_neighbour_read_ahead_is_not_cached(tmp_path: os.PathLike[str], repaired: bool) -> None:
    """Blob-order readahead takes "b" (stored right after "a") with "a"; its bad copy is dropped."""
    work = str(tmp_path)
    source = os.path.join(work, "src")
    os.makedirs(source)
    rng = random.Random(6)
    contents = {name: rng.randbytes(5000) for name in ("a", "b")}
    for name, data in contents.items():
        with open(os.path.join(source, name), "wb") as file:
            file.write(data)
    image = build_image(source, work, chunk_size=CHUNK, compressor=layout.COMPRESSOR_NONE)
    bootstrap = open_bootstrap(image.bootstrap)
    records = {name: bootstrap.chunks(bootstrap.resolve("/" + name) or 0)[0] for name in contents}
    assert records["b"].compressed_offset == records["a"].compressed_offset + records["a"].compressed_size
    blob_path = os.path.join(image.blob_dir, bootstrap.blobs[0].blob_id)
    with open(blob_path, "r+b") as blob:
        blob.seek(records["b"].compressed_offset + 100)
        good = blob.read(1)
        blob.seek(records["b"].compressed_offset + 100)
        blob.write(bytes([good[0] ^ 0x01]))
    config = write_config(os.path.join(work, "c.json"), image.blob_dir, os.path.join(work, "cache"), amplify_io=1 << 20)
    with mounted(image.bootstrap, os.path.join(work, "mnt"), config, os.path.join(work, "log")) as daemon:
        assert read_file(os.path.join(daemon.mountpoint, "a")) == contents["a"]
        # "b" comes in a request of its own behind "a"'s: the reader does not wait for it
        wait_for(lambda: "readahead chunk not cached" in daemon.log(), "the readahead of b to be refused")
        if repaired:
            with open(blob_path, "r+b") as blob:
                blob.seek(records["b"].compressed_offset + 100)
                blob.write(good)
            assert read_file(os.path.join(daemon.mountpoint, "b")) == contents["b"]
        else:
            with pytest.raises(OSError) as raised:
                read_file(os.path.join(daemon.mountpoint, "b"))
            assert raised.value.errno == errno.EIO
        assert daemon.process.poll() is None


def test_unmount_during_reads_leaves_no_hung_processes(many_files: Image, tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    flag = os.path.join(work, "stall")
    config = write_config(os.path.join(work, "c.json"), many_files.blob_dir, os.path.join(work, "cache"))
    mountpoint = os.path.join(work, "mnt")
    names = relative_files(many_files.source)[-6:]
    readers: list[subprocess.Popen[bytes]] = []
    try:
        with (
            stall(flag),
            mounted(
                many_files.bootstrap,
                mountpoint,
                config,
                os.path.join(work, "log"),
                command=[*STALLING_NYDUSD, "--stall-flag", flag],
            ) as daemon,
        ):
            readers = [
                subprocess.Popen(
                    ["cat", os.path.join(mountpoint, name)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                for name in names
            ]
            wait_for(lambda: "stalling read" in daemon.log(), "the backend to stall")
            assert daemon.stop(signal.SIGTERM, timeout_s=60) == 0
            assert not is_mounted(mountpoint)
            for reader in readers:
                reader.wait(60)  # a reader hung after the unmount fails here (TimeoutExpired)
    finally:  # cleanup only: an assertion here would hide the first failure
        for reader in readers:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
        force_unmount(mountpoint)
