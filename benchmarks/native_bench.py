"""Native vs twin in one run: chunk lookups, batch decompression, and FUSE reads through nydusd.

`python3 -m benchmarks.native_bench` needs the C extension (it imports `native._cffi` directly,
so a missing build is an ImportError, never a silent twin-vs-twin run). Writes
benchmarks/results/native_bench.{json,md}.

The FUSE part (root and /dev/fuse; skipped otherwise, or with `--no-fuse`) builds an image of
`--tree` (default /usr/include) and reads every file through a nydusd started with
`RAFS_NATIVE=c` and then one with `RAFS_NATIVE=pure`: cold (empty local chunk cache, blobs on a
localfs backend) and warm (a fresh mount over the chunk cache the cold pass filled, so the reads
reach the daemon rather than the kernel's page cache). The two backends alternate `--repeat`
times and the best figure of each is kept, since the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import zstandard

from benchmarks.common import markdown_table, write_results
from benchmarks.read_bench import default_tree, nydusd, read_all, run
from native import _cffi, pure

RECORD = struct.Struct("<IIQIIQ32s")
CHUNK_SIZE = 1 << 20


def chunk_table(chunk_count: int) -> bytes:
    """One file of `chunk_count` 1 MiB chunks, as the bootstrap's chunk table holds it."""
    return b"".join(
        RECORD.pack(0, 1, index * CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, index * CHUNK_SIZE, bytes(32))
        for index in range(chunk_count)
    )


def lookups_per_s(locate: Callable[..., object], table: bytes, chunk_count: int, seconds: float) -> float:
    """128 KiB reads at random offsets, as FUSE issues them."""
    file_size = chunk_count * CHUNK_SIZE
    offsets = [random.randrange(0, file_size) for _ in range(4096)]
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for offset in offsets:
            locate(table, 0, 1, 0, chunk_count, file_size, offset, 128 << 10)
        done += len(offsets)
    return done / (time.perf_counter() - started)


def decompress_gb_per_s(decompress: Callable[..., None], seconds: float) -> float:
    """A batch of eight 1 MiB zstd chunks of text-like data (about 4:1)."""
    words = [bytes(random.choices(b"abcdefghijklmnopqrstuvwxyz", k=random.randint(2, 9))) for _ in range(5000)]
    data = [b" ".join(random.choices(words, k=250_000))[:CHUNK_SIZE] for _ in range(8)]
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=False)
    source = b""
    chunks = []
    for item in data:
        frame = compressor.compress(item)
        chunks.append((len(source), len(frame), True, len(item)))
        source += frame
    output = bytearray(sum(len(item) for item in data))
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        decompress(pure.COMPRESSOR_ZSTD, source, chunks, output)
        done += len(output)
    return done / (time.perf_counter() - started) / 1e9


def fuse_read_mb_per_s(tree: str, repeat: int) -> dict[str, dict[str, float]]:
    """Best cold and warm MB/s of reading every file of `tree` through nydusd, per backend."""
    work = tempfile.mkdtemp(prefix="native-bench-")
    best: dict[str, dict[str, float]] = {backend: {"cold": 0.0, "warm": 0.0} for backend in ("c", "pure")}
    try:
        bootstrap, blob_dir = os.path.join(work, "image.boot"), os.path.join(work, "blobs")
        run([sys.executable, "-m", "builder.cli", "create", "-t", "directory", "-B", bootstrap, "-D", blob_dir, tree])
        mountpoint = os.path.join(work, "mnt")
        for _ in range(repeat):
            for backend in ("c", "pure"):
                cache = os.path.join(work, f"cache-{backend}")
                shutil.rmtree(cache, ignore_errors=True)
                for state in ("cold", "warm"):  # warm: a new mount over the cache the cold pass filled
                    with nydusd(bootstrap, blob_dir, cache, mountpoint, env={"RAFS_NATIVE": backend}) as daemon:
                        started = time.perf_counter()
                        total = read_all(daemon.mountpoint)
                        speed = total / (time.perf_counter() - started) / 1e6
                    best[backend][state] = max(best[backend][state], speed)
    finally:
        subprocess.run(["rm", "-rf", work], check=False)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=default_tree(), help="tree read through nydusd (default /usr/include)")
    parser.add_argument("--repeat", type=int, default=2, help="FUSE passes per backend (the best is kept)")
    parser.add_argument("--no-fuse", action="store_true", help="skip the FUSE read throughput")
    arguments = parser.parse_args()
    random.seed(5)
    seconds = float(os.environ.get("BENCH_SECONDS", "2"))
    rows = []
    results: dict[str, object] = {}
    for chunk_count in (16, 100_000):  # a 16 MiB file and a 100 GiB one
        table = chunk_table(chunk_count)
        c_rate = lookups_per_s(_cffi.locate_chunks, table, chunk_count, seconds)
        pure_rate = lookups_per_s(pure.locate_chunks, table, chunk_count, seconds)
        results[f"lookups_per_s_{chunk_count}_chunks"] = {"c": c_rate, "pure": pure_rate}
        rows.append(
            [f"lookups/s, {chunk_count} chunks", f"{c_rate:,.0f}", f"{pure_rate:,.0f}", f"{c_rate / pure_rate:.1f}x"]
        )
    c_speed = decompress_gb_per_s(_cffi.decompress_batch, seconds)
    pure_speed = decompress_gb_per_s(pure.decompress_batch, seconds)
    results["zstd_decompress_gb_per_s"] = {"c": c_speed, "pure": pure_speed}
    rows.append(["zstd batch GB/s (8 x 1 MiB)", f"{c_speed:.2f}", f"{pure_speed:.2f}", f"{c_speed / pure_speed:.2f}x"])
    fuse_ready = os.geteuid() == 0 and os.path.exists("/dev/fuse")
    if not arguments.no_fuse and fuse_ready:
        tree = os.path.abspath(arguments.tree)
        fuse = fuse_read_mb_per_s(tree, arguments.repeat)
        results["fuse_read_mb_per_s"] = {"tree": tree, "repeat": arguments.repeat, **fuse}
        for state in ("cold", "warm"):
            c_read, pure_read = fuse["c"][state], fuse["pure"][state]
            label = f"nydusd read MB/s, {state} chunk cache ({os.path.basename(tree) or tree})"
            rows.append([label, f"{c_read:.1f}", f"{pure_read:.1f}", f"{c_read / pure_read:.2f}x"])
    table_md = markdown_table(["measure", "C", "pure twin", "C / twin"], rows)
    if arguments.no_fuse or not fuse_ready:
        table_md += "\n\nFUSE read throughput: not measured (--no-fuse, or not root with /dev/fuse)."
    path = write_results("native_bench", {"seconds_per_measure": seconds, "results": results}, table_md)
    print(table_md)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
