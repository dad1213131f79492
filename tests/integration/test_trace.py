"""`nydusd --trace-out`: chunks in first-read order, fed back to `nydus-image create --prefetch-files`."""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from builder.verify import check
from rafs.mapped import open_bootstrap
from tests.daemon.images import build_image, synthetic_tree
from tests.daemon.nydusd import NYDUSD, cached_chunks, mounted, requires_fuse, write_config

pytestmark = [pytest.mark.fuse, requires_fuse]
CHUNK = 0x10000


def read_page(path: str, offset: int) -> bytes:
    """One page at `offset`, with the kernel's readahead off (so the daemon sees just that page)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
        return os.pread(descriptor, 4096, offset)
    finally:
        os.close(descriptor)


def test_trace_lists_first_reads_of_chunks_and_builds_a_prefetch_chunk_table(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "src"
    (source / "app").mkdir(parents=True)
    rng = random.Random(5)
    (source / "app" / "big").write_bytes(rng.randbytes(8 * CHUNK))
    (source / "app" / "small").write_bytes(b"small\n")
    (source / "app" / "unread").write_bytes(rng.randbytes(2 * CHUNK))
    image = build_image(str(source), str(tmp_path / "image"), chunk_size=CHUNK)
    config = write_config(str(tmp_path / "c.json"), image.blob_dir)
    trace = tmp_path / "trace.txt"
    with mounted(
        image.bootstrap, str(tmp_path / "mnt"), config, str(tmp_path / "log"), extra=["--trace-out", str(trace)]
    ) as daemon:
        root = daemon.mountpoint
        os.listdir(os.path.join(root, "app"))  # metadata only: not traced
        os.close(os.open(os.path.join(root, "app/unread"), os.O_RDONLY))  # opened, never read: not traced
        read_page(os.path.join(root, "app/big"), 5 * CHUNK + 100)
        Path(root, "app/small").read_bytes()
        read_page(os.path.join(root, "app/big"), 0)
        read_page(os.path.join(root, "app/big"), 5 * CHUNK + 8192)  # a chunk read before: not again
        traced_while_mounted = trace.read_text()
    expected = (
        f"/app/big\t{5 * CHUNK}-{6 * CHUNK}\n"
        f"/app/small\t0-{CHUNK}\n"
        f"/app/big\t0-{CHUNK}\n"
    )  # fmt: skip
    assert traced_while_mounted == expected  # flushed as it goes
    assert trace.read_text() == expected

    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    cli(
        "nydus-image",
        ["create", "--bootstrap", str(rebuilt / "image.boot"), "--blob-dir", str(rebuilt / "blobs"),
         "--chunk-size", hex(CHUNK), "-c", "none", "--prefetch-files", str(trace), str(source)],
        check=True,
    )  # fmt: skip
    bootstrap = open_bootstrap(rebuilt / "image.boot")
    big, small = bootstrap.resolve(b"/app/big"), bootstrap.resolve(b"/app/small")
    assert big is not None and small is not None
    assert bootstrap.prefetch_inodes() == [big, small]
    assert bootstrap.prefetch_chunks() == [(big, 5), (small, 0), (big, 0)]
    # The listed chunks head the blob in that order; big's other chunks come after them.
    offsets = {
        (ino, k): chunk.compressed_offset for ino in (big, small) for k, chunk in enumerate(bootstrap.chunks(ino))
    }
    assert (
        offsets[(big, 5)]
        == 0
        < offsets[(small, 0)]
        < offsets[(big, 0)]
        < min(offsets[(big, k)] for k in (1, 2, 3, 4, 6, 7))
    )
    check(bootstrap, str(rebuilt / "blobs"))

    # Mounted with the default config, the daemon prefetches those three chunks and nothing else.
    work_dir = str(tmp_path / "cache")
    config = write_config(str(tmp_path / "c2.json"), str(rebuilt / "blobs"), work_dir)
    with mounted(str(rebuilt / "image.boot"), str(tmp_path / "mnt2"), config, str(tmp_path / "log2")) as daemon:
        daemon.wait_for_log("prefetch done")
        assert cached_chunks(work_dir) == 3
        # Opening a file the table covers does not fetch it whole (as an image without a trace
        # would): the trace shows the start needs only those chunks of it.
        os.close(os.open(os.path.join(daemon.mountpoint, "app/big"), os.O_RDONLY))
        time.sleep(0.5)  # a local backend would have brought the other seven chunks by now
        assert cached_chunks(work_dir) == 3
        assert read_page(os.path.join(daemon.mountpoint, "app/big"), 2 * CHUNK)  # the others on demand
        assert cached_chunks(work_dir) > 3


def test_a_plain_path_list_still_prefetches_whole_files(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    source = synthetic_tree(str(tmp_path / "src"), files=8)
    listed = tmp_path / "list.txt"
    listed.write_text("/etc/passwd\n/usr/lib/deep/er/still/zeros\n/usr/lib/file005\n")
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    cli(
        "nydus-image",
        ["create", "--bootstrap", str(rebuilt / "image.boot"), "--blob-dir", str(rebuilt / "blobs"),
         "--chunk-size", hex(CHUNK), "--prefetch-files", str(listed), source],
        check=True,
    )  # fmt: skip
    bootstrap = open_bootstrap(rebuilt / "image.boot")
    assert bootstrap.prefetch_inodes() == [bootstrap.resolve(line) for line in listed.read_text().splitlines()]
    assert bootstrap.prefetch_chunks() == []  # no ranges: the file table alone, as Nydus's


def test_nydusd_prefetch_files_takes_a_trace_too(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "app").mkdir(parents=True)
    (source / "app" / "big").write_bytes(random.Random(6).randbytes(8 * CHUNK))
    image = build_image(str(source), str(tmp_path / "image"), chunk_size=CHUNK)
    listed = tmp_path / "trace.txt"
    listed.write_text(f"/app/big\t{3 * CHUNK}-{3 * CHUNK + 1}\n/app/big\t{6 * CHUNK - 1}-{7 * CHUNK + 1}\n")
    work_dir = str(tmp_path / "cache")
    config = write_config(str(tmp_path / "c.json"), image.blob_dir, work_dir)
    extra = ["--prefetch-files", str(listed)]
    with mounted(image.bootstrap, str(tmp_path / "mnt"), config, str(tmp_path / "log"), extra=extra) as daemon:
        daemon.wait_for_log("prefetch done")
        assert cached_chunks(work_dir) == 4  # chunks 3, 5, 6 and 7


def test_a_bad_range_in_a_prefetch_list_is_one_line_and_nothing_is_made(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "src"
    (source / "app").mkdir(parents=True)
    (source / "app" / "big").write_bytes(bytes(2 * CHUNK))
    listed = tmp_path / "trace.txt"
    listed.write_text(f"/app/big\t0-{CHUNK}\n/app/big\t{CHUNK}-{CHUNK}\n")
    out = tmp_path / "out"
    out.mkdir()
    built = cli(
        "nydus-image",
        ["create", "--bootstrap", str(out / "image.boot"), "--blob-dir", str(out / "blobs"),
         "--prefetch-files", str(listed), str(source)],
    )  # fmt: skip
    assert built.returncode == 2
    assert built.stderr.strip().splitlines() == [
        f"nydus-image create: error: --prefetch-files {listed} line 2: byte range {CHUNK}-{CHUNK} is empty"
    ]
    assert os.listdir(out) == []

    image = build_image(str(source), str(tmp_path / "image"), chunk_size=CHUNK)
    config = write_config(str(tmp_path / "c.json"), image.blob_dir)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    daemon = subprocess.run(
        [*NYDUSD, "--bootstrap", image.bootstrap, "--mountpoint", str(mountpoint), "--config", config,
         "--prefetch-files", str(listed)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert daemon.returncode == 2
    assert daemon.stderr.strip().splitlines() == [
        f"nydusd: --prefetch-files {listed} line 2: byte range {CHUNK}-{CHUNK} is empty"
    ]
    assert not os.path.ismount(mountpoint)
