"""`nydusctl`: inspect a daemon's state. `cache` reports what a cache directory holds.

    nydusctl cache --work-dir DIR [--json]

Reads the directory only (no daemon needs to run): per blob, the complete chunks, the space on
disk and when it was last used, plus the bootstraps kept for `nydusd --image`. The API socket
commands arrive in a later issue.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from daemon.storage.cache import blob_usage
from daemon.storage.image import BOOTSTRAP_DIR


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nydusctl", description="Inspect nydusd state.")
    commands = parser.add_subparsers(dest="command", required=True)
    cache = commands.add_parser("cache", help="what a cache directory (work_dir) holds")
    cache.add_argument("--work-dir", required=True, help="the blobcache's work_dir")
    cache.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.work_dir):
        print(f"nydusctl: {args.work_dir}: not a directory", file=sys.stderr)
        return 2
    report = cache_report(args.work_dir)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
