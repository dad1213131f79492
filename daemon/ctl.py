"""`nydusctl`: ask a running nydusd over its API socket, or report what a cache directory holds.

    nydusctl --sock SOCK [--raw] info
    nydusctl --sock SOCK [--raw] metrics backend|cache|fsstats [-I SECS] [--id /sub]
    nydusctl --sock SOCK set log-level LEVEL
    nydusctl --sock SOCK mount -s BOOTSTRAP -c CONFIG -m /sub [-t rafs]
    nydusctl --sock SOCK umount -m /sub
    nydusctl cache --work-dir DIR [--json]

Nydus's verbs and flags. `--raw` prints the daemon's JSON as it is; otherwise a short table.
A daemon that does not answer (no socket, nobody listening) is one line and exit 2; an error the
daemon answered is its message and exit 1. `cache` reads the directory only (no daemon needs to
run): per blob, the complete chunks, the space on disk and when it was last used, plus the
bootstraps kept for `nydusd --image`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from urllib.parse import quote

from daemon.storage.cache import blob_usage
from daemon.storage.image import BOOTSTRAP_DIR

UNREACHABLE = 2
ANSWERED_ERROR = 1
TIMEOUT_S = 30.0


class DaemonUnreachable(Exception):
    """Nobody answers on the socket."""


class ApiFailure(Exception):
    """The daemon answered with an error status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """HTTP/1.1 + JSON over nydusd's unix socket: a connection per request, so a daemon that
    closed an idle one between two `-I` rounds is never a failure."""

    def __init__(self, sock: str, timeout_s: float = TIMEOUT_S) -> None:
        self.sock = sock
        self._connection = _UnixConnection(sock, timeout_s)

    def close(self) -> None:
        self._connection.close()

    def request(self, method: str, path: str, body: object = None) -> object:
        """The decoded JSON answer (None for 204); `ApiFailure` for 4xx/5xx, `DaemonUnreachable`."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            self._connection.request(method, path, body=payload, headers=headers)
            response = self._connection.getresponse()
            data = response.read()
        except (ConnectionRefusedError, FileNotFoundError) as error:
            raise DaemonUnreachable(f"cannot reach nydusd at {self.sock}: {error.strerror}") from None
        except (OSError, http.client.HTTPException) as error:
            raise DaemonUnreachable(f"nydusd at {self.sock} did not answer: {error}") from None
        finally:
            self._connection.close()
        decoded: object = json.loads(data) if data else None
        if response.status >= 400:
            if isinstance(decoded, dict):
                raise ApiFailure(response.status, str(decoded.get("code", "")), str(decoded.get("message", "")))
            raise ApiFailure(response.status, "", data.decode(errors="replace"))
        return decoded

    def get(self, path: str) -> object:
        return self.request("GET", path)


# -- the cache directory, no daemon needed --------------------------------------------------------


def cache_report(work_dir: str) -> dict[str, object]:
    """The cache's contents as plain data, most recently used blob first."""
    usages = sorted(blob_usage(work_dir), key=lambda usage: usage.last_use, reverse=True)
    boot_dir = os.path.join(work_dir, BOOTSTRAP_DIR)
    bootstraps = (
        sorted(name for name in os.listdir(boot_dir) if name.endswith(".boot")) if os.path.isdir(boot_dir) else []
    )
    return {
        "work_dir": os.path.abspath(work_dir),
        "blobs": [
            {"blob_id": u.blob_id, "chunks": u.chunks, "disk_bytes": u.disk_bytes, "last_use": u.last_use}
            for u in usages
        ],
        "total_chunks": sum(u.chunks for u in usages),
        "total_disk_bytes": sum(u.disk_bytes for u in usages),
        "bootstraps": [name.removesuffix(".boot").replace("-", ":", 1) for name in bootstraps],
    }


def print_report(report: dict[str, object]) -> None:
    blobs = report["blobs"]
    assert isinstance(blobs, list)
    print(f"cache {report['work_dir']}: {len(blobs)} blobs, {report['total_chunks']} chunks, "
          f"{report['total_disk_bytes']} bytes on disk")  # fmt: skip
    print(f"{'BLOB':<64}  {'CHUNKS':>8}  {'BYTES':>12}  LAST USE")
    for blob in blobs:
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(blob["last_use"]))
        print(f"{blob['blob_id']:<64}  {blob['chunks']:>8}  {blob['disk_bytes']:>12}  {used}")
    bootstraps = report["bootstraps"]
    assert isinstance(bootstraps, list)
    for digest in bootstraps:
        print(f"bootstrap {digest}")


def run_cache(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.work_dir):
        print(f"nydusctl: {args.work_dir}: not a directory", file=sys.stderr)
        return UNREACHABLE
    report = cache_report(args.work_dir)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(report)
    return 0


# -- readable tables ------------------------------------------------------------------------------

FOP_NAMES = (
    "getattr", "readlink", "open", "release", "read", "statfs", "getxattr", "listxattr", "opendir", "lookup",
    "readdir", "readdirplus", "access", "forget", "batch_forget",
)  # fmt: skip
SIZE_NAMES = ("<1K", "1K", "4K", "16K", "64K", "128K", "512K", "1M+")


def _rows(rows: Sequence[tuple[str, object]]) -> None:
    width = max((len(name) for name, _ in rows), default=0)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def print_info(info: dict[str, object]) -> None:
    version = info.get("version")
    package = version.get("package_ver", "") if isinstance(version, dict) else ""
    _rows([("id", info.get("id") or "-"), ("version", package), ("state", info.get("state"))])
    collection = info.get("backend_collection")
    if isinstance(collection, dict) and collection:
        print(f"{'MOUNTPOINT':<24}  {'BACKEND':<10}  {'MOUNTED':<20}  SOURCE")
        for mountpoint, backend in collection.items():
            if isinstance(backend, dict):
                print(f"{mountpoint:<24}  {backend.get('backend_type', ''):<10}  "
                      f"{backend.get('mounted_time', ''):<20}  {backend.get('source', '')}")  # fmt: skip


def print_fsstats(stats: dict[str, object]) -> None:
    _rows([("id", stats.get("id")), ("data_read", stats.get("data_read")), ("nr_opens", stats.get("nr_opens"))])
    hits, errors = stats.get("fop_hits"), stats.get("fop_errors")
    if isinstance(hits, list) and isinstance(errors, list):
        print(f"{'FOP':<14}  {'HITS':>10}  {'ERRORS':>8}")
        for name, hit, error in zip(FOP_NAMES, hits, errors, strict=False):
            if hit or error:
                print(f"{name:<14}  {hit:>10}  {error:>8}")
    blocks = stats.get("block_count_read")
    if isinstance(blocks, list):
        print("reads by size  " + "  ".join(f"{n}:{c}" for n, c in zip(SIZE_NAMES, blocks, strict=False)))


def print_backend(stats: dict[str, object]) -> None:
    count = stats.get("read_count", 0)
    latency = stats.get("read_cumulative_latency_millis_total", 0)
    average = latency / count if isinstance(count, int) and isinstance(latency, int) and count else 0
    _rows([
        ("backend_type", stats.get("backend_type")),
        ("read_count", count),
        ("read_errors", stats.get("read_errors")),
        ("read_amount_total", stats.get("read_amount_total")),
        ("average latency ms", f"{average:.1f}"),
    ])  # fmt: skip


def print_cache(stats: dict[str, object]) -> None:
    keys = (
        "id", "store_path", "whole_hits", "partial_hits", "total", "entries_count", "prefetch_data_amount",
        "prefetch_requests_count", "prefetch_cumulative_time_millis", "data_all_ready",
    )  # fmt: skip
    _rows([(key, stats.get(key)) for key in keys])
    files = stats.get("underlying_files")
    if isinstance(files, list):
        for path in files:
            print(f"underlying file {path}")


METRICS_ROUTES = {
    "fsstats": "/api/v1/metrics",
    "backend": "/api/v1/metrics/backend",
    "cache": "/api/v1/metrics/blobcache",
}
METRICS_PRINTERS = {"fsstats": print_fsstats, "backend": print_backend, "cache": print_cache}


def show(value: object, raw: bool, printer: object = None) -> None:
    if raw or not isinstance(value, dict) or not callable(printer):
        json.dump(value, sys.stdout)
        print()
    else:
        printer(value)
    sys.stdout.flush()


# -- the verbs ------------------------------------------------------------------------------------


def run_daemon_command(args: argparse.Namespace, client: ApiClient) -> int:
    if args.command == "info":
        show(client.get("/api/v1/daemon"), args.raw, print_info)
    elif args.command == "set":
        client.request("PUT", "/api/v1/daemon", {"log_level": args.value})
        print(f"log level set to {args.value}")
    elif args.command == "metrics":
        path = METRICS_ROUTES[args.category] + (f"?id={quote(args.id)}" if args.id else "")
        while True:
            show(client.get(path), args.raw, METRICS_PRINTERS[args.category])
            if not args.interval:
                break
            time.sleep(args.interval)
    elif args.command == "mount":
        try:
            with open(args.config, encoding="utf-8") as file:
                config = file.read()
        except OSError as error:
            print(f"nydusctl: config {args.config}: {error.strerror}", file=sys.stderr)
            return ANSWERED_ERROR
        body = {"fs_type": args.type, "source": os.path.abspath(args.source), "config": config}
        client.request("POST", f"/api/v1/mount?mountpoint={quote(args.mountpoint)}", body)
        print(f"mounted {args.source} at {args.mountpoint}")
    elif args.command == "umount":
        client.request("DELETE", f"/api/v1/mount?mountpoint={quote(args.mountpoint)}")
        print(f"unmounted {args.mountpoint}")
    return 0


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="nydusctl", description="Query and steer nydusd; inspect a cache.")
    result.add_argument("--sock", "-S", help="nydusd's API socket (--apisock)")
    result.add_argument("--raw", "-r", action="store_true", help="print the daemon's JSON as it is")
    commands = result.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="the daemon's id, version, state and mounts")
    setter = commands.add_parser("set", help="change a setting of the running daemon")
    setter.add_argument("kind", choices=["log-level"])
    setter.add_argument("value", help="trace, debug, info, warn or error")
    metrics = commands.add_parser("metrics", help="fsstats, backend or cache counters")
    metrics.add_argument("category", choices=sorted(METRICS_ROUTES))
    metrics.add_argument("-I", "--interval", type=float, default=0, metavar="SECS", help="repeat every SECS")
    metrics.add_argument("--id", help="the mount (/sub in shared mode)")
    mount = commands.add_parser("mount", help="mount an image at a subdirectory (shared mode)")
    mount.add_argument("-s", "--source", required=True, help="bootstrap file")
    mount.add_argument("-c", "--config", required=True, help="nydusd JSON config file for this image")
    mount.add_argument("-m", "--mountpoint", required=True, help="/name below the daemon's mountpoint")
    mount.add_argument("-t", "--type", default="rafs", choices=["rafs"], help="filesystem type")
    umount = commands.add_parser("umount", help="unmount an image mounted with `mount`")
    umount.add_argument("-m", "--mountpoint", required=True)
    cache = commands.add_parser("cache", help="what a cache directory (work_dir) holds")
    cache.add_argument("--work-dir", required=True, help="the blobcache's work_dir")
    cache.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "cache":
        return run_cache(args)
    if not args.sock:
        print(f"nydusctl: {args.command} needs --sock (nydusd's --apisock)", file=sys.stderr)
        return UNREACHABLE
    client = ApiClient(args.sock)
    try:
        return run_daemon_command(args, client)
    except DaemonUnreachable as error:
        print(f"nydusctl: {error}", file=sys.stderr)
        return UNREACHABLE
    except ApiFailure as error:
        print(f"nydusctl: {error.code or error.status}: {error}", file=sys.stderr)
        return ANSWERED_ERROR
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
