"""The shaper's series (`--series-file`) as the cold-start harness reads it: bytes, HTTP requests
and requests in flight, against a real HTTP server on loopback, through the shaper."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from benchmarks.coldstart_services import Shaper

BLOB = bytes(range(256)) * 1200  # 300 KiB
BIG = 32 << 20  # more than the link's queue and the sockets' buffers hold
CONCURRENT = 3


class _Handler(BaseHTTPRequestHandler):
    """GET /blob (with Range), HEAD /blob, GET /chunked, and GET /together, whose answers wait
    until `CONCURRENT` of them have arrived: all are in flight at once, whatever the timing."""

    protocol_version = "HTTP/1.1"
    barrier = threading.Barrier(CONCURRENT)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/together":
            self.barrier.wait(timeout=30)
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(BIG))
            self.end_headers()
            try:
                for _ in range(BIG // len(BLOB) + 1):
                    self.wfile.write(BLOB)
            except OSError:
                pass  # the shaper closed the connection: the client is gone
            return
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (BLOB[:1000], BLOB[1000:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = BLOB
        header = self.headers.get("Range", "")
        if header.startswith("bytes="):
            first, last = (int(number) for number in header[len("bytes=") :].split("-"))
            body = BLOB[first : last + 1]
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.barrier = threading.Barrier(CONCURRENT)
    http_server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{http_server.server_address[1]}"
    http_server.shutdown()
    http_server.server_close()


@pytest.fixture
def shaper(server: str, tmp_path: Path) -> Iterator[Shaper]:
    running = Shaper(server, rtt_ms=2, rate_mbit=400, series_path=tmp_path / "series.jsonl")
    yield running
    running.stop()


def test_requests_on_a_kept_alive_connection_are_counted(shaper: Shaper) -> None:
    opening = shaper.sample_after()
    origin = time.time()
    with requests.Session() as session:  # one connection, kept alive across the requests
        ranges = [
            session.get(f"http://{shaper.host}/blob", headers={"Range": f"bytes={n}-{n + 999}"}) for n in (0, 5000)
        ]
        head = session.head(f"http://{shaper.host}/blob")
        chunked = session.get(f"http://{shaper.host}/chunked")
        whole = session.get(f"http://{shaper.host}/blob")
    assert [response.content for response in ranges] == [BLOB[0:1000], BLOB[5000:6000]]
    assert head.content == b"" and chunked.content == BLOB and whole.content == BLOB
    closing = shaper.sample_after()
    window = shaper.window(opening, closing, origin)
    assert window.requests == 5
    assert closing.responses - opening.responses == 5
    assert closing.in_flight == 0
    assert window.max_in_flight == 1  # one after the other on one connection
    assert len(BLOB) * 2 + 2000 < window.down < len(BLOB) * 2 + 2000 + 5 * 1024  # bodies plus headers
    assert 0 < window.up < 5 * 1024


def test_the_most_in_flight_and_the_bytes_over_time(shaper: Shaper) -> None:
    opening = shaper.sample_after()
    origin = time.time()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        bodies = list(pool.map(lambda _: requests.get(f"http://{shaper.host}/together").content, range(CONCURRENT)))
    assert bodies == [BLOB] * CONCURRENT
    closing = shaper.sample_after()
    window = shaper.window(opening, closing, origin)
    assert (window.requests, window.max_in_flight) == (CONCURRENT, CONCURRENT)
    assert closing.in_flight == 0
    # the series: one sample every 50 ms, cumulative bytes never falling, ending at the window's total
    times = [at for at, _ in window.down_series]
    assert times == sorted(times) and len(times) >= 1
    counts = [count for _, count in window.down_series]
    assert counts == sorted(counts)
    assert counts[-1] == window.down >= CONCURRENT * len(BLOB)
    assert all(peak <= CONCURRENT for _, peak in window.in_flight_series)
    assert max(peak for _, peak in window.in_flight_series) == CONCURRENT


def test_a_window_holds_only_its_own_traffic(shaper: Shaper) -> None:
    requests.get(f"http://{shaper.host}/blob").raise_for_status()
    opening = shaper.sample_after()
    closing = shaper.sample_after()
    window = shaper.window(opening, closing, time.time())
    assert (window.requests, window.down, window.up, window.max_in_flight) == (0, 0, 0, 0)


def test_a_client_that_leaves_mid_response_does_not_stop_the_link(shaper: Shaper) -> None:
    address, _, port = shaper.host.rpartition(":")
    for _ in range(3):
        with socket.create_connection((address, int(port))) as connection:
            connection.sendall(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
            connection.recv(1000)
        # closed with megabytes of the response still queued in the shaper
    time.sleep(0.5)
    assert shaper.process.poll() is None
    assert requests.get(f"http://{shaper.host}/blob", timeout=30).content == BLOB
    closing = shaper.sample_after()
    assert closing.in_flight == 0  # the abandoned requests ended with their connections


def test_shaper_stops_with_its_group(shaper: Shaper) -> None:
    shaper.stop()
    assert shaper.process.returncode is not None
    with pytest.raises(RuntimeError, match="exited"):
        shaper.sample_after(time.time() + 60)


def test_a_small_answer_overtakes_a_bulk_transfer(server: str, tmp_path: Path) -> None:
    """Connections share the link in turns, as TCP flows do: a small range asked for during a
    bulk transfer waits for a piece of it, not for everything it has queued. Counted in the bulk
    transfer's bytes that arrive meanwhile, not timed."""
    # A slow link, so that the client's own time around the small request (longer on a loaded
    # machine) lets few bulk bytes through: 100 ms is 125 KiB at 10 Mbit/s.
    slow = Shaper(server, rtt_ms=2, rate_mbit=10, series_path=tmp_path / "slow.jsonl")
    received = [0]
    stop = threading.Event()

    def bulk() -> None:
        with requests.get(f"http://{slow.host}/big", stream=True, timeout=60) as response:
            for piece in response.iter_content(65536):
                received[0] += len(piece)
                if stop.is_set():
                    return

    reader = threading.Thread(target=bulk)
    try:
        reader.start()
        while received[0] < (1 << 20):  # the bulk transfer is under way, its queue full
            time.sleep(0.01)
        before = received[0]
        small = requests.get(f"http://{slow.host}/blob", headers={"Range": "bytes=0-999"}, timeout=60)
        meanwhile = received[0] - before
        assert small.content == BLOB[:1000]
        # Round robin: a piece or two of the bulk (32 KiB each) plus what the link carries in the
        # client's own overhead. First come, first served would have delivered all the bulk
        # transfer had queued at the bottleneck before the small answer: megabytes.
        assert meanwhile < 512 * 1024, meanwhile
    finally:
        stop.set()
        reader.join(timeout=60)
        slow.stop()
