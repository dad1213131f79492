"""Registry mirrors: where each is, its health, and which blobs it already serves in ranges.

A mirror request keeps the origin's path (`/v2/<repo>/blobs/sha256:...`) and replaces scheme
and host with the mirror's; the mirror's `headers` are added; its auth challenges are answered
as the origin's are (`RegistryClient._send` works per host).

Why a gate before ranges: a pull-through registry (docker-registry 2.8 with `proxy.remoteurl`)
answers a `Range` request for a blob it has not cached with `200` and the whole blob, streamed
from the origin, and every such request while it is still caching pulls its own copy from the
origin. A daemon that sent its ranges there at once would have each of its range requests,
and those of every other host starting the same image, pull the blob again. So before the
first GET of a blob (a range, or a whole bootstrap layer) goes to a mirror, one probe (a GET of `Range: bytes=0-0`, hung up on
unread) asks:
- `206`: the mirror serves ranges of it from its cache; ranges go there from now on;
- `200`: not cached yet; that probe has also made the mirror start caching it, so readers
  wait, sharing one probe at a time among all threads, until it answers `206`, or until
  `cold_wait_s` has passed since the blob was found cold, after which reads of it go past this
  mirror (to the next, or the origin) without waiting, the probes still watching for it.
A probe of a cold blob is not free: the mirror starts a copy from the origin for it, which
stops when its write to us fails (measured ~1 MB at 200 Mbit/s; a HEAD would be worse: the
registry copies the whole blob for a HEAD and discards it). Waiting rather than going to the
origin meanwhile keeps the origin link flat when many hosts start at once: each host's wait
costs a probe or two, not a copy of what it reads.

Why the probes of a cold blob back off (each waits `PROBE_BACKOFF` times the one before, up to
`MAX_PROBE_INTERVAL_S`, with jitter): docker-registry 2.8 (`proxyblobstore.go`) looks in its
cache, then pings the origin under a lock (an origin round trip per request, one request at a
time), and only then checks whether a copy of the blob is in flight. A probe that looked before
the caching copy committed and checks after it finished starts a second whole copy. The more
probes all hosts send while a blob caches, the likelier that is; a probe rate that falls as the
wait grows keeps it rare, and the jitter keeps hosts that started together from probing together.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from daemon.storage.health import HealthCheck

log = logging.getLogger(__name__)

DEFAULT_PROBE_INTERVAL_S = 0.5
DEFAULT_COLD_WAIT_S = 60.0
PROBE_BACKOFF = 1.5  # each probe of a cold blob waits this much longer than the one before
MAX_PROBE_INTERVAL_S = 8.0
PROBE_JITTER = 0.25  # each wait is drawn within this share either side of its nominal value


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: `base_url` is `scheme://host/v2/`; `headers` are added to each."""

    host: str
    base_url: str
    headers: Mapping[str, str]
    is_mirror: bool


class Probe(enum.Enum):
    RANGES = "ranges"  # 206: served from the mirror's cache
    COLD = "cold"  # 200: the mirror is fetching it whole
    ABSENT = "absent"  # neither: this mirror cannot serve it (404, 401 ...)
    FAILED = "failed"  # connection error or 5xx: counts against the mirror's health


@dataclass
class _BlobState:
    ready: bool = False
    cold_since: float = 0.0
    next_probe_at: float = 0.0
    cold_probes: int = 0  # probes that found it cold since it was last ready or absent
    probing: bool = False
    last: Probe | None = None  # the latest probe's answer


class RangeGate:
    """Per blob: whether this mirror serves its ranges yet; one probe at a time. Thread-safe."""

    def __init__(self, probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S, cold_wait_s: float = DEFAULT_COLD_WAIT_S):
        self.probe_interval_s = probe_interval_s
        self.cold_wait_s = cold_wait_s
        self._blobs: dict[str, _BlobState] = {}
        self._changed = threading.Condition()
        self.probes = 0

    def ready(self, digest: str, probe: Callable[[], Probe]) -> Probe:
        """Whether to send a range of `digest` to this mirror: `RANGES` yes, anything else no.

        Blocks while the blob is cold, at most until `cold_wait_s` after it was found cold.
        """
        while True:
            with self._changed:
                state = self._blobs.setdefault(digest, _BlobState())
                while True:
                    if state.ready:
                        return Probe.RANGES
                    now = time.monotonic()
                    patient = not state.cold_since or now - state.cold_since < self.cold_wait_s
                    if not state.probing and now >= state.next_probe_at:
                        break  # this thread probes
                    if state.last in (Probe.ABSENT, Probe.FAILED):
                        return state.last  # asked a moment ago: not there, go past it
                    if not patient:
                        return Probe.COLD
                    deadline = state.cold_since + self.cold_wait_s if state.cold_since else None
                    if not state.probing:
                        deadline = state.next_probe_at if deadline is None else min(deadline, state.next_probe_at)
                    self._changed.wait(None if deadline is None else max(deadline - now, 0.0))
                state.probing = True
            outcome = self._run_probe(digest, state, probe)
            if outcome is not Probe.COLD or not patient:
                return outcome

    def is_ready(self, digest: str) -> bool:
        """Whether a probe found the blob served from the mirror's cache (nothing is asked)."""
        with self._changed:
            state = self._blobs.get(digest)
            return state is not None and state.ready

    def ask_once(self, digest: str, probe: Callable[[], Probe]) -> Probe | None:
        """Probe `digest` now unless it was asked about already (then None), and do not wait for
        it: a pull-through mirror that has not cached it starts caching it; readers wait as usual."""
        with self._changed:
            state = self._blobs.setdefault(digest, _BlobState())
            if state.ready or state.probing or state.last is not None:
                return None
            state.probing = True
        return self._run_probe(digest, state, probe)

    def _run_probe(self, digest: str, state: _BlobState, probe: Callable[[], Probe]) -> Probe:
        """Send the probe this thread claimed (`state.probing`), and record what it found."""
        outcome = Probe.FAILED
        try:
            outcome = probe()
        finally:
            self._probed(digest, state, outcome)
        return outcome

    def _probed(self, digest: str, state: _BlobState, outcome: Probe) -> None:
        with self._changed:
            self.probes += 1
            state.probing = False
            state.last = outcome
            now = time.monotonic()
            if outcome is Probe.RANGES:
                state.ready = True
            elif outcome is Probe.COLD:
                state.cold_probes += 1
                if not state.cold_since:
                    state.cold_since = now
                    log.info("mirror has not cached blob %s yet: waiting up to %.0f s for it", digest, self.cold_wait_s)
            else:
                state.cold_since = 0.0
                state.cold_probes = 0
            state.next_probe_at = now + self.wait_after(state.cold_probes)
            self._changed.notify_all()

    def wait_after(self, cold_probes: int) -> float:
        """How long after a probe the next may go, when `cold_probes` in a row found the blob cold."""
        nominal = self.probe_interval_s * PROBE_BACKOFF ** max(cold_probes - 1, 0)
        nominal = min(nominal, max(MAX_PROBE_INTERVAL_S, self.probe_interval_s))
        return nominal * random.uniform(1 - PROBE_JITTER, 1 + PROBE_JITTER)

    def went_cold(self, digest: str) -> None:
        """A range came back `200` after all (the mirror evicted it): probe again before the next."""
        with self._changed:
            state = self._blobs.setdefault(digest, _BlobState())
            state.ready = False
            state.cold_since = time.monotonic()
            state.cold_probes = 0
            state.next_probe_at = 0.0


@dataclass
class MirrorRoute:
    """One configured mirror, ready to be tried: endpoint, health, and its range gate."""

    endpoint: Endpoint
    health: HealthCheck
    gate: RangeGate
