"""`nydusd`: serve an image (or, in shared mode, many) over FUSE in the foreground.

    nydusd [fuse] --bootstrap FILE | --image REF | (neither: shared mode) --mountpoint DIR
           [--config FILE] [--apisock SOCK] [--thread-num N] [--log-level L] [--log-file F] ...

`nydusd fuse ...` and plain `nydusd ...` are the same, so nydus-snapshotter's command line works
as it is. The one edge where errors become a message and an exit code: a `NydusError` prints one
line and exits with the class's `exit_code`; SIGINT/SIGTERM (or `PUT /api/v1/daemon/exit`)
unmount and exit 0. What is not implemented (takeover: `--supervisor`, `--upgrade`; the
`singleton` and `virtiofs` commands) is refused in one line, never ignored.

Every container start pays for this process's start, so it imports only what serving needs,
and late: `requests` only for a remote backend, the FUSE side (trio, pyfuse3) after the
arguments are read, while `--image`'s manifest and bootstrap are fetched in a thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

from daemon.config import DaemonConfig, default_config, image_config, load_config, read_config_file
from daemon.logs import LOG_LEVELS, setup_logging
from daemon.storage.backend import BlobBackend
from rafs.errors import ConfigError, NydusError
from rafs.oci import ImageReference
from rafs.pathlist import read_prefetch_entries

if TYPE_CHECKING:
    from daemon.serve import ServeOptions

FAILOVER_POLICIES = ("resend", "flush", "none")
NOT_IMPLEMENTED_COMMANDS = ("singleton", "virtiofs", "fscache")
USAGE_ERROR = 2

__all__ = ["LOG_LEVELS", "main", "parser"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="nydusd", description="Serve RAFS images over FUSE.")
    source = result.add_mutually_exclusive_group()
    source.add_argument("--bootstrap", help="bootstrap file of the image (neither this nor --image: shared mode)")
    source.add_argument("--image", metavar="REF", help="host[:port]/repo[:tag|@digest] of a converted image")
    result.add_argument("--mountpoint", required=True, help="directory to mount on")
    result.add_argument("--config", help="nydusd JSON config; default: localfs backend in the bootstrap's directory")
    result.add_argument("--apisock", metavar="SOCK", help="serve the HTTP API on this unix socket")
    result.add_argument("--id", dest="daemon_id", metavar="ID", help="daemon id reported by the API")
    result.add_argument(
        "--thread-num", type=_positive, metavar="N", help="FUSE requests answered at once (default: 128)"
    )
    result.add_argument("--plain-http", action="store_true", help="--image: plain HTTP (default only for loopback)")
    result.add_argument("--prefetch-files", metavar="FILE", help="paths (one a line) to prefetch after mounting")
    result.add_argument("--trace-out", metavar="FILE", help="write each file's path in first-access order")
    result.add_argument(
        "--timeline-out", metavar="FILE", help="at unmount, write range requests and blocked reads as JSON (benchmarks)"
    )
    result.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS))
    result.add_argument("--log-file", metavar="FILE", help="log here instead of to stderr")
    result.add_argument(
        "--log-rotation-size", type=_not_negative, default=0, metavar="MB", help="rotate the log file at this size"
    )
    result.add_argument(
        "--failover-policy",
        choices=FAILOVER_POLICIES,
        default="resend",
        help="what takeover does with requests in flight (takeover itself is not implemented)",
    )
    result.add_argument("--supervisor", metavar="SOCK", help="not implemented (takeover): refused")
    result.add_argument("--upgrade", action="store_true", help="not implemented (takeover): refused")
    result.add_argument("--no-allow-other", action="store_true", help="only the mounting user may access the mount")
    result.add_argument("--version", "-V", action="store_true", help="print the version and exit")
    return result


def default_work_dir() -> str:
    """Where `--image` keeps bootstraps and chunks when the config names no blobcache."""
    if os.geteuid() == 0:
        return "/var/lib/nydus-py/cache"
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nydus-py")


def fetch_image(
    args: argparse.Namespace, imported: threading.Event | None = None
) -> tuple[str, DaemonConfig, BlobBackend]:
    """For `--image`: the bootstrap fetched (or reused) from the registry, the config, the backend.
    `imported` is set once the registry client's modules are loaded, before any request."""
    from daemon.storage.backends import open_registry_backend
    from daemon.storage.image import fetch_bootstrap  # imports `requests`: only when an image is fetched
    from daemon.storage.options import RegistryConfig

    if imported is not None:
        imported.set()
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

    The main thread waits for `imported` before it imports the FUSE side: imports hold the GIL,
    so two at once each go at half speed, and the fetch (the longer path to the mount: its
    imports, then manifest, bootstrap and its extraction) would start its requests later.
    Joined before the event loop starts: it is the daemon's only thread outside trio's.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(name="image-fetch", daemon=True)
        self.args = args
        self.imported = threading.Event()
        self.result: tuple[str, DaemonConfig, BlobBackend] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = fetch_image(self.args, self.imported)
        except BaseException as error:  # handed to the main thread by `wait`
            self.error = error
        finally:
            self.imported.set()

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


def serve_options(
    args: argparse.Namespace, bootstrap: str | None, config: DaemonConfig | None, erofs_metadata: str | None = None
) -> ServeOptions:
    from daemon.serve import MAX_FUSE_TASKS, ServeOptions

    return ServeOptions(
        bootstrap,
        args.mountpoint,
        config,
        allow_other=not args.no_allow_other,
        prefetch_files=read_prefetch_entries(args.prefetch_files) if args.prefetch_files is not None else None,
        trace_out=args.trace_out,
        timeline_out=args.timeline_out,
        started_at=process_started_at(),
        apisock=args.apisock,
        daemon_id=args.daemon_id,
        fuse_tasks=args.thread_num or MAX_FUSE_TASKS,
        failover_policy=args.failover_policy,
        erofs_metadata=erofs_metadata,
    )


def refuse_unsupported(args: argparse.Namespace) -> None:
    """What this daemon does not do is refused in one line, before anything is opened."""
    if args.supervisor is not None or args.upgrade:
        flag = "--supervisor" if args.supervisor is not None else "--upgrade"
        raise ConfigError(f"{flag}: takeover (hot upgrade, failover) is not implemented")
    if args.bootstrap is None and args.image is None:
        if args.apisock is None:
            raise ConfigError("shared mode (no --bootstrap or --image) needs --apisock to receive mounts")
        for flag, value in (("--prefetch-files", args.prefetch_files), ("--trace-out", args.trace_out),
                            ("--timeline-out", args.timeline_out)):  # fmt: skip
            if value is not None:
                raise ConfigError(f"{flag} needs --bootstrap or --image (shared mode takes prefetch_files per mount)")


def split_command(argv: list[str]) -> list[str]:
    """Drop the `fuse` command (`nydusd fuse ...` is `nydusd ...`); refuse the ones not served."""
    if argv and argv[0] == "fuse":
        return argv[1:]
    if argv and argv[0] in NOT_IMPLEMENTED_COMMANDS:
        raise ConfigError(f"the {argv[0]} command is not implemented; use `nydusd fuse`")
    return argv


def check_output_paths(args: argparse.Namespace) -> None:
    """Refuse an output file whose directory is missing before mounting, not at unmount."""
    for flag, path in (("--trace-out", args.trace_out), ("--timeline-out", args.timeline_out)):
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ConfigError(f"{flag} {path}: its directory does not exist")


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if "--version" in arguments or "-V" in arguments:
        from daemon.version import version_line

        print(version_line())
        return 0
    try:
        arguments = split_command(arguments)
    except ConfigError as error:
        print(f"nydusd: {error}", file=sys.stderr)
        return USAGE_ERROR
    args = parser().parse_args(arguments)
    try:
        refuse_unsupported(args)
        setup_logging(args.log_level, args.log_file, args.log_rotation_size)
        check_output_paths(args)
        fetch = ImageFetch(args) if args.image else None
        if fetch is not None:
            fetch.start()
            fetch.imported.wait()
        import trio  # the FUSE side (trio, pyfuse3): imported while an image is being fetched

        from daemon.serve import serve

        if fetch is not None:
            bootstrap, config, backend = fetch.wait()
            from daemon.storage.image import shipped_erofs_path

            options = serve_options(args, bootstrap, config, shipped_erofs_path(bootstrap))
            trio.run(partial(serve, options, backend=backend))
            return 0
        if args.bootstrap is None:
            shared_config = load_config(args.config) if args.config else None
            trio.run(serve, serve_options(args, None, shared_config))
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
