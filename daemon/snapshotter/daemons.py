"""nydusd's life as the snapshotter drives it: start, wait until RUNNING, watch, stop.

Only through the API socket and the process id, never by importing the daemon: a nydusd outlives
the snapshotter that started it (its own session, so a signal to the snapshotter's process group
does not reach it), and a restarted snapshotter finds it again from the store by its socket.

Liveness as nydus-snapshotter does it: one idle connection per daemon is held open; when it
hangs up, the daemon is asked again, and if its process is gone it is counted as DIED and logged.
It is started again (same mountpoint, same cache) when its image is next needed. The API server
closes idle connections after a minute, so a hang-up from a live daemon just reconnects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote

from daemon.ctl import ApiClient, ApiFailure, DaemonUnreachable
from daemon.mountpoint import mounts_at, unmount
from daemon.snapshotter.config import SnapshotterConfig
from daemon.snapshotter.errors import DaemonStartFailed
from daemon.snapshotter.layout import Layout
from daemon.snapshotter.store import DaemonRecord, Store

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 5.0
WATCH_POLL_S = 0.5
SHARED_DAEMON_ID = "nydusd-shared"


def dedicated_daemon_id(snapshot_id: int) -> str:
    return f"nydusd-{snapshot_id}"


def process_state(pid: int) -> str:
    """The kernel's one-letter state of `pid` ("" when there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def is_our_nydusd(record: DaemonRecord) -> bool:
    """The recorded pid runs, is not a zombie, and is the nydusd of that socket (pids are reused)."""
    if process_state(record.pid) in ("", "Z", "X"):
        return False
    try:
        with open(f"/proc/{record.pid}/cmdline", "rb") as cmdline:
            return record.api_sock.encode() in cmdline.read().split(b"\0")
    except OSError:
        return False


@dataclass
class DaemonEvents:
    """Counts for the metrics endpoint (`nydusd_lifetime_event_counts{nydusd_event}`)."""

    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event: str) -> None:
        with self.lock:
            self.counts[event] += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


class Daemons:
    """Starts, finds, watches and stops the nydusd processes of one snapshotter root."""

    def __init__(self, config: SnapshotterConfig, layout: Layout, store: Store) -> None:
        self.config = config
        self.layout = layout
        self.store = store
        self.events = DaemonEvents()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}  # ours since this start: reaped here
        self._watchers: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()

    # -- asking

    def client(self, record: DaemonRecord, timeout_s: float = PROBE_TIMEOUT_S) -> ApiClient:
        return ApiClient(record.api_sock, timeout_s=timeout_s)

    def state(self, record: DaemonRecord) -> str:
        """`GET /api/v1/daemon`'s state, or "" when the daemon does not answer."""
        try:
            info = self.client(record).get("/api/v1/daemon")
        except (DaemonUnreachable, ApiFailure):
            return ""
        return str(info.get("state", "")) if isinstance(info, dict) else ""

    def is_running(self, record: DaemonRecord) -> bool:
        self._reap(record.daemon_id)
        return is_our_nydusd(record) and self.state(record) == "RUNNING"

    def mounted(self, record: DaemonRecord) -> list[str]:
        """The mountpoints (`/`, `/<sub>`) the daemon serves, from its backend collection."""
        try:
            info = self.client(record).get("/api/v1/daemon")
        except (DaemonUnreachable, ApiFailure):
            return []
        collection = info.get("backend_collection") if isinstance(info, dict) else None
        return sorted(collection) if isinstance(collection, dict) else []

    # -- starting

    def start(self, daemon_id: str, mode: str, bootstrap: str = "", config_path: str = "") -> DaemonRecord:
        """`nydusd fuse` with nydus-snapshotter's flags; returns once the API says RUNNING."""
        mountpoint, sock, log_path = (
            self.layout.mountpoint(daemon_id), self.layout.api_sock(daemon_id), self.layout.log_path(daemon_id)
        )  # fmt: skip
        for directory in (mountpoint, os.path.dirname(sock), os.path.dirname(log_path)):
            os.makedirs(directory, exist_ok=True)
        command = [self.config.nydusd_path, "fuse", "--thread-num", str(self.config.threads_number)]
        if config_path:
            command += ["--config", config_path]
        if bootstrap:
            command += ["--bootstrap", bootstrap]
        command += [
            "--mountpoint", mountpoint, "--apisock", sock, "--log-level", self.config.log_level,
            "--log-file", log_path, "--failover-policy", self.config.failover_policy, "--id", daemon_id,
        ]  # fmt: skip
        log.info("starting %s: %s", daemon_id, " ".join(command))
        with open(log_path, "ab") as output:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        record = DaemonRecord(daemon_id, mode, process.pid, sock, mountpoint)
        with self._lock:
            self._processes[daemon_id] = process
        self.store.put_daemon(record)
        try:
            self._wait_running(record, process)
        except DaemonStartFailed:
            self.stop(record)
            raise
        self.events.add("RUNNING")
        self.watch(record)
        return record

    def _wait_running(self, record: DaemonRecord, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DaemonStartFailed(
                    f"nydusd exited with status {process.returncode}: {self._log_tail(record)}",
                    ("daemon", record.daemon_id),
                )
            if os.path.exists(record.api_sock) and self.state(record) == "RUNNING":
                log.info("%s is RUNNING (pid %d) at %s", record.daemon_id, record.pid, record.mountpoint)
                return
            time.sleep(0.05)
        raise DaemonStartFailed(f"not RUNNING after {START_TIMEOUT_S:.0f} s: {self._log_tail(record)}",
                                ("daemon", record.daemon_id))  # fmt: skip

    def _log_tail(self, record: DaemonRecord) -> str:
        try:
            with open(self.layout.log_path(record.daemon_id), encoding="utf-8", errors="replace") as file:
                lines = file.read().strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"

    # -- images in a shared daemon

    def mount_image(self, record: DaemonRecord, sub: str, bootstrap: str, config_text: str) -> None:
        body = {"fs_type": "rafs", "source": bootstrap, "config": config_text}
        try:
            self.client(record, timeout_s=START_TIMEOUT_S).request(
                "POST", f"/api/v1/mount?mountpoint={quote(sub)}", body
            )
        except (DaemonUnreachable, ApiFailure) as error:
            raise DaemonStartFailed(f"mount {sub}: {error}", ("daemon", record.daemon_id)) from None

    def umount_image(self, record: DaemonRecord, sub: str) -> None:
        try:
            self.client(record).request("DELETE", f"/api/v1/mount?mountpoint={quote(sub)}")
        except (DaemonUnreachable, ApiFailure) as error:
            log.warning("%s: unmounting %s: %s", record.daemon_id, sub, error)

    # -- stopping

    def stop(self, record: DaemonRecord) -> None:
        """Exit through the API, then SIGTERM, then SIGKILL; the mount is gone and the record deleted."""
        with self._lock:
            watcher = self._watchers.pop(record.daemon_id, None)
        if watcher is not None:
            watcher.set()
        if is_our_nydusd(record):
            with contextlib.suppress(DaemonUnreachable, ApiFailure):
                self.client(record).request("PUT", "/api/v1/daemon/exit")
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and is_our_nydusd(record):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(record.pid, sig)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while time.monotonic() < deadline and is_our_nydusd(record):
                    self._reap(record.daemon_id)
                    time.sleep(0.05)
                if not is_our_nydusd(record):
                    break
        self._reap(record.daemon_id)
        for _ in range(8):  # a daemon that died leaves its FUSE mount behind
            if not any(entry.fstype.startswith("fuse") for entry in mounts_at(record.mountpoint)):
                break
            unmount(record.mountpoint)
        for path in (record.api_sock,):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(record.api_sock))
        with contextlib.suppress(OSError):
            os.rmdir(record.mountpoint)
        self.store.delete_daemon(record.daemon_id)
        log.info("stopped %s (pid %d)", record.daemon_id, record.pid)

    def _reap(self, daemon_id: str) -> None:
        with self._lock:
            process = self._processes.get(daemon_id)
            if process is not None and process.poll() is not None:
                del self._processes[daemon_id]

    # -- watching

    def watch(self, record: DaemonRecord) -> None:
        """Watch `record`'s socket in a thread until it is stopped or dies."""
        stop = threading.Event()
        with self._lock:
            previous = self._watchers.pop(record.daemon_id, None)
            self._watchers[record.daemon_id] = stop
        if previous is not None:
            previous.set()
        threading.Thread(target=self._watch, args=(record, stop), name=f"watch-{record.daemon_id}", daemon=True).start()

    def _watch(self, record: DaemonRecord, stop: threading.Event) -> None:
        while not stop.is_set() and not self._closed.is_set():
            self._hold_connection(record, stop)
            if stop.is_set() or self._closed.is_set():
                return
            if self.is_running(record):
                continue  # the server closed an idle connection: hold a new one
            if stop.is_set():
                return
            self._reap(record.daemon_id)
            self.events.add("DIED")
            log.error("%s (pid %d) died: its API socket %s hung up; its image gets a new daemon when next needed",
                      record.daemon_id, record.pid, record.api_sock)  # fmt: skip
            with self._lock:
                if self._watchers.get(record.daemon_id) is stop:
                    del self._watchers[record.daemon_id]
            return

    def _hold_connection(self, record: DaemonRecord, stop: threading.Event) -> None:
        """Return when the daemon hangs up (or cannot be reached), or when asked to stop."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            try:
                connection.connect(record.api_sock)
            except OSError:
                return
            while not stop.is_set() and not self._closed.is_set():
                readable, _, _ = select.select([connection], [], [], WATCH_POLL_S)
                if readable:
                    try:
                        if not connection.recv(4096):
                            return
                    except OSError:
                        return

    def close(self) -> None:
        """Stop watching (the daemons themselves go on running)."""
        self._closed.set()
        with self._lock:
            for stop in self._watchers.values():
                stop.set()
            self._watchers.clear()
