"""`nydusd`: mount a bootstrap over FUSE in the foreground.

The one edge where errors become a message and an exit code: a `NydusError` prints one line
and exits with the class's `exit_code`; SIGINT/SIGTERM unmount and exit 0.

Every container start pays for this process's start, so it imports only what serving needs,
and late: `requests` only for a remote backend, the FUSE side (trio, pyfuse3) after the
arguments are read, while `--image`'s manifest and bootstrap are fetched in a thread.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

from daemon.config import DaemonConfig, default_config, image_config, load_config, read_config_file
from daemon.storage.backend import BlobBackend
from rafs.errors import ConfigError, NydusError
from rafs.oci import ImageReference
from rafs.pathlist import read_path_list

if TYPE_CHECKING:
    from daemon.serve import ServeOptions

LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="nydusd", description="Mount a RAFS bootstrap over FUSE.")
    source = result.add_mutually_exclusive_group(required=True)
    source.add_argument("--bootstrap", help="bootstrap file of the image")
    source.add_argument("--image", metavar="REF", help="host[:port]/repo[:tag|@digest] of a converted image")
    result.add_argument("--mountpoint", required=True, help="directory to mount on")
    result.add_argument("--config", help="nydusd JSON config; default: localfs backend in the bootstrap's directory")
    result.add_argument("--plain-http", action="store_true", help="--image: plain HTTP (default only for loopback)")
    result.add_argument("--prefetch-files", metavar="FILE", help="paths (one a line) to prefetch after mounting")
    result.add_argument("--trace-out", metavar="FILE", help="write each file's path in first-access order")
    result.add_argument(
        "--timeline-out", metavar="FILE", help="at unmount, write range requests and blocked reads as JSON (benchmarks)"
    )
    result.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS))
    result.add_argument("--no-allow-other", action="store_true", help="only the mounting user may access the mount")
    return result


def default_work_dir() -> str:
    """Where `--image` keeps bootstraps and chunks when the config names no blobcache."""
    if os.geteuid() == 0:
        return "/var/lib/nydus-py/cache"
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nydus-py")


def fetch_image(args: argparse.Namespace) -> tuple[str, DaemonConfig, BlobBackend]:
    """For `--image`: the bootstrap fetched (or reused) from the registry, the config, the backend."""
    from daemon.storage.backends import open_registry_backend
    from daemon.storage.image import fetch_bootstrap  # imports `requests`: only when an image is fetched
    from daemon.storage.options import RegistryConfig

    ref = ImageReference.parse(args.image)
    data = read_config_file(args.config) if args.config else None
    config = image_config(data, ref, plain_http=args.plain_http, work_dir=default_work_dir())
    assert isinstance(config.backend, RegistryConfig)  # image_config makes one
    backend = open_registry_backend(config.backend)
    try:
        bootstrap = fetch_bootstrap(backend.client, ref, config.cache.work_dir)
    except BaseException:
        backend.close()
        raise
    return bootstrap, config, backend


class ImageFetch(threading.Thread):
    """`fetch_image` in a thread, so the registry round trips overlap the import of the FUSE side.

    Joined before the event loop starts: it is the daemon's only thread outside trio's.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(name="image-fetch", daemon=True)
        self.args = args
        self.result: tuple[str, DaemonConfig, BlobBackend] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = fetch_image(self.args)
        except BaseException as error:  # handed to the main thread by `wait`
            self.error = error

    def wait(self) -> tuple[str, DaemonConfig, BlobBackend]:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def process_started_at() -> float:
    """When this process was started (wall clock, to the kernel's 10 ms tick), for the timeline."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return time.time()
    age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age_s


def serve_options(args: argparse.Namespace, bootstrap: str, config: DaemonConfig) -> ServeOptions:
    from daemon.serve import ServeOptions

    return ServeOptions(
        bootstrap,
        args.mountpoint,
        config,
        allow_other=not args.no_allow_other,
        prefetch_files=read_path_list(args.prefetch_files) if args.prefetch_files is not None else None,
        trace_out=args.trace_out,
        timeline_out=args.timeline_out,
        started_at=process_started_at(),
    )


def check_output_paths(args: argparse.Namespace) -> None:
    """Refuse an output file whose directory is missing before mounting, not at unmount."""
    for flag, path in (("--trace-out", args.trace_out), ("--timeline-out", args.timeline_out)):
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ConfigError(f"{flag} {path}: its directory does not exist")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=LOG_LEVELS[args.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        check_output_paths(args)
        fetch = ImageFetch(args) if args.image else None
        if fetch is not None:
            fetch.start()
        import trio  # the FUSE side (trio, pyfuse3): imported while an image is being fetched

        from daemon.serve import serve

        if fetch is not None:
            bootstrap, config, backend = fetch.wait()
            trio.run(partial(serve, serve_options(args, bootstrap, config), backend=backend))
            return 0
        if args.config:
            config = load_config(args.config)
        else:
            config = default_config(os.path.dirname(os.path.abspath(args.bootstrap)))
        trio.run(serve, serve_options(args, args.bootstrap, config))
    except NydusError as error:
        print(f"nydusd: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
