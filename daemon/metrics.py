"""Counters the API reports (`/api/v1/metrics*`), with Nydus's field names and buckets.

Cheap on purpose: the FUSE side counts on the event loop (one thread, so plain integers and no
lock), a few list increments per request. `BackendMetrics` is the exception: backends run in
worker threads, so it takes a lock, once per range request (milliseconds each, so the lock is
noise). Nothing here imports trio or pyfuse3; `daemon.metered` hooks these into the FUSE
operations and `MeteredBackend` into a backend.

Buckets (Nydus's `utils/src/metrics.rs`): request sizes <1K, 1K, 4K, 16K, 64K, 128K, 512K,
1M+; FUSE latency <=200us, 1ms, 20ms, 50ms, 500ms, 1s, 2s, more; backend latency <=1ms, 20ms,
50ms, 100ms, 500ms, 1s, 2s, more.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from daemon.storage.backend import BackendError, BlobBackend

SIZE_BOUNDS = (1 << 10, 4 << 10, 16 << 10, 64 << 10, 128 << 10, 512 << 10, 1 << 20)
FOP_LATENCY_BOUNDS_US = (200, 1_000, 20_000, 50_000, 500_000, 1_000_000, 2_000_000)
BACKEND_LATENCY_BOUNDS_MS = (1, 20, 50, 100, 500, 1_000, 2_000)
BUCKETS = 8


def size_bucket(nbytes: int) -> int:
    """Index of `nbytes` in the request-size histogram (<1K ... 1M+)."""
    return bisect.bisect_right(SIZE_BOUNDS, nbytes)


def fop_latency_bucket(latency_us: int) -> int:
    return bisect.bisect_left(FOP_LATENCY_BOUNDS_US, latency_us)


def backend_latency_bucket(latency_ms: int) -> int:
    return bisect.bisect_left(BACKEND_LATENCY_BOUNDS_MS, latency_ms)


class Fop(enum.IntEnum):
    """FUSE operations, in the order of Nydus's `StatsFop` (the index into every fop array)."""

    GETATTR = 0
    READLINK = 1
    OPEN = 2
    RELEASE = 3
    READ = 4
    STATFS = 5
    GETXATTR = 6
    LISTXATTR = 7
    OPENDIR = 8
    LOOKUP = 9
    READDIR = 10
    READDIRPLUS = 11
    ACCESS = 12
    FORGET = 13
    BATCH_FORGET = 14


# The kernel's FUSE opcodes (linux/fuse.h), reported by `/metrics/inflight` as Nydus does.
OPCODES = {
    Fop.LOOKUP: 1,
    Fop.FORGET: 2,
    Fop.GETATTR: 3,
    Fop.READLINK: 5,
    Fop.OPEN: 14,
    Fop.READ: 15,
    Fop.STATFS: 17,
    Fop.RELEASE: 18,
    Fop.GETXATTR: 22,
    Fop.LISTXATTR: 23,
    Fop.OPENDIR: 27,
    Fop.READDIR: 28,
    Fop.ACCESS: 34,
    Fop.BATCH_FORGET: 42,
    Fop.READDIRPLUS: 44,
}


def _zeros() -> list[int]:
    return [0] * len(Fop)


@dataclass
class FileMetrics:
    """One file's counters (`/metrics/files`), kept only with `iostats_files`."""

    nr_open: int = 0
    total_fops: int = 0
    data_read: int = 0
    block_count_read: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    fop_hits: list[int] = field(default_factory=_zeros)
    fop_errors: list[int] = field(default_factory=_zeros)


@dataclass
class AccessRecord:
    """First access of an inode (`/metrics/pattern`), kept only with `access_pattern`."""

    ino: int
    nr_read: int = 0
    first_access_time_secs: int = 0
    first_access_time_nanos: int = 0


class FsMetrics:
    """One mount's FUSE counters. Called from the event loop only."""

    def __init__(self, id: str, *, files: bool = False, access_pattern: bool = False, latest_read_files: bool = False):
        self.id = id
        self.files_enabled = files
        self.access_pattern_enabled = access_pattern
        self.latest_read_files_enabled = latest_read_files
        self.nr_opens = 0
        self.data_read = 0
        self.block_count_read = [0] * BUCKETS
        self.fop_hits = _zeros()
        self.fop_errors = _zeros()
        self.fop_cumulative_latency_total = _zeros()  # microseconds
        self.read_latency_dist = [0] * BUCKETS
        self.files: dict[int, FileMetrics] = {}
        self.pattern: dict[int, AccessRecord] = {}
        self.latest: set[int] = set()

    def done(self, fop: Fop, ino: int, latency_ns: int) -> None:
        """A successful operation other than read."""
        self.fop_hits[fop] += 1
        self.fop_cumulative_latency_total[fop] += latency_ns // 1000
        if fop == Fop.OPEN:
            self.nr_opens += 1
        elif fop == Fop.RELEASE:
            self.nr_opens -= 1
        if self.files_enabled and (fop == Fop.OPEN or ino in self.files):
            per_file = self.files.get(ino)
            if per_file is None:
                per_file = self.files[ino] = FileMetrics()
            per_file.fop_hits[fop] += 1
            per_file.total_fops += 1
            per_file.nr_open += 1 if fop == Fop.OPEN else -1 if fop == Fop.RELEASE else 0

    def failed(self, fop: Fop, ino: int, latency_ns: int) -> None:
        self.fop_errors[fop] += 1
        self.fop_cumulative_latency_total[fop] += latency_ns // 1000
        if self.files_enabled and ino in self.files:
            self.files[ino].fop_errors[fop] += 1

    def read(self, ino: int, nbytes: int, latency_ns: int) -> None:
        """A successful read of `nbytes`."""
        latency_us = latency_ns // 1000
        bucket = size_bucket(nbytes)
        self.fop_hits[Fop.READ] += 1
        self.fop_cumulative_latency_total[Fop.READ] += latency_us
        self.read_latency_dist[fop_latency_bucket(latency_us)] += 1
        self.data_read += nbytes
        self.block_count_read[bucket] += 1
        if self.files_enabled:
            per_file = self.files.get(ino)
            if per_file is None:
                per_file = self.files[ino] = FileMetrics()
            per_file.fop_hits[Fop.READ] += 1
            per_file.total_fops += 1
            per_file.data_read += nbytes
            per_file.block_count_read[bucket] += 1
        if self.latest_read_files_enabled:
            self.latest.add(ino)
        if self.access_pattern_enabled:
            record = self.pattern.get(ino)
            if record is None:
                now_ns = time.time_ns()
                record = self.pattern[ino] = AccessRecord(ino, 0, now_ns // 10**9, now_ns % 10**9)
            record.nr_read += 1

    # -- what the API reports ---------------------------------------------------------------------

    def report(self) -> dict[str, object]:
        return {
            "files_account_enabled": self.files_enabled,
            "access_pattern_enabled": self.access_pattern_enabled,
            "measure_latency": True,
            "id": self.id,
            "data_read": self.data_read,
            "block_count_read": list(self.block_count_read),
            "fop_hits": list(self.fop_hits),
            "fop_errors": list(self.fop_errors),
            "fop_cumulative_latency_total": list(self.fop_cumulative_latency_total),
            "read_latency_dist": list(self.read_latency_dist),
            "nr_opens": self.nr_opens,
        }

    def files_report(self) -> dict[str, dict[str, object]]:
        """Per inode (as a string key, JSON's only kind) its counters."""
        return {
            str(ino): {
                "nr_open": m.nr_open,
                "total_fops": m.total_fops,
                "data_read": m.data_read,
                "block_count_read": list(m.block_count_read),
                "fop_hits": list(m.fop_hits),
                "fop_errors": list(m.fop_errors),
            }
            for ino, m in sorted(self.files.items())
        }

    def take_latest(self) -> list[int]:
        """Inodes read since the previous call (Nydus's `latest=true`), and forget them."""
        latest, self.latest = sorted(self.latest), set()
        return latest

    def pattern_report(self) -> list[dict[str, int]]:
        records = sorted(self.pattern.values(), key=lambda r: (r.first_access_time_secs, r.first_access_time_nanos))
        return [
            {
                "ino": r.ino,
                "nr_read": r.nr_read,
                "first_access_time_secs": r.first_access_time_secs,
                "first_access_time_nanos": r.first_access_time_nanos,
            }
            for r in records
        ]


class BackendMetrics:
    """One mount's backend counters; updated from worker threads, under a lock."""

    def __init__(self, backend_type: str) -> None:
        self.backend_type = backend_type
        self._lock = threading.Lock()
        self.read_count = 0
        self.read_errors = 0
        self.read_amount_total = 0
        self.read_cumulative_latency_millis_total = 0
        self.read_cumulative_latency_millis_dist = [0] * BUCKETS  # per request-size bucket
        self.read_count_block_size_dist = [0] * BUCKETS
        self.read_latency_sizes_dist = [[0] * BUCKETS for _ in range(BUCKETS)]  # [size][latency]

    def record(self, nbytes: int, latency_ms: int, ok: bool) -> None:
        size = size_bucket(nbytes)
        with self._lock:
            self.read_count += 1
            if not ok:
                self.read_errors += 1
                return
            self.read_amount_total += nbytes
            self.read_cumulative_latency_millis_total += latency_ms
            self.read_cumulative_latency_millis_dist[size] += latency_ms
            self.read_count_block_size_dist[size] += 1
            self.read_latency_sizes_dist[size][backend_latency_bucket(latency_ms)] += 1

    def report(self) -> dict[str, object]:
        with self._lock:
            return {
                "backend_type": self.backend_type,
                "read_count": self.read_count,
                "read_errors": self.read_errors,
                "read_amount_total": self.read_amount_total,
                "read_cumulative_latency_millis_total": self.read_cumulative_latency_millis_total,
                "read_cumulative_latency_millis_dist": list(self.read_cumulative_latency_millis_dist),
                "read_count_block_size_dist": list(self.read_count_block_size_dist),
                "read_latency_sizes_dist": [list(row) for row in self.read_latency_sizes_dist],
            }


class MeteredBackend:
    """A `BlobBackend` that counts every range read of the one it wraps (`/metrics/backend`).

    A wrapper rather than a hook in each backend: the backends stay unaware of metrics, and a
    read that the backend retried internally counts once, as the reader saw it.
    """

    def __init__(self, inner: BlobBackend, metrics: BackendMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        started = time.monotonic_ns()
        try:
            data = self.inner.read_range(blob_id, offset, length)
        except BackendError:
            self.metrics.record(length, (time.monotonic_ns() - started) // 10**6, ok=False)
            raise
        self.metrics.record(len(data), (time.monotonic_ns() - started) // 10**6, ok=True)
        return data

    def blob_size(self, blob_id: str) -> int:
        return self.inner.blob_size(blob_id)

    def close(self) -> None:
        self.inner.close()


class Inflight:
    """FUSE requests being answered, for hung-I/O detection (`/metrics/inflight`). Event loop only."""

    def __init__(self) -> None:
        self._requests: dict[int, tuple[int, int, float]] = {}  # unique -> (inode, opcode, started)
        self._unique = itertools.count(1)

    def begin(self, ino: int, fop: Fop) -> int:
        unique = next(self._unique)
        self._requests[unique] = (ino, OPCODES[fop], time.time())
        return unique

    def end(self, unique: int) -> None:
        self._requests.pop(unique, None)

    def report(self) -> list[dict[str, int]]:
        return [
            {"inode": ino, "opcode": opcode, "unique": unique, "timestamp_secs": int(started)}
            for unique, (ino, opcode, started) in sorted(self._requests.items())
        ]


class ErrorEvents(logging.Handler):
    """The last error log lines (`/api/v1/daemon/events`), bounded in count and bytes as Nydus's
    `ErrorHolder` (500 lines, 50 KiB); the oldest go first."""

    def __init__(self, max_errors: int = 500, max_size: int = 50 << 10) -> None:
        super().__init__(logging.ERROR)
        self.max_errors = max_errors
        self.max_size = max_size
        self.total_errors = 0
        self._errors: deque[str] = deque()
        self._size = 0
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)[: self.max_size]
        except Exception:
            self.handleError(record)
            return
        with self.lock or threading.Lock():
            self.total_errors += 1
            self._errors.append(line)
            self._size += len(line)
            while len(self._errors) > self.max_errors or self._size > self.max_size:
                self._size -= len(self._errors.popleft())

    def report(self) -> dict[str, object]:
        with self.lock or threading.Lock():
            return {
                "max_errors": self.max_errors,
                "total_errors": self.total_errors,
                "max_size": self.max_size,
                "total_size": self._size,
                "errors": list(self._errors),
            }
