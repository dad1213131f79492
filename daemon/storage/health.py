"""Health of a remote endpoint we may route around (a registry mirror, Dragonfly's proxy).

`HealthCheck` holds one endpoint's state and its ping; it owns no thread. Whoever runs the
backend runs the checks: the daemon calls `check()` every `interval_s` from a task in the
mount's nursery (`daemon.health`), so the pings stop at unmount with everything else, and code
without an owner (`nydusify`, tests) calls `check()` itself or not at all.

Two policies, as in Nydus:
- a proxy (`recover_only=False`) is pinged all the time and its ping alone decides whether it
  is used;
- a mirror (`recover_only=True`) is used until `failure_limit` requests in a row failed, then
  skipped, and pinged only while skipped, until a ping succeeds.
Either is pinged only while requests come: not after `pause_elapsed_s` without one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.01  # an interval of 0 in a config must not spin a thread


class HealthCheck:
    """Whether one endpoint is used, and the ping that brings it back. Thread-safe."""

    def __init__(
        self,
        name: str,
        ping_url: str,
        ping: Callable[[str], bool],
        *,
        interval_s: float,
        pause_elapsed_s: float,
        failure_limit: int = 0,
        recover_only: bool = False,
    ) -> None:
        self.name = name
        self.ping_url = ping_url
        self.interval_s = max(interval_s, MIN_INTERVAL_S)
        self.pause_elapsed_s = pause_elapsed_s
        self.failure_limit = failure_limit  # 0: failures never disable it
        self.recover_only = recover_only
        self._ping = ping
        self._lock = threading.Lock()
        self._healthy = True
        self._failures = 0
        self._last_request = time.monotonic()
        self.pings = 0  # for tests and logs: how many pings were sent

    @property
    def healthy(self) -> bool:
        return self._healthy

    def usable(self) -> bool:
        """Whether to send a request there now; counts as activity (pings go on while asked)."""
        self._last_request = time.monotonic()
        return self._healthy

    def failed(self, reason: str) -> None:
        """A request to it failed (connection, 5xx); after `failure_limit` in a row it is skipped."""
        with self._lock:
            self._failures += 1
            if self._healthy and self.failure_limit and self._failures >= self.failure_limit:
                self._healthy = False
                log.warning("%s failed %d times (last: %s): skipped until its ping answers",
                            self.name, self._failures, reason)  # fmt: skip

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0

    def due(self) -> bool:
        """Whether a ping is worth sending now."""
        if not self.ping_url:
            return False
        if self.recover_only and self._healthy:
            return False
        return time.monotonic() - self._last_request <= self.pause_elapsed_s

    def check(self) -> bool | None:
        """One ping if due (blocking, bounded by the ping's timeout); its outcome, None if none was sent."""
        if not self.due():
            return None
        self.pings += 1
        alive = self._ping(self.ping_url)
        with self._lock:
            was = self._healthy
            if alive:
                self._healthy = True
                self._failures = 0
            elif not self.recover_only:
                self._healthy = False
        if alive and not was:
            log.warning("%s answers its ping again (%s): in use again", self.name, self.ping_url)
        elif was and not alive and not self.recover_only:
            log.warning("%s does not answer its ping (%s): not used until it does", self.name, self.ping_url)
        return alive


@runtime_checkable
class HealthChecked(Protocol):
    """A backend with endpoints whose health someone must check while it serves."""

    def health_checks(self) -> Sequence[HealthCheck]: ...
