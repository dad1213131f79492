"""Dragonfly's proxy (dfdaemon) in front of the origin for blob reads, as Nydus's `proxy` block.

Blob GETs and HEADs go to the origin's URL through `url` as an HTTP forward proxy, with the
headers Nydus sends (`X-Dragonfly-Priority` 6 on demand, 3 for prefetch; `X-Dragonfly-Use-P2P`).
Manifests and token requests go straight to the origin, as Nydus's do. The rules:
- unhealthy (its ping fails), refusing connections, or answering 5xx: with `fallback` (the
  default) the read goes to the origin; without, it fails (`ProxyUnavailable`, EIO);
- an error the proxy made itself (`X-Dragonfly-Error-Type: proxy`): 403 fails at once
  (`ProxyForbidden`, not retried anywhere); 429 sends an on-demand read to the origin, at most
  one such read per second across the client, and fails a prefetch read (`ProxyRateLimited`:
  prefetch gives way, the reader fetches the chunk itself later);
- `use_http`: an `https` origin URL is sent to the proxy as `http`, so the proxy sees plain
  requests it can cache instead of a TLS tunnel.
"""

from __future__ import annotations

import threading
import time

from daemon.storage.health import HealthCheck
from daemon.storage.options import Proxy
from daemon.storage.purpose import ReadPurpose
from daemon.storage.registry.errors import RegistryError

ERROR_TYPE_HEADER = "X-Dragonfly-Error-Type"
PRIORITY = {ReadPurpose.ON_DEMAND: "6", ReadPurpose.PREFETCH: "3"}
ORIGIN_QPS_AFTER_429 = 1.0


class ProxyError(RegistryError):
    """Dragonfly's proxy refused or failed a read and the rules say not to go around it."""


class ProxyUnavailable(ProxyError):
    """The proxy is unhealthy, unreachable or failing, and `fallback` is off."""


class ProxyForbidden(ProxyError):
    """The proxy itself answered 403 (`X-Dragonfly-Error-Type: proxy`): not retried."""


class ProxyRateLimited(ProxyError):
    """The proxy itself answered 429 to a prefetch read: prefetch gives up that read."""


class RateLimiter:
    """At most `per_second` passes; a caller over the rate sleeps for its turn. Thread-safe."""

    def __init__(self, per_second: float) -> None:
        self.interval_s = 1.0 / per_second
        self._lock = threading.Lock()
        self._next_at = 0.0

    def wait(self) -> float:
        """Block until this caller's turn; how long it slept."""
        with self._lock:
            now = time.monotonic()
            turn = max(now, self._next_at)
            self._next_at = turn + self.interval_s
        delay = turn - now
        if delay > 0:
            time.sleep(delay)
        return delay


class ProxyRoute:
    """The configured proxy: where it is, its health, and what is sent through it."""

    def __init__(self, config: Proxy, health: HealthCheck) -> None:
        self.config = config
        self.health = health
        self.proxies = {"http": config.url, "https": config.url}
        self.origin_limiter = RateLimiter(ORIGIN_QPS_AFTER_429)

    def url_for(self, url: str) -> str:
        """The URL asked of the proxy: the origin's, with `https` as `http` under `use_http`."""
        if self.config.use_http and url.startswith("https://"):
            return "http://" + url.removeprefix("https://")
        return url

    def headers(self, purpose: ReadPurpose) -> dict[str, str]:
        return {"X-Dragonfly-Priority": PRIORITY[purpose], "X-Dragonfly-Use-P2P": "true"}
