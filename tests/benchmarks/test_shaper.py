"""The link shaper of the cold-start benchmark really adds latency and caps bandwidth.

Only lower bounds are asserted: a shaper can only make a loaded machine slower, never faster,
so `at least RTT` and `no faster than the cap` hold however noisy the host is.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _serve(server: socket.socket) -> None:
    """Upstream: answers b"ping" with b"pong" and b"data" with PAYLOAD."""
    while True:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        with connection:
            while request := connection.recv(4):
                connection.sendall(b"pong" if request == b"ping" else PAYLOAD)


@pytest.fixture
def upstream() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    thread = threading.Thread(target=_serve, args=(server,), daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()


def _start_shaper(upstream_port: int, rtt_ms: float, rate_mbit: float) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.shaper",
            "--upstream",
            f"127.0.0.1:{upstream_port}",
            "--rtt-ms",
            str(rtt_ms),
            "--rate-mbit",
            str(rate_mbit),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPOSITORY,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("listening "), line
    return process, int(line.rsplit(":", 1)[1])


def _round_trip(port: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        started = time.perf_counter()
        connection.sendall(b"ping")
        assert connection.recv(4) == b"pong"
        return time.perf_counter() - started


def _download(port: int) -> tuple[float, bytes]:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        started = time.perf_counter()
        connection.sendall(b"data")
        received = bytearray()
        while len(received) < len(PAYLOAD):
            received += connection.recv(1 << 16)
        return time.perf_counter() - started, bytes(received)


def test_shaper_adds_round_trip_time(upstream: int) -> None:
    process, port = _start_shaper(upstream, rtt_ms=100, rate_mbit=1000)
    try:
        direct = min(_round_trip(upstream) for _ in range(3))
        shaped = min(_round_trip(port) for _ in range(3))
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    assert shaped >= 0.095, f"a 100 ms RTT link answered in {shaped * 1000:.1f} ms"
    assert shaped - direct >= 0.09


def test_shaper_caps_bandwidth_and_keeps_bytes(upstream: int) -> None:
    process, port = _start_shaper(upstream, rtt_ms=2, rate_mbit=16)  # 2 MB/s: 1 MiB takes >= 0.52 s
    try:
        seconds, data = _download(port)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    assert data == PAYLOAD
    rate_bytes_per_s = len(PAYLOAD) / seconds
    assert rate_bytes_per_s <= 2e6 * 1.05, f"{rate_bytes_per_s / 1e6:.2f} MB/s through a 2 MB/s link"
