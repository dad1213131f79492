"""Read benchmark: the nydusd mount against squashfuse and the plain directory, one real tree.

In one run on the same tree: a metadata walk (lstat of every entry) and sequential read
throughput of every regular file, cold (fresh mount, empty chunk cache) and warm (same mount
again, then for nydusd a remount over the filled chunk cache), plus the daemon's RSS after
mounting, after the walk and after mounting a large synthetic image. Two real trees: many
small files (/usr/include) and a few large ones (the host's largest shared libraries). Figures print as a table
and go to benchmarks/results/read.{json,md}. Usage (root, /dev/fuse):

    python3 -m benchmarks.read_bench [--tree DIR] [--large-inodes N] [--drop-caches]

The plain directory is only cold with --drop-caches (which empties the whole host's page
cache); without it its "cold" figures are page-cache warm and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from benchmarks.common import markdown_table, tree_size, write_results
from rafs import layout
from rafs.records import BlobRecord, ChunkRecord
from rafs.tree import FsNode, new_directory
from rafs.writer import write_bootstrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NYDUSD = [sys.executable, "-m", "daemon.cli"]
READ_SIZE = 1 << 20


def default_tree() -> str:
    return "/usr/include" if os.path.isdir("/usr/include") else os.path.dirname(os.__file__)


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=REPO)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as knob:
        knob.write("3\n")


def walk(root: str) -> int:
    """lstat every entry (what `find`, `ls -lR` or a container's startup scan does)."""
    count = 0
    for directory, subdirectories, names in os.walk(root):
        for name in subdirectories + names:
            os.lstat(os.path.join(directory, name))
            count += 1
    return count


def read_all(root: str) -> int:
    """Read every regular file from start to end in 1 MiB reads; returns bytes read."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb", buffering=0) as file:
                while block := file.read(READ_SIZE):
                    total += len(block)
    return total


def timed(function: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS split into anonymous memory (the daemon's own) and file pages (the mmapped bootstrap)."""
    figures: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                figures[key] = int(value.split()[0])
    return figures


def shown(figures: dict[str, int]) -> str:
    return (
        f"{figures['VmRSS'] / 1024:.1f} MiB (anon {figures['RssAnon'] / 1024:.1f}, "
        f"file {figures['RssFile'] / 1024:.1f})"
    )


def wait_mounted(path: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"mount of {path} failed ({process.returncode})")
        if os.path.ismount(path):
            try:
                os.statvfs(path)
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise SystemExit(f"{path} did not mount")


@dataclass
class Nydusd:
    process: subprocess.Popen[bytes]
    mountpoint: str


@contextmanager
def nydusd(
    bootstrap: str, blob_dir: str, work_dir: str, mountpoint: str, env: dict[str, str] | None = None
) -> Iterator[Nydusd]:
    """A mounted nydusd over a localfs backend and a disk cache; `env` adds to its environment."""
    os.makedirs(mountpoint, exist_ok=True)
    config = os.path.join(os.path.dirname(mountpoint), "nydusd.json")
    with open(config, "w") as file:
        json.dump(
            {
                "device": {
                    "backend": {"type": "localfs", "config": {"dir": blob_dir}},
                    "cache": {"type": "blobcache", "config": {"work_dir": work_dir}},
                }
            },
            file,
        )
    process = subprocess.Popen(
        [*NYDUSD, "--bootstrap", bootstrap, "--mountpoint", mountpoint, "--config", config, "--log-level", "warn"],
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    try:
        wait_mounted(mountpoint, process)
        yield Nydusd(process, mountpoint)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)


@contextmanager
def squashfuse(image: str, mountpoint: str) -> Iterator[str]:
    os.makedirs(mountpoint, exist_ok=True)
    process = subprocess.Popen(["squashfuse", "-f", image, mountpoint])
    try:
        wait_mounted(mountpoint, process)
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", mountpoint], check=False, capture_output=True)
        process.wait(60)


def measure(root: str, cold: bool, warm_again: bool = True) -> dict[str, float]:
    """Walk then read everything (cold), then both again (warm)."""
    figures: dict[str, float] = {}
    seconds, entries = timed(lambda: walk(root))
    figures["walk_cold_s"], figures["entries"] = seconds, entries
    seconds, total = timed(lambda: read_all(root))
    figures["read_cold_s"], figures["read_cold_MBps"], figures["bytes"] = seconds, total / seconds / 1e6, total
    if warm_again:
        figures["walk_warm_s"] = timed(lambda: walk(root))[0]
        seconds, total = timed(lambda: read_all(root))
        figures["read_warm_s"], figures["read_warm_MBps"] = seconds, total / seconds / 1e6
    figures["cold_is_cold"] = float(cold)
    return figures


def large_bootstrap(path: str, inodes: int) -> int:
    """A bootstrap of `inodes` small files in 1000-file directories (contents never read)."""
    root = new_directory()
    blob = BlobRecord("ab" * 32, inodes * 4096, inodes * 4096, inodes, layout.COMPRESSOR_NONE)
    for number in range(inodes):
        directory = root.children.setdefault(f"d{number // 1000:05}".encode(), new_directory())
        chunk = ChunkRecord(0, 0, number * 4096, 4096, 4096, 0, bytes(32))
        directory.children[f"file{number:07}".encode()] = FsNode(mode=0o100644, size=4096, chunks=[chunk])
    data = write_bootstrap(root, [blob])
    with open(path, "wb") as file:
        file.write(data)
    return len(data)


def large_files_tree(root: str, count: int) -> str:
    """A second real tree: copies of the `count` largest shared libraries of the host."""
    libraries = "/usr/lib/x86_64-linux-gnu"
    candidates = [os.path.join(libraries, name) for name in os.listdir(libraries)]
    regular = [path for path in candidates if os.path.isfile(path) and not os.path.islink(path)]
    os.makedirs(root)
    for path in sorted(regular, key=os.path.getsize, reverse=True)[:count]:
        shutil.copy2(path, root)
    return root


def measure_tree(
    label: str, tree: str, work: str, cold: bool, results: dict[str, dict[str, float]], rss: dict[str, dict[str, int]]
) -> None:
    """Every target over one tree: the plain directory, squashfuse, nydusd (fresh, remounted)."""
    bootstrap, blob_dir = os.path.join(work, "image.boot"), os.path.join(work, "blobs")
    run([sys.executable, "-m", "builder.cli", "create", "-t", "directory", "-B", bootstrap, "-D", blob_dir, tree])
    squash_image = os.path.join(work, "tree.sqfs")
    run(["mksquashfs", tree, squash_image, "-comp", "zstd", "-quiet", "-no-progress"])
    if cold:
        drop_caches()
    results[f"{label}: plain directory"] = measure(tree, cold)
    if cold:
        drop_caches()
    with squashfuse(squash_image, os.path.join(work, "sqfs-mnt")) as mountpoint:
        results[f"{label}: squashfuse (zstd)"] = measure(mountpoint, True)
    cache_dir = os.path.join(work, "cache")
    if cold:
        drop_caches()
    with nydusd(bootstrap, blob_dir, cache_dir, os.path.join(work, "nydus-mnt")) as daemon:
        rss[f"{label}: after mount"] = rss_kib(daemon.process.pid)
        results[f"{label}: nydusd"] = measure(daemon.mountpoint, True)
        rss[f"{label}: after walking and reading"] = rss_kib(daemon.process.pid)
    with nydusd(bootstrap, blob_dir, cache_dir, os.path.join(work, "nydus-mnt")) as daemon:
        results[f"{label}: nydusd remounted over a filled chunk cache"] = measure(
            daemon.mountpoint, True, warm_again=False
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=default_tree(), help="many small files (default /usr/include)")
    parser.add_argument("--large-files", type=int, default=8, help="also a tree of the N largest host libraries")
    parser.add_argument("--large-inodes", type=int, default=200_000)
    parser.add_argument("--drop-caches", action="store_true", help="drop the host page cache before cold runs")
    arguments = parser.parse_args()
    tree = os.path.abspath(arguments.tree)
    files, total = tree_size(tree)
    print(f"tree {tree}: {files} files, {total / 2**20:.1f} MiB", file=sys.stderr)
    cold = arguments.drop_caches
    work = tempfile.mkdtemp(prefix="read-bench-")
    results: dict[str, dict[str, float]] = {}
    memory: dict[str, float] = {}
    rss: dict[str, dict[str, int]] = {}
    try:
        os.makedirs(os.path.join(work, "small"))
        measure_tree(os.path.basename(tree) or tree, tree, os.path.join(work, "small"), cold, results, rss)
        if arguments.large_files:
            big = large_files_tree(os.path.join(work, "big", "src"), arguments.large_files)
            big_files, big_total = tree_size(big)
            memory["large_files"], memory["large_files_bytes"] = big_files, big_total
            measure_tree(f"{big_files} large libraries", big, os.path.join(work, "big"), cold, results, rss)

        large = os.path.join(work, "large.boot")
        memory["large_inodes"] = arguments.large_inodes
        memory["large_bootstrap_bytes"] = large_bootstrap(large, arguments.large_inodes)
        empty_blobs = os.path.join(work, "empty-blobs")
        os.makedirs(empty_blobs)
        with nydusd(large, empty_blobs, os.path.join(work, "large-cache"), os.path.join(work, "large-mnt")) as daemon:
            rss["large image: after mount"] = rss_kib(daemon.process.pid)
            memory["large_walk_s"] = timed(lambda: walk(daemon.mountpoint))[0]
            rss["large image: after walking every inode"] = rss_kib(daemon.process.pid)
    finally:
        subprocess.run(["rm", "-rf", work], check=False)

    rows = []
    for name, figures in results.items():
        rows.append(
            [
                name + ("" if figures["cold_is_cold"] else " (page cache warm)"),
                f"{figures['entries'] / figures['walk_cold_s']:.0f}",
                f"{figures['entries'] / figures['walk_warm_s']:.0f}" if "walk_warm_s" in figures else "-",
                f"{figures['read_cold_MBps']:.0f}",
                f"{figures['read_warm_MBps']:.0f}" if "read_warm_MBps" in figures else "-",
            ]
        )
    table = markdown_table(
        ["target", "walk cold (entries/s)", "walk warm (entries/s)", "read cold (MB/s)", "read warm (MB/s)"], rows
    )
    large_label = f"large image ({int(memory['large_inodes'])} inodes, {memory['large_bootstrap_bytes'] / 2**20:.0f} MiB bootstrap)"
    table += "\n\n" + markdown_table(
        ["nydusd RSS", "VmRSS (anonymous, file pages)"],
        [[name.replace("large image", large_label, 1), shown(figures)] for name, figures in rss.items()],
    )
    print(table)
    path = write_results(
        "read",
        {"tree": tree, "files": files, "bytes": total, "results": results, "memory": memory, "rss_kib": rss},
        table,
    )
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
