"""nydusd's `--timeline-out` file, summarised for one measured start.

nydusd writes it when it unmounts: wall-clock (`time.time()`) moments of its start, its mount
and its first FUSE read, how many bytes the workload read through FUSE, every backend request
(start, end, bytes, priority), every interval a FUSE read waited for fetched data, and the
CPU seconds the daemon used. The
harness turns that into seconds from the start of the run, so it lines up with the shaper's
series, and into the figures the report shows: time blocked in on-demand misses (the union of
the waits, and their sum), requests by priority, bytes the workload read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import cast

from benchmarks.report import DaemonRecord

PRIORITIES = ("demand", "readahead", "prefetch")


class TimelineError(RuntimeError):
    """The timeline file is missing or not what nydusd promises to write."""


def read_timeline(path: Path) -> dict[str, object]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise TimelineError(f"nydusd wrote no timeline ({path})") from error
    except ValueError as error:
        raise TimelineError(f"{path}: not JSON: {error}") from error
    if not isinstance(document, dict) or document.get("clock") != "unix":
        raise TimelineError(f"{path}: not a nydusd timeline with unix clock")
    return cast(dict[str, object], document)


def union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The intervals merged where they overlap or touch, in order."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _number(document: Mapping[str, object], key: str) -> float:
    value = document.get(key)
    if not isinstance(value, int | float):
        raise TimelineError(f"timeline: {key} is {value!r}, not a number")
    return float(value)


def _records(document: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TimelineError(f"timeline: {key} is not a list of objects")
    return cast(list[Mapping[str, object]], value)


def summarise(document: Mapping[str, object], origin: float) -> DaemonRecord:
    """The figures of one start; every moment as seconds after `origin` (the run's start)."""
    first_read = document.get("first_read_at")
    blocked = [
        (_number(wait, "start") - origin, _number(wait, "end") - origin) for wait in _records(document, "blocked")
    ]
    spans = union(blocked)
    requests = _records(document, "requests")
    by_priority = {priority: 0 for priority in PRIORITIES}
    bytes_by_priority = {priority: 0 for priority in PRIORITIES}
    failed = 0
    for request in requests:
        priority = str(request.get("priority", "?"))
        by_priority[priority] = by_priority.get(priority, 0) + 1
        bytes_by_priority[priority] = bytes_by_priority.get(priority, 0) + int(_number(request, "bytes"))
        failed += request.get("ok") is not True
    return {
        "started_s": round(_number(document, "started_at") - origin, 4),
        "mounted_s": round(_number(document, "mounted_at") - origin, 4),
        "first_read_s": None if first_read is None else round(_number(document, "first_read_at") - origin, 4),
        "fuse_reads": int(_number(document, "fuse_reads")),
        "fuse_read_bytes": int(_number(document, "fuse_read_bytes")),
        "requests": len(requests),
        "failed_requests": failed,
        "requests_by_priority": by_priority,
        "bytes_by_priority": bytes_by_priority,
        "max_in_flight": int(_number(document, "max_in_flight")),
        "blocked_s": round(sum(end - start for start, end in spans), 4),
        "blocked_read_s": round(sum(end - start for start, end in blocked), 4),
        "blocked_spans": [[round(start, 4), round(end, 4)] for start, end in spans],
        "cpu_s": None if document.get("cpu_s") is None else round(_number(document, "cpu_s"), 3),
    }
