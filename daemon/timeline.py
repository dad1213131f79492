"""`Timeline`: what one daemon run did and when, for `nydusd --timeline-out FILE`.

A benchmarking aid: the cold-start harness draws bytes fetched over time against the time FUSE
reads spent waiting for fetches, and reads the phases (mounted, first read) and each FUSE read
(inode, offset, size) from it. Recording
is a list append per range request and per blocked read, done only when the flag is given.
Times are wall-clock seconds (`time.time()`), so they line up with the harness's own clock.
Written once, when the daemon unmounts.
"""

from __future__ import annotations

import json
import os
import time

from rafs.outputs import atomic_file


class Timeline:
    """Range requests, blocked reads and phase marks of one daemon run."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.mounted_at: float | None = None
        self.first_read_at: float | None = None
        self.fuse_reads = 0
        self.fuse_read_bytes = 0
        self.max_in_flight = 0
        self.requests: list[dict[str, object]] = []
        self.blocked: list[dict[str, float]] = []
        self.reads: list[tuple[float, int, int, int]] = []  # (when, inode, offset, size) of each FUSE read

    def mounted(self) -> None:
        self.mounted_at = time.time()

    def read_done(self, ino: int, offset: int, nbytes: int) -> None:
        now = time.time()
        if self.first_read_at is None:
            self.first_read_at = now
        self.fuse_reads += 1
        self.fuse_read_bytes += nbytes
        self.reads.append((now, ino, offset, nbytes))

    def request_done(self, start: float, nbytes: int, priority: str, ok: bool, in_flight: int) -> None:
        self.requests.append({"start": start, "end": time.time(), "bytes": nbytes, "priority": priority, "ok": ok})
        self.max_in_flight = max(self.max_in_flight, in_flight)

    def blocked_read(self, start: float) -> None:
        self.blocked.append({"start": start, "end": time.time()})

    def write(self, path: str) -> None:
        """The JSON file, whole or absent (`rafs.outputs.atomic_file`)."""
        record = {
            "clock": "unix",
            "started_at": self.started_at,
            "mounted_at": self.mounted_at,
            "first_read_at": self.first_read_at,
            "fuse_reads": self.fuse_reads,
            "fuse_read_bytes": self.fuse_read_bytes,
            "requests": self.requests,
            "blocked": self.blocked,
            "max_in_flight": self.max_in_flight,
            "reads": self.reads,
            "cpu_s": sum(os.times()[:2]),  # this process's user + system time: the daemon's cost to the host
        }
        with atomic_file(path) as file:
            file.write(json.dumps(record).encode())
