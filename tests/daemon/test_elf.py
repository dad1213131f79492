"""`daemon.elf` on the host's own binaries, and readahead following a chain of libraries in an image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from daemon.elf import needed_libraries
from daemon.storage.cache import MemoryChunkCache
from daemon.storage.localfs import LocalFsBackend
from rafs import layout
from rafs.mapped import open_bootstrap
from tests.daemon.images import build_image
from tests.daemon.sources import idle, make_source, running

LIBZ = "/lib/x86_64-linux-gnu/libz.so.1"


def reader_of(path: str):  # type: ignore[no-untyped-def]
    data = Path(path).read_bytes()

    async def read(offset: int, size: int) -> bytes:
        return data[offset : offset + size]

    return read


def readelf_needed(path: str) -> list[str]:
    """What binutils says the file needs: the reference the parser is held to."""
    output = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].split("]", 1)[0] for line in output.splitlines() if "(NEEDED)" in line]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf (binutils) as the reference")
@pytest.mark.parametrize("path", [sys.executable, LIBZ, "/bin/ls", "/lib/x86_64-linux-gnu/libc.so.6"])
def test_needed_libraries_agree_with_readelf(path: str) -> None:
    real = os.path.realpath(path)
    needed = trio.run(needed_libraries, reader_of(real))
    assert needed is not None
    assert list(needed.libraries) == readelf_needed(real)


@pytest.mark.parametrize(
    "data", [b"", b"#!/bin/sh\necho hi\n", b"\x7fELF" + bytes(100), b"\x7fELF\x01\x01" + bytes(60)]
)
def test_anything_else_is_no_libraries(data: bytes) -> None:
    async def read(offset: int, size: int) -> bytes:
        return data[offset : offset + size]

    assert trio.run(needed_libraries, read) is None


def test_opening_a_library_queues_the_libraries_it_needs(tmp_path: Path) -> None:
    source = tmp_path / "src"
    libdir = source / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    shutil.copy(os.path.realpath(LIBZ), libdir / "libz.so.1.2.13")
    os.symlink("libz.so.1.2.13", libdir / "libz.so.1")
    shutil.copy("/lib/x86_64-linux-gnu/libc.so.6", libdir / "libc.so.6")
    (libdir / "unrelated.so").write_bytes(os.urandom(50_000))
    image = build_image(str(source), str(tmp_path / "image"), chunk_size=64 * 1024, compressor=layout.COMPRESSOR_ZSTD)
    bootstrap = open_bootstrap(image.bootstrap)
    cache = MemoryChunkCache(max_bytes=64 << 20)
    chunks, readahead = make_source(bootstrap, LocalFsBackend(image.blob_dir), cache, whole_file_max=64 << 20)
    libz = bootstrap.resolve("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13")
    libc = bootstrap.resolve("/usr/lib/x86_64-linux-gnu/libc.so.6")
    unrelated = bootstrap.resolve("/usr/lib/x86_64-linux-gnu/unrelated.so")
    assert libz is not None and libc is not None and unrelated is not None

    def cached(ino: int) -> bool:
        return all(
            chunks.cache.has(chunks.request(bootstrap.inode(ino).data_start + i, record).key, record.digest)
            for i, record in enumerate(bootstrap.chunks(ino))
        )

    async def main() -> None:
        async with running(chunks):
            readahead.opened(libz, b"/usr/lib/x86_64-linux-gnu/libz.so.1")
            with trio.fail_after(20):
                while not cached(libc):  # queued by libz's DT_NEEDED, not by any open or read
                    await trio.sleep(0.01)
            await idle(chunks)

    trio.run(main)
    assert cached(libz) and cached(libc)
    assert not cached(unrelated)
