"""`containerd-nydus-grpc`: nydus-snapshotter's command line, serving containerd's snapshot API.

    containerd-nydus-grpc [--config FILE.toml] [--address SOCK] [--root DIR] [--nydusd-config FILE.json]
                          [--nydusd PATH] [--daemon-mode dedicated|shared] [--log-level LEVEL]

Foreground. SIGTERM or SIGINT stop serving; the nydusd daemons go on running (so do the
containers on them) and are found again at the next start, unless `cleanup_on_close = true`.
A config error is one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from urllib.parse import quote

from daemon.ctl import ApiFailure, DaemonUnreachable
from daemon.snapshotter.config import LOG_LEVELS, SnapshotterConfig, load_config
from daemon.snapshotter.metrics import ImageFigures, MetricsServer, OperationTimes, render
from daemon.snapshotter.service import SnapshotsService, serve
from daemon.snapshotter.snapshotter import Snapshotter
from daemon.storage.cache import blob_usage
from rafs.errors import NydusError

log = logging.getLogger("containerd-nydus-grpc")


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="containerd-nydus-grpc", description=__doc__.split("\n")[0])
    result.add_argument("--config", metavar="FILE.toml", help="nydus-snapshotter's TOML config")
    result.add_argument("--address", metavar="SOCK", help="the gRPC unix socket containerd's proxy plugin names")
    result.add_argument("--root", metavar="DIR", help="where snapshots, metadata and daemon state live")
    result.add_argument("--nydusd-config", metavar="FILE.json", help="nydusd config template")
    result.add_argument("--nydusd", dest="nydusd_path", metavar="PATH", help="the nydusd to start")
    result.add_argument("--daemon-mode", choices=("dedicated", "shared"), help="one nydusd per image, or one for all")
    result.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    return result


def setup_logging(level: str) -> None:
    python_level = {"trace": logging.DEBUG, "warn": logging.WARNING}.get(level, getattr(logging, level.upper()))
    logging.basicConfig(level=python_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def image_figures(snapshotter: Snapshotter) -> list[ImageFigures]:
    """Each served image's counters, asked from its daemon now."""
    result = []
    for image in snapshotter.store.images():
        record = snapshotter.store.daemon(image.daemon_id)
        if record is None:
            continue
        mount_id = "/" if record.mode == "dedicated" else f"/{image.snapshot_id}"
        client = snapshotter.daemons.client(record)
        answers: list[object] = []
        for path in (f"/api/v1/metrics?id={quote(mount_id)}", f"/api/v1/metrics/blobcache?id={quote(mount_id)}",
                     "/api/v1/metrics/inflight"):  # fmt: skip
            try:
                answers.append(client.get(path))
            except (DaemonUnreachable, ApiFailure) as error:
                log.debug("metrics: %s %s: %s", record.daemon_id, path, error)
                answers.append(None)
        fs, cache, inflight = answers
        result.append(ImageFigures(
            image.image_ref, record.daemon_id, fs if isinstance(fs, dict) else {},
            cache if isinstance(cache, dict) else {}, inflight if isinstance(inflight, list) else [],
        ))  # fmt: skip
    return result


def run(config: SnapshotterConfig) -> int:
    os.makedirs(os.path.dirname(config.address), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config.address)  # a socket left by a previous run
    snapshotter = Snapshotter(config)
    times = OperationTimes()
    server = serve(SnapshotsService(snapshotter, times), config.address)
    metrics = None
    if config.metrics_address:

        def render_all() -> str:
            cache_bytes = sum(usage.disk_bytes for usage in blob_usage(config.cache_work_dir))
            return render(times, snapshotter.daemons.events.snapshot(), image_figures(snapshotter), cache_bytes,
                          time.time())  # fmt: skip

        metrics = MetricsServer(config.metrics_address, render_all)
        metrics.start()
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving containerd's snapshot API on %s (root %s, %s daemons, nydusd %s)", config.address,
             config.root, config.daemon_mode, config.nydusd_path)  # fmt: skip
    stopping.wait()
    log.info("stopping")
    server.stop(grace=5).wait()
    if metrics is not None:
        metrics.stop()
    snapshotter.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config.address)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {key: getattr(args, key) for key in ("address", "root", "nydusd_config", "nydusd_path", "daemon_mode",
                                                       "log_level")}  # fmt: skip
    try:
        config = load_config(args.config, overrides)
    except NydusError as error:
        print(f"containerd-nydus-grpc: {error}", file=sys.stderr)
        return error.exit_code
    setup_logging(config.log_level)
    try:
        return run(config)
    except NydusError as error:
        log.error("%s", error)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
