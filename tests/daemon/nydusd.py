"""Start and always stop real `nydusd` processes for tests.

A `Daemon` is running and mounted when `start_nydusd` returns; `mounted()` stops it with
SIGTERM and then detaches whatever is still mounted, even when the test failed, so no test
leaves a mountpoint behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from daemon.mountpoint import mounts_at
from daemon.storage.cache import blob_usage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NYDUSD = [sys.executable, "-m", "daemon.cli"]

requires_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"
)


def is_mounted(mountpoint: str, fstype: str = "fuse") -> bool:
    """Whether a mount of `fstype` ("fuse" matches every FUSE mount, "erofs" nydusd's EROFS
    driver) is at `mountpoint`."""
    return any(entry.fstype.startswith(fstype) for entry in mounts_at(mountpoint))


def answers(mountpoint: str) -> bool:
    """True if a daemon serves `mountpoint` (statfs is never answered from the kernel's cache,
    so a stale mount left by a killed daemon answers ENOTCONN)."""
    try:
        os.statvfs(mountpoint)
    except OSError:
        return False
    return True


def force_unmount(mountpoint: str) -> None:
    """Detach every mount stacked on `mountpoint` (lazily, so a busy one cannot block)."""
    for _ in range(16):
        if not mounts_at(mountpoint):
            return
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    mountpoint: str
    log_path: str

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return file.read()

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> str:
        """The log once it holds `text` (the daemon logs "prefetch done", say); fails after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not logged within {timeout_s} s:\n{self.log()}")

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Signal the daemon and wait; kill it if it does not exit. Returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def cached_chunks(work_dir: str) -> int:
    """Chunks in the chunk cache under `work_dir`, over all blobs."""
    return sum(usage.chunks for usage in blob_usage(work_dir))


def write_config(path: str, blob_dir: str, work_dir: str | None = None, **top: object) -> str:
    """A nydusd JSON config with a localfs backend and, if given, a blobcache in `work_dir`."""
    device: dict[str, object] = {"backend": {"type": "localfs", "config": {"dir": blob_dir}}}
    if work_dir:
        device["cache"] = {"type": "blobcache", "config": {"work_dir": work_dir}}
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"device": device, **top}, file)
    return path


def start_daemon(
    source: Sequence[str],
    mountpoint: str,
    log_path: str,
    *,
    command: Sequence[str] = NYDUSD,
    extra: Sequence[str] = (),
    timeout_s: float = 30.0,
    fstype: str = "fuse",
) -> Daemon:
    """Run nydusd on `source` (`--bootstrap F --config C`, `--image REF ...`) and return once its
    mount (of `fstype`) answers; raise with its log if it does not."""
    os.makedirs(mountpoint, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*command, *source, "--mountpoint", mountpoint, *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    daemon = Daemon(process, mountpoint, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nydusd exited with {process.returncode}:\n{daemon.log()}")
        # statfs first, then the mount table: the other order races with the daemon clearing a
        # stale mount (the table still lists it, then statfs is answered by the bare directory
        # in the instant before the new mount), and returned before anything was mounted.
        # An EROFS mount left by a killed daemon answers statfs like a live one (the kernel serves
        # it; only reads fail): for it, the daemon's own word that it mounted is waited for too.
        said = fstype != "erofs" or "daemon.serve: mounted" in daemon.log()
        if answers(mountpoint) and is_mounted(mountpoint, fstype) and said:
            return daemon
        time.sleep(0.02)
    daemon.stop(signal.SIGKILL)
    force_unmount(mountpoint)
    raise AssertionError(f"nydusd did not mount within {timeout_s} s:\n{daemon.log()}")


def start_nydusd(
    bootstrap: str,
    mountpoint: str,
    config: str,
    log_path: str,
    *,
    command: Sequence[str] = NYDUSD,
    extra: Sequence[str] = (),
    timeout_s: float = 30.0,
    fstype: str = "fuse",
) -> Daemon:
    """`nydusd --bootstrap` running and mounted."""
    source = ["--bootstrap", bootstrap, "--config", config]
    return start_daemon(source, mountpoint, log_path, command=command, extra=extra, timeout_s=timeout_s, fstype=fstype)


@contextmanager
def mounted(
    bootstrap: str,
    mountpoint: str,
    config: str,
    log_path: str,
    *,
    command: Sequence[str] = NYDUSD,
    extra: Sequence[str] = (),
    fstype: str = "fuse",
) -> Iterator[Daemon]:
    """A running, mounted daemon for the `with` body; stopped and unmounted on every exit."""
    daemon = start_nydusd(bootstrap, mountpoint, config, log_path, command=command, extra=extra, fstype=fstype)
    try:
        yield daemon
    finally:
        daemon.stop()
        force_unmount(mountpoint)
