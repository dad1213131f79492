"""Native vs twin in one run: chunk lookups per second and batch decompression GB/s.

`python benchmarks/native_bench.py` needs the C extension (it imports `native._cffi` directly,
so a missing build is an ImportError, never a silent twin-vs-twin run). Writes
benchmarks/results/native_bench.{json,md}. FUSE read throughput is not measured here: it depends
on the daemon's read path, which does not call native.decompress_batch yet.
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections.abc import Callable

import zstandard

from benchmarks.common import markdown_table, write_results
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


def main() -> None:
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
    table_md = markdown_table(["measure", "C", "pure twin", "C / twin"], rows)
    table_md += "\n\nFUSE read throughput: not measured (needs the daemon's read path to call native)."
    path = write_results("native_bench", {"seconds_per_measure": seconds, "results": results}, table_md)
    print(table_md)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
