"""`HttpTransport` against servers of the test's own: bodies bounded in size and time, every
`requests` failure a `BackendError` subclass, the new config key read and checked."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from daemon.config import parse_config
from daemon.storage.backend import BackendError, TransientError
from daemon.storage.http import HttpBackend
from daemon.storage.options import HttpConfig, HttpOptions
from daemon.storage.transport import BodyTooLarge, HttpTransport, RequestFailed
from rafs.errors import ConfigError

Reply = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def server() -> Iterator[Callable[[Reply], str]]:
    """`server(reply)` serves every GET with `reply(handler)`; returns its base URL."""
    running: list[ThreadingHTTPServer] = []
    stop = threading.Event()

    def start(reply: Reply) -> str:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    reply(self)
                except OSError:
                    pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        httpd.stop = stop  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        running.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    stop.set()
    for httpd in running:
        httpd.shutdown()
        httpd.server_close()


def fast(**overrides: float) -> HttpOptions:
    values: dict[str, float] = {"timeout_s": 1.0, "connect_timeout_s": 1.0, "retry_limit": 1, "backoff_s": 0.01}
    values.update(overrides)
    return HttpOptions(**values)  # type: ignore[arg-type]


BLOB = "ab" * 32


def test_a_trickled_range_is_abandoned_then_unavailable(server: Callable[[Reply], str]) -> None:
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(206)
        handler.send_header("Content-Range", "bytes 0-99/100")
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        for _ in range(100):
            if handler.server.stop.wait(0.2):  # type: ignore[attr-defined]
                return
            handler.wfile.write(b"x")
            handler.wfile.flush()

    backend = HttpBackend(HttpConfig(server(trickle), fast(min_rate_bytes_per_s=1000)))
    with pytest.raises(TransientError, match="too slow"):
        backend.read_range(BLOB, 0, 100)  # allowed 1 s + 100 B / 1000 B/s per attempt; takes 20 s
    backend.close()


def test_a_range_longer_than_asked_is_refused(server: Callable[[Reply], str]) -> None:
    def generous(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(206)
        handler.send_header("Content-Range", "bytes 0-9/100")
        handler.end_headers()
        handler.wfile.write(b"y" * 1000)

    backend = HttpBackend(HttpConfig(server(generous), fast()))
    with pytest.raises(BodyTooLarge):
        backend.read_range(BLOB, 0, 10)
    backend.close()


def test_a_whole_blob_for_a_range_is_read_only_up_to_the_range(server: Callable[[Reply], str]) -> None:
    def whole(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(64 << 20))
        handler.end_headers()
        for _ in range(64):
            handler.wfile.write(bytes(range(256)) * 4096)

    backend = HttpBackend(HttpConfig(server(whole), fast()))
    assert backend.read_range(BLOB, 300, 10) == bytes(range(44, 54))
    backend.close()


def test_small_bodies_are_capped(server: Callable[[Reply], str]) -> None:
    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(404)
        handler.end_headers()
        for _ in range(64):
            handler.wfile.write(b"e" * (1 << 20))

    transport = HttpTransport(fast())
    with pytest.raises(BodyTooLarge, match="4194304 bytes"):
        transport.request("GET", server(endless) + "/x")
    transport.close()


@pytest.mark.parametrize(
    ("location", "needle"), [("/same", "too many redirects"), ("http://[::1", "invalid URL"), ("ftp://h/x", "invalid")]
)
def test_redirects_nowhere_are_backend_errors(server: Callable[[Reply], str], location: str, needle: str) -> None:
    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    backend = HttpBackend(HttpConfig(server(redirect) + "/same", fast()))
    with pytest.raises(RequestFailed, match=needle) as raised:
        backend.read_range(BLOB, 0, 10)
    assert isinstance(raised.value, BackendError)
    backend.close()


def test_compressed_answers_are_never_decompressed(server: Callable[[Reply], str]) -> None:
    """`Accept-Encoding: identity` is sent; a server that compresses anyway gets its bytes back as sent."""
    seen: list[str] = []

    def gzipped(handler: BaseHTTPRequestHandler) -> None:
        seen.append(handler.headers.get("Accept-Encoding", ""))
        handler.send_response(206)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Range", "bytes 0-3/4")
        handler.send_header("Content-Length", "4")
        handler.end_headers()
        handler.wfile.write(b"\x1f\x8b\x08\x00")

    backend = HttpBackend(HttpConfig(server(gzipped), fast()))
    assert backend.read_range(BLOB, 0, 4) == b"\x1f\x8b\x08\x00"
    assert seen == ["identity"]
    backend.close()


def test_min_transfer_rate_is_a_config_key() -> None:
    def http_options(**config: object) -> HttpOptions:
        backend = parse_config({"device": {"backend": {"type": "http", "config": {"url": "http://h", **config}}}})
        assert isinstance(backend.backend, HttpConfig)
        return backend.backend.http

    assert http_options(min_transfer_rate=5000).min_rate_bytes_per_s == 5000
    assert http_options().min_rate_bytes_per_s == HttpOptions().min_rate_bytes_per_s
    with pytest.raises(ConfigError, match="min_transfer_rate"):
        http_options(min_transfer_rate=-1)
