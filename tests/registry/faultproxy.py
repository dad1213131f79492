"""A small HTTP proxy on loopback that forwards to one upstream and injects scripted faults.

Faults: "drop" (close the connection without answering), an HTTP status such as "500" or "429"
(answered by the proxy itself), "truncate" (forward, but send only half the body promised),
"redirect" (307 to the same path on the upstream, as registries do to blob storage),
"flip" (forward with one byte of the body inverted, as a faulty link or cache would) and
"stall" (wait `stall_s` before forwarding, to outlast a client's read timeout). Each
injected fault applies to the next matching request only, so a test scripts a sequence.
`bytes_sent` counts the body bytes that reached the client, for tests of lazy loading.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Fault:
    kind: str
    method: str
    path_part: str


class FaultProxy:
    """Forwards every request to `upstream` (`127.0.0.1:port`) unless a fault is due."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.stall_s = 2.0
        self.seen: list[tuple[str, str, str]] = []  # (method, path, what happened)
        self.sent: list[tuple[str, str, int]] = []  # (method, path, body bytes sent)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def inject(self, kind: str, path_part: str = "", method: str = "*", times: int = 1) -> None:
        with self.lock:
            self.faults.extend(Fault(kind, method, path_part) for _ in range(times))

    def count(self, method: str, path_part: str) -> int:
        with self.lock:
            return sum(1 for seen_method, path, _ in self.seen if seen_method == method and path_part in path)

    def bytes_sent(self, path_part: str = "", method: str = "GET") -> int:
        """Body bytes sent to the client for requests whose path contains `path_part`."""
        with self.lock:
            return sum(size for seen_method, path, size in self.sent if seen_method == method and path_part in path)

    def _sent(self, method: str, path: str, size: int) -> None:
        with self.lock:
            self.sent.append((method, path, size))

    def _take(self, method: str, path: str) -> str:
        with self.lock:
            for index, fault in enumerate(self.faults):
                if fault.method in ("*", method) and fault.path_part in path:
                    del self.faults[index]
                    return fault.kind
            return ""

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self.lock:
            self.seen.append((method, path, outcome))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take(self.command, self.path)
                proxy._record(self.command, self.path, fault or "forwarded")
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault.isdigit():
                    self._answer(int(fault), {"Retry-After": "0"} if fault == "429" else {}, b"")
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                if fault == "redirect":
                    self._answer(307, {"Location": f"http://{proxy.upstream}{self.path}"}, b"")
                    return
                status, headers, data = self._forward(body)
                if fault == "flip" and data:
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
                if fault == "truncate" and len(data) > 1:
                    self.send_response(status)
                    for name, value in headers:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    proxy._sent(self.command, self.path, len(data) // 2)
                    self.close_connection = True
                    return
                self._answer(status, dict(headers), data)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                host, _, port = proxy.upstream.partition(":")
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    kept = [
                        (name, value)
                        for name, value in response.getheaders()
                        if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"
                    ]
                    if self.command == "HEAD" and response.getheader("Content-Length"):
                        kept.append(("X-Upstream-Length", response.getheader("Content-Length") or ""))
                    return response.status, kept, data
                finally:
                    connection.close()

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                upstream_length = headers.pop("X-Upstream-Length", None)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", upstream_length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                    proxy._sent(self.command, self.path, len(data))

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
