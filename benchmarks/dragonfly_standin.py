"""A STAND-IN for Dragonfly's dfdaemon proxy, for tests and `benchmarks/cluster.py` on loopback.

Dragonfly cannot be installed on this machine, so this small HTTP forward proxy plays the part
dfdaemon plays for nydusd: blob range GETs arrive as absolute-URI requests
(`GET http://origin/v2/<repo>/blobs/sha256:... HTTP/1.1` with `Range`), and it answers them (and
whole-blob GETs, such as the bootstrap layer's) from a cache of fixed-size pieces (4 MiB, as dfdaemon's default piece size), each fetched from the
origin once however many clients ask at once. It is not dfdaemon: no P2P between hosts, no
scheduler, no disk cache, memory only; what it shares with dfdaemon is what nydusd can see.

For tests it records the `X-Dragonfly-*` headers of every request, answers its ping URL
(`/server/ping`, 200, or 503 after `fail_pings`), injects the faults Nydus has rules for
(`500`, a proxy-made `403` or `429` marked `X-Dragonfly-Error-Type: proxy`, `drop`), and
`die()`s: stops listening and cuts every open connection, as a killed daemon would.

As a process (for the benchmark):
    python3 -m benchmarks.dragonfly_standin [--listen 127.0.0.1:0]
prints `listening HOST:PORT` once it accepts, serves `GET /stats` (JSON counters), and runs
until killed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PIECE_BYTES = 4 << 20
PING_PATH = "/server/ping"
STATS_PATH = "/stats"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"}
FAULTS = ("500", "403", "429", "drop")


@dataclass
class Upstream:
    """An origin's answer that is not a piece (401 challenge, 404 ...): relayed, never cached."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class StandInStats:
    requests: int = 0
    upstream_requests: int = 0
    upstream_bytes: int = 0  # body bytes fetched from origins
    served_bytes: int = 0  # body bytes sent to clients
    pings: int = 0
    dragonfly_headers: list[dict[str, str]] = field(default_factory=list)  # per proxied request


def _parse_range(value: str) -> tuple[int, int | None] | None:
    """(first, last or None) of `bytes=a-b` / `bytes=a-`; None for anything else."""
    unit, _, spec = value.partition("=")
    first, _, last = spec.partition("-")
    if unit.strip() != "bytes" or "," in spec or not first.strip().isdigit():
        return None
    return int(first), int(last) if last.strip().isdigit() else None


class DragonflyStandIn:
    """The stand-in proxy on 127.0.0.1; `url` goes in nydusd's `proxy.url`, `ping_url` in `ping_url`."""

    def __init__(self, piece_bytes: int = PIECE_BYTES, listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.piece_bytes = piece_bytes
        self.stats = StandInStats()
        self.fail_pings = False
        self._faults: list[str] = []
        self._lock = threading.Lock()
        self._pieces: dict[tuple[str, int], tuple[bytes, int]] = {}  # (url, index) -> (bytes, blob size)
        self._fetching: dict[tuple[str, int], threading.Event] = {}
        self._connections: set[socket.socket] = set()
        self._dead = False
        self.server = ThreadingHTTPServer(listen, self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="dragonfly-standin", daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def ping_url(self) -> str:
        return f"{self.url}{PING_PATH}"

    def inject(self, fault: str, times: int = 1) -> None:
        """The next `times` proxied requests answer `fault` (see `FAULTS`)."""
        assert fault in FAULTS, fault
        with self._lock:
            self._faults.extend([fault] * times)

    def headers_seen(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.stats.dragonfly_headers)

    def die(self) -> None:
        """Stop listening and cut every open connection, in the middle of whatever it was doing."""
        with self._lock:
            self._dead = True
            connections = list(self._connections)
        self.server.shutdown()
        self.server.server_close()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(timeout=10)

    def stop(self) -> None:
        if not self._dead:
            self.die()

    # -- pieces -------------------------------------------------------------------------------

    def _take_fault(self) -> str:
        with self._lock:
            return self._faults.pop(0) if self._faults else ""

    def piece(self, url: str, index: int, headers: dict[str, str]) -> tuple[bytes, int] | Upstream:
        """Piece `index` of the blob at `url` and the blob's size, fetched once for all askers."""
        key = (url, index)
        while True:
            with self._lock:
                if key in self._pieces:
                    return self._pieces[key]
                event = self._fetching.get(key)
                if event is None:
                    event = self._fetching[key] = threading.Event()
                    break
            event.wait()
        try:
            result = self._fetch_piece(url, index, headers)
            if not isinstance(result, Upstream):
                with self._lock:
                    self._pieces[key] = result
            return result
        finally:
            with self._lock:
                del self._fetching[key]
            event.set()

    def _fetch_piece(self, url: str, index: int, headers: dict[str, str]) -> tuple[bytes, int] | Upstream:
        first = index * self.piece_bytes
        last = first + self.piece_bytes - 1
        with self._upstream(url) as (connection, path):
            connection.request("GET", path, headers={**headers, "Range": f"bytes={first}-{last}"})
            answer = connection.getresponse()
            body = answer.read()
        with self._lock:
            self.stats.upstream_requests += 1
            self.stats.upstream_bytes += len(body)
        if answer.status == 206:
            total = int(answer.getheader("Content-Range", "/0").rpartition("/")[2])
            return body, total
        if answer.status == 200:  # an origin without ranges: the whole blob
            return body[first : last + 1], len(body)
        kept = [(name, value) for name, value in answer.getheaders() if name.lower() not in HOP_BY_HOP]
        return Upstream(answer.status, kept, body)

    @contextmanager
    def _upstream(self, url: str) -> Iterator[tuple[http.client.HTTPConnection, str]]:
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.netloc, timeout=60)
        try:
            yield connection, parts.path + (f"?{parts.query}" if parts.query else "")
        finally:
            connection.close()

    # -- the HTTP side ------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with standin._lock:
                    standin._connections.add(self.connection)

            def finish(self) -> None:
                with standin._lock:
                    standin._connections.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def do_HEAD(self) -> None:
                self._any()

            def do_GET(self) -> None:
                self._any()

            def _any(self) -> None:
                if not self.path.startswith(("http://", "https://")):
                    self._local()
                    return
                with standin._lock:
                    standin.stats.requests += 1
                    standin.stats.dragonfly_headers.append(
                        {k: v for k, v in self.headers.items() if k.lower().startswith("x-dragonfly-")}
                    )
                fault = standin._take_fault()
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault:
                    extra = {"X-Dragonfly-Error-Type": "proxy"} if fault in ("403", "429") else {}
                    self._answer(int(fault), extra, b"stand-in fault\n")
                    return
                ranged = "Range" in self.headers
                wanted = _parse_range(self.headers["Range"]) if ranged else (0, None)
                if self.command == "GET" and "/blobs/" in self.path and wanted is not None:
                    self._serve_range(wanted, ranged)
                else:
                    self._forward()

            def _serve_range(self, wanted: tuple[int, int | None], ranged: bool) -> None:
                """A range (206) or the whole blob (200), from pieces fetched once."""
                headers = {k: v for k, v in self.headers.items() if k.lower() == "authorization"}
                first, last = wanted
                index = first // standin.piece_bytes
                got = standin.piece(self.path, index, headers)
                if isinstance(got, Upstream):
                    self._relay(got)
                    return
                total = got[1]
                if first >= total:
                    self._answer(416, {"Content-Range": f"bytes */{total}"}, b"")
                    return
                last = total - 1 if last is None else min(last, total - 1)
                self.send_response(206 if ranged else 200)
                if ranged:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{total}")
                self.send_header("Content-Length", str(last - first + 1))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                position = first
                while position <= last:
                    index = position // standin.piece_bytes
                    piece = standin.piece(self.path, index, headers)
                    if isinstance(piece, Upstream):
                        self.close_connection = True
                        return
                    start = position - index * standin.piece_bytes
                    data = piece[0][start : start + last - position + 1]
                    if not data:
                        self.close_connection = True
                        return
                    self.wfile.write(data)
                    with standin._lock:
                        standin.stats.served_bytes += len(data)
                    position += len(data)

            def _forward(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers = {k: v for k, v in headers.items() if not k.lower().startswith("x-dragonfly-")}
                with standin._upstream(self.path) as (connection, path):
                    connection.request(self.command, path, headers=headers)
                    answer = connection.getresponse()
                    body = answer.read()
                with standin._lock:
                    standin.stats.upstream_requests += 1
                    standin.stats.upstream_bytes += len(body)
                kept = [(name, value) for name, value in answer.getheaders() if name.lower() not in HOP_BY_HOP]
                self._relay(Upstream(answer.status, kept, body), head=self.command == "HEAD")

            def _relay(self, upstream: Upstream, head: bool = False) -> None:
                self.send_response(upstream.status)
                for name, value in upstream.headers:
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                length = next((v for n, v in upstream.headers if n.lower() == "content-length"), None)
                self.send_header("Content-Length", length if head and length else str(len(upstream.body)))
                self.end_headers()
                if not head:
                    self.wfile.write(upstream.body)

            def _local(self) -> None:
                if self.path == PING_PATH:
                    with standin._lock:
                        standin.stats.pings += 1
                    self._answer(503 if standin.fail_pings else 200, {}, b"")
                elif self.path == STATS_PATH:
                    with standin._lock:
                        report = {k: v for k, v in vars(standin.stats).items() if k != "dragonfly_headers"}
                        report["priorities"] = [
                            h.get("X-Dragonfly-Priority", "") for h in standin.stats.dragonfly_headers
                        ]
                    self._answer(200, {"Content-Type": "application/json"}, json.dumps(report).encode())
                else:
                    self._answer(404, {}, b"")

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--piece-bytes", type=int, default=PIECE_BYTES)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    standin = DragonflyStandIn(args.piece_bytes, (host, int(port)))
    print(f"listening {standin.address}", flush=True)
    try:
        standin.thread.join()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
