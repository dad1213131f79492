"""Bootstrap-open benchmark: opening a bootstrap of N files costs O(1) time and memory.

Writes a synthetic bootstrap of `--files` regular files (default 1,000,000) spread over
directories, then measures in fresh subprocesses: opening it (`open_bootstrap`), 1,000 path
lookups, and, as the baseline, a full parse that touches every inode. Memory is the growth of
the process's resident set (VmRSS). Usage:

    python3 -m benchmarks.bootstrap_open [--files N]
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile

from benchmarks.common import markdown_table, write_results

PROBE = r"""
import json, sys, time
from rafs.mapped import open_bootstrap
def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
mode, path, files_per_dir = sys.argv[1], sys.argv[2], int(sys.argv[3])
before = rss_kib()
started = time.perf_counter()
bootstrap = open_bootstrap(path)
opened = time.perf_counter() - started
started = time.perf_counter()
if mode == "lookup":
    count = bootstrap.superblock.inode_count
    for i in range(1000):
        n = (i * 7919) % (count - count // files_per_dir - 1)
        ino = bootstrap.resolve(f"/d{n // files_per_dir:05d}/f{n % files_per_dir:04d}")
        assert ino is not None
elif mode == "parse":
    for ino in range(1, bootstrap.superblock.inode_count + 1):
        bootstrap.inode(ino)
work = time.perf_counter() - started
after = rss_kib()
print(json.dumps({"open_s": opened, "work_s": work, "rss_growth_kib": after - before}))
"""


def write_synthetic(path: str, files: int, files_per_dir: int) -> None:
    from rafs.records import ChunkRecord
    from rafs.tree import FsNode, new_directory
    from rafs.writer import write_bootstrap

    root = new_directory()
    chunk = ChunkRecord(0, 0, 0, 4096, 4096, 0, bytes(32))
    for index in range(files):
        directory_name = f"d{index // files_per_dir:05d}".encode()
        directory = root.children.get(directory_name)
        if directory is None:
            directory = root.children[directory_name] = new_directory()
        directory.children[f"f{index % files_per_dir:04d}".encode()] = FsNode(
            mode=stat.S_IFREG | 0o644, size=4096, chunks=[chunk]
        )
    from rafs.records import BlobRecord

    data = write_bootstrap(root, [BlobRecord("0" * 64, 4096, 4096, 1, 0)])
    with open(path, "wb") as file:
        file.write(data)


def probe(mode: str, path: str, files_per_dir: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-c", PROBE, mode, path, str(files_per_dir)], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, float] = json.loads(output)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--files-per-dir", type=int, default=1000)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="open-bench-") as work:
        path = os.path.join(work, "boot")
        print(f"writing a bootstrap of {arguments.files} files...", file=sys.stderr)
        write_synthetic(path, arguments.files, arguments.files_per_dir)
        size = os.path.getsize(path)
        results = {mode: probe(mode, path, arguments.files_per_dir) for mode in ("open", "lookup", "parse")}
    parse_s = results["parse"]["work_s"]
    table = markdown_table(
        ["operation", "seconds", "vs full parse", "RSS growth MiB"],
        [
            [
                "open_bootstrap",
                f"{results['open']['open_s']:.6f}",
                f"{results['open']['open_s'] / parse_s:.6f}x",
                f"{results['open']['rss_growth_kib'] / 1024:.1f}",
            ],
            [
                "1000 path lookups",
                f"{results['lookup']['work_s']:.4f}",
                f"{results['lookup']['work_s'] / parse_s:.4f}x",
                f"{results['lookup']['rss_growth_kib'] / 1024:.1f}",
            ],
            ["full parse (every inode)", f"{parse_s:.3f}", "1.00x", f"{results['parse']['rss_growth_kib'] / 1024:.1f}"],
        ],
    )
    print(f"bootstrap: {arguments.files} files, {size / 2**20:.1f} MiB")
    print(table)
    write_results("bootstrap_open", {"files": arguments.files, "bootstrap_bytes": size, "results": results}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
