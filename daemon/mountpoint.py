"""Mount table checks: find our mount, and clear a stale one a crashed daemon left behind.

A FUSE mount whose daemon died answers every access with `ENOTCONN` until someone unmounts
it. Clearing it at start makes "kill -9, start again" work without a manual `umount`. A live
mount is never touched: starting twice on one mountpoint is refused.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from dataclasses import dataclass

from rafs.errors import MountError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    device: str  # "major:minor"
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts_at(path: str) -> list[MountEntry]:
    """Entries of /proc/self/mountinfo mounted exactly at `path` (bottom to top)."""
    target = os.path.realpath(path)
    found: list[MountEntry] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split()
            separator = fields.index("-")
            if _unescape(fields[4]) == target:
                found.append(
                    MountEntry(int(fields[0]), fields[2], target, fields[separator + 1], fields[separator + 2])
                )
    return found


def is_stale(path: str) -> bool:
    """True if `path` is a FUSE mount whose daemon is gone.

    Asks with statfs, which the kernel never answers from its cache (a `stat` of the root may be
    answered from cached attributes long after the daemon died).
    """
    try:
        os.statvfs(path)
    except OSError as error:
        return error.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def unmount(path: str, *, lazy: bool = True) -> bool:
    """Detach the top mount at `path` (lazily by default); True if the command succeeded."""
    command = ["umount", "-l", path] if os.geteuid() == 0 else ["fusermount3", "-u", "-z", path]
    if not lazy:
        command = ["umount", path] if os.geteuid() == 0 else ["fusermount3", "-u", path]
    result = subprocess.run(command, check=False, capture_output=True)
    return result.returncode == 0


def prepare_mountpoint(path: str) -> None:
    """Make `path` ready to mount on: clear stale FUSE mounts (stacked ones too), refuse a live one."""
    for _ in range(16):
        entries = [entry for entry in mounts_at(path) if entry.fstype.startswith("fuse")]
        if not entries:
            break
        if not is_stale(path):
            raise MountError(f"{path} is already a live FUSE mount ({entries[-1].source})")
        log.warning("clearing stale FUSE mount at %s left by a previous daemon", path)
        unmount(path)
    else:
        raise MountError(f"{path}: cannot clear the stale mounts")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory")
