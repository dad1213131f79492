"""The shaper's byte counters, as the cold-start harness reads them (`--stats-file`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.coldstart_services import LinkBytes, Shaper

PAYLOAD = b"x" * 300_000


def _serve(server: socket.socket) -> None:
    """Upstream: reads 4 bytes, answers PAYLOAD, closes."""
    while True:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        with connection:
            if connection.recv(4):
                connection.sendall(PAYLOAD)


@pytest.fixture
def upstream() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    threading.Thread(target=_serve, args=(server,), daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _fetch(host: str) -> int:
    address, _, port = host.rpartition(":")
    received = 0
    with socket.create_connection((address, int(port))) as connection:
        connection.sendall(b"data")
        while data := connection.recv(1 << 16):
            received += len(data)
    return received


def test_stats_file_counts_every_byte_both_ways(upstream: int, tmp_path: Path) -> None:
    shaper = Shaper(f"127.0.0.1:{upstream}", rtt_ms=2, rate_mbit=400, stats_path=tmp_path / "stats.json")
    try:
        before = shaper.bytes_carried()
        assert before == LinkBytes(0, 0)
        assert _fetch(shaper.host) == len(PAYLOAD)
        assert _fetch(shaper.host) == len(PAYLOAD)
        carried = shaper.bytes_carried(after=time.time()) - before
    finally:
        shaper.stop()
    assert carried == LinkBytes(up=8, down=2 * len(PAYLOAD))
    assert shaper.process.poll() is not None


def test_shaper_stops_with_its_group(upstream: int, tmp_path: Path) -> None:
    shaper = Shaper(f"127.0.0.1:{upstream}", rtt_ms=2, rate_mbit=400, stats_path=tmp_path / "stats.json")
    shaper.stop()
    assert shaper.process.returncode is not None
    with pytest.raises(RuntimeError, match="exited"):
        shaper.bytes_carried(after=time.time() + 60)
