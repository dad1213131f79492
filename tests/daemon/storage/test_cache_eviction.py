"""The disk cache's size bound: least recently used blobs go first; `nydusctl cache` reports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from daemon.storage.cache import INDEX_SUFFIX, ChunkKey, DiskChunkCache, blob_usage
from tests.daemon.nydusd import REPO

CHUNK = 64 * 1024
DIGEST = b"\x07" * 32
BLOBS = ["a" * 64, "b" * 64, "c" * 64]


def fill(cache: DiskChunkCache, blob_id: str, count: int) -> None:
    for index in range(count):
        cache.put(ChunkKey(blob_id, index * CHUNK), DIGEST, bytes([index + 1]) * CHUNK)


def age(work_dir: Path, blob_id: str, seconds_ago: float) -> None:
    when = os.path.getmtime(work_dir / (blob_id + INDEX_SUFFIX)) - seconds_ago
    os.utime(work_dir / (blob_id + INDEX_SUFFIX), (when, when))


def test_least_recently_used_blobs_are_evicted_first(tmp_path: Path) -> None:
    unbounded = DiskChunkCache(str(tmp_path))
    for blob_id in BLOBS:
        fill(unbounded, blob_id, 4)
    unbounded.close()
    age(tmp_path, BLOBS[0], 300)  # a: oldest, c: newest
    age(tmp_path, BLOBS[1], 200)
    age(tmp_path, BLOBS[2], 100)
    assert {usage.blob_id: usage.chunks for usage in blob_usage(str(tmp_path))} == dict.fromkeys(BLOBS, 4)

    cache = DiskChunkCache(str(tmp_path), size_limit=14 * CHUNK)
    assert cache.read(ChunkKey(BLOBS[0], 0), DIGEST, 0, CHUNK) == bytes([1]) * CHUNK  # a is used again: now the newest
    fill(cache, "d" * 64, 3)  # 15 chunks > 14: evict down to 90 % (12.6): b, the least recently used, goes
    remaining = {usage.blob_id for usage in blob_usage(str(tmp_path))}
    assert remaining == {BLOBS[0], BLOBS[2], "d" * 64}
    assert sum(usage.disk_bytes for usage in blob_usage(str(tmp_path))) <= 14 * CHUNK
    assert cache.read(ChunkKey(BLOBS[1], 0), DIGEST, 0, CHUNK) is None
    cache.put(ChunkKey(BLOBS[1], 0), DIGEST, b"x" * CHUNK)  # an evicted blob starts afresh
    assert cache.read(ChunkKey(BLOBS[1], 0), DIGEST, 0, CHUNK) == b"x" * CHUNK
    cache.close()


def test_a_blob_in_use_by_this_daemon_is_evicted_safely(tmp_path: Path) -> None:
    cache = DiskChunkCache(str(tmp_path), size_limit=6 * CHUNK)
    fill(cache, BLOBS[0], 4)
    other = DiskChunkCache(str(tmp_path))  # a second daemon sharing the directory
    assert other.read(ChunkKey(BLOBS[0], CHUNK), DIGEST, 0, CHUNK) == bytes([2]) * CHUNK
    age(tmp_path, BLOBS[0], 100)
    fill(cache, BLOBS[1], 4)  # over the limit: a (older) is evicted while both daemons have it open
    assert not (tmp_path / (BLOBS[0] + INDEX_SUFFIX)).exists()
    assert cache.read(ChunkKey(BLOBS[0], 0), DIGEST, 0, CHUNK) is None
    assert other.read(ChunkKey(BLOBS[0], CHUNK), DIGEST, 0, CHUNK) == bytes([2]) * CHUNK  # its own copy stays correct
    cache.close()
    other.close()


def test_nydusctl_cache_reports_blobs_chunks_bytes_and_last_use(tmp_path: Path) -> None:
    cache = DiskChunkCache(str(tmp_path))
    fill(cache, BLOBS[0], 3)
    fill(cache, BLOBS[1], 1)
    cache.close()
    (tmp_path / "bootstraps").mkdir()
    (tmp_path / "bootstraps" / ("sha256-" + "e" * 64 + ".boot")).write_bytes(b"x")
    command = [sys.executable, "-m", "daemon.ctl", "cache", "--work-dir", str(tmp_path)]
    completed = subprocess.run([*command, "--json"], capture_output=True, text=True, cwd=REPO, check=True)
    report = json.loads(completed.stdout)
    assert [(blob["blob_id"], blob["chunks"]) for blob in sorted(report["blobs"], key=lambda b: b["blob_id"])] == [
        (BLOBS[0], 3),
        (BLOBS[1], 1),
    ]
    assert report["total_chunks"] == 4 and report["total_disk_bytes"] >= 4 * CHUNK
    assert all(blob["last_use"] > 0 for blob in report["blobs"])
    assert report["bootstraps"] == ["sha256:" + "e" * 64]
    table = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "2 blobs, 4 chunks" in table and BLOBS[0] in table


def test_nydusctl_cache_of_a_missing_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-cache"
    completed = subprocess.run(
        [sys.executable, "-m", "daemon.ctl", "cache", "--work-dir", str(missing)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.strip().splitlines() == [f"nydusctl: {missing}: not a directory"]
