"""Start and always stop `nydusd` processes driven through their API socket, as nydus-snapshotter does.

`start_api_daemon` returns once `GET /api/v1/daemon` says RUNNING (the snapshotter's own wait);
`api_daemon` stops the daemon with SIGTERM and detaches its mount on every exit, even when the
test failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from daemon.ctl import ApiClient, ApiFailure, DaemonUnreachable
from tests.daemon.nydusd import NYDUSD, REPO, Daemon, answers, force_unmount

SNAPSHOTTER_FLAGS = ("--thread-num", "4", "--log-level", "info", "--failover-policy", "resend")


@dataclass
class ApiDaemon(Daemon):
    sock: str = ""

    def client(self) -> ApiClient:
        return ApiClient(self.sock, timeout_s=30)

    def get(self, path: str) -> object:
        return self.client().get(path)

    def call(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        """(status, JSON) of a request, errors included (200/204 answers give status 200/204)."""
        try:
            answer = self.client().request(method, path, body)
        except ApiFailure as failure:
            return failure.status, {"code": failure.code, "message": str(failure)}
        return (200 if answer is not None else 204), answer


def wait_running(daemon: ApiDaemon, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise AssertionError(f"nydusd exited with {daemon.process.returncode}:\n{daemon.log()}")
        try:
            info = daemon.get("/api/v1/daemon")
        except DaemonUnreachable:
            info = None
        if isinstance(info, dict) and info.get("state") == "RUNNING" and answers(daemon.mountpoint):
            return
        time.sleep(0.02)
    raise AssertionError(f"nydusd did not reach RUNNING within {timeout_s} s:\n{daemon.log()}")


def start_api_daemon(
    arguments: Sequence[str],
    mountpoint: str,
    sock: str,
    log_path: str,
    *,
    command: Sequence[str] = (*NYDUSD, "fuse"),
    timeout_s: float = 30.0,
    exact: bool = False,
) -> ApiDaemon:
    """`nydusd fuse ARGUMENTS --mountpoint M --apisock S` (with `exact`, ARGUMENTS name both
    themselves), RUNNING; its stdout and stderr go to `log_path`."""
    os.makedirs(mountpoint, exist_ok=True)
    places = [] if exact else ["--mountpoint", mountpoint, "--apisock", sock]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*command, *arguments, *places],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    daemon = ApiDaemon(process, mountpoint, log_path, sock)
    try:
        wait_running(daemon, timeout_s)
    except BaseException:
        daemon.stop(signal.SIGKILL)
        force_unmount(mountpoint)
        raise
    return daemon


@contextmanager
def api_daemon(
    arguments: Sequence[str],
    mountpoint: str,
    sock: str,
    log_path: str,
    *,
    command: Sequence[str] = (*NYDUSD, "fuse"),
) -> Iterator[ApiDaemon]:
    daemon = start_api_daemon(arguments, mountpoint, sock, log_path, command=command)
    try:
        yield daemon
    finally:
        daemon.stop()
        force_unmount(mountpoint)
