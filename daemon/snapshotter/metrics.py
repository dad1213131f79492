"""The Prometheus endpoint (`[metrics] address`, `GET /v1/metrics`) with nydus-snapshotter's names.

The snapshotter's own figures (operation times, daemon events, cache usage) are kept here; the
daemons' are asked from their API sockets on each scrape (nydus-snapshotter polls every minute;
a scrape is rare enough to ask at once, and the figures are then never stale). Only names whose
meaning this project has are exported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

# nydus-snapshotter's buckets for operation times, in milliseconds
DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 50, 100, 150, 200, 250, 300, 350, 400, 600, 1000)
READ_OPERATION = 4  # index of `read` in nydusd's per-operation arrays
HUNG_IO_S = 10.0  # a FUSE request in flight this long counts as hung (nydus-snapshotter's hung_io_interval)

# nydusd_cache_<name>: the blobcache field it comes from
CACHE_FIELDS = (
    ("partial_hits", "partial_hits"),
    ("whole_hits", "whole_hits"),
    ("total_requests", "total"),
    ("entries_count", "entries_count"),
    ("prefetch_data_bytes", "prefetch_data_amount"),
    ("prefetch_requests_count", "prefetch_requests_count"),
    ("prefetch_workers", "prefetch_workers"),
    ("prefetch_unmerged_chunks", "prefetch_unmerged_chunks"),
    ("prefetch_cumulative_time_millis", "prefetch_cumulative_time_millis"),
    ("buffered_backend_size", "buffered_backend_size"),
)


@dataclass
class OperationTimes:
    """A histogram of snapshot operation times per operation (PREPARE, MOUNTS, REMOVE, ...)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    buckets: dict[str, list[int]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def observe(self, operation: str, elapsed_ms: float) -> None:
        with self.lock:
            counts = self.buckets.setdefault(operation, [0] * len(DURATION_BUCKETS_MS))
            for index, bound in enumerate(DURATION_BUCKETS_MS):
                if elapsed_ms <= bound:
                    counts[index] += 1
            self.sums[operation] = self.sums.get(operation, 0.0) + elapsed_ms
            self.counts[operation] = self.counts.get(operation, 0) + 1

    def render(self, out: list[str]) -> None:
        name = "snapshotter_snapshot_operation_elapsed_milliseconds"
        out += [f"# HELP {name} The elapsed time for snapshot events.", f"# TYPE {name} histogram"]
        with self.lock:
            for operation in sorted(self.counts):
                label = f'snapshot_operation="{operation}"'
                for bound, count in zip(DURATION_BUCKETS_MS, self.buckets[operation], strict=True):
                    out.append(f'{name}_bucket{{{label},le="{bound}"}} {count}')
                out.append(f'{name}_bucket{{{label},le="+Inf"}} {self.counts[operation]}')
                out.append(f"{name}_sum{{{label}}} {self.sums[operation]:.3f}")
                out.append(f"{name}_count{{{label}}} {self.counts[operation]}")


@dataclass(frozen=True)
class ImageFigures:
    """What one image's daemon reported (any part may be missing if it did not answer)."""

    image_ref: str
    daemon_id: str
    fs: dict[str, object]
    cache: dict[str, object]
    inflight: list[object]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _index(values: object, index: int) -> float:
    return _number(values[index]) if isinstance(values, list) and len(values) > index else 0.0


def render(
    times: OperationTimes, events: dict[str, int], images: Iterable[ImageFigures], cache_bytes: int, now_s: float
) -> str:
    """The Prometheus text exposition of everything."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        out.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"))
        for labels, value in samples:
            out.append(f"{name}{{{labels}}} {value:g}" if labels else f"{name} {value:g}")

    figures = list(images)

    def per_image(pick: Callable[[ImageFigures], float]) -> list[tuple[str, float]]:
        return [(f'image_ref="{_escape(f.image_ref)}"', pick(f)) for f in figures]

    family("nydusd_total_read_bytes", "gauge", "Total bytes read against the nydus filesystem",
           per_image(lambda f: _number(f.fs.get("data_read"))))  # fmt: skip
    family("nydusd_read_hits", "gauge", "Total number of successful read operations.",
           per_image(lambda f: _index(f.fs.get("fop_hits"), READ_OPERATION)))  # fmt: skip
    family("nydusd_read_errors", "gauge", "Total number of failed read operations.",
           per_image(lambda f: _index(f.fs.get("fop_errors"), READ_OPERATION)))  # fmt: skip

    def hung(f: ImageFigures) -> float:
        return float(
            sum(1 for r in f.inflight if isinstance(r, dict) and now_s - _number(r.get("timestamp_secs")) > HUNG_IO_S)
        )

    family("nydusd_hung_io_counts", "gauge", "Total number of hung IOs.", per_image(hung))
    for name, key in CACHE_FIELDS:
        family(f"nydusd_cache_{name}", "gauge", f"blobcache {key} of the image.",
               per_image(lambda f, key=key: _number(f.cache.get(key))))  # type: ignore[misc]  # fmt: skip
    family("nydusd_image_info", "gauge", "Mapping of nydus daemon to served image references.",
           [(f'daemon_id="{_escape(f.daemon_id)}",image_ref="{_escape(f.image_ref)}"', 1.0) for f in figures])  # fmt: skip
    family("nydusd_lifetime_event_counts", "counter", "The lifetime events of nydus daemon.",
           [(f'nydusd_event="{event}"', float(count)) for event, count in sorted(events.items())])  # fmt: skip
    family("snapshotter_cache_usage_kilobytes", "gauge", "Disk usage of the chunk cache.", [("", cache_bytes / 1024)])
    times.render(out)
    return "\n".join(out) + "\n"


class MetricsServer:
    """Serves `render_all()` at `GET /v1/metrics` (and `/metrics`) on `host:port` in a thread."""

    def __init__(self, address: str, render_all: Callable[[], str]) -> None:
        host, _, port = address.rpartition(":")
        outer = render_all

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/v1/metrics", "/metrics"):
                    self.send_error(404)
                    return
                try:
                    data = outer().encode()
                except Exception:
                    log.exception("metrics: rendering failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self.thread.start()
        log.info("metrics at http://%s/v1/metrics", self.address)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
