"""The counters without a mount: Nydus's buckets, per-file and pattern records, backend counting
through `MeteredBackend`, the bounded error events, and the API's HTTP framing over a socket pair."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from daemon.apiserver import ApiError, Request, Response, serve_connection
from daemon.metrics import (
    BackendMetrics,
    ErrorEvents,
    Fop,
    FsMetrics,
    MeteredBackend,
    backend_latency_bucket,
    fop_latency_bucket,
    size_bucket,
)
from daemon.storage.backend import BackendError


@pytest.mark.parametrize(
    ("nbytes", "bucket"),
    [(0, 0), (1023, 0), (1024, 1), (4095, 1), (4096, 2), (16383, 2), (16384, 3), (65535, 3), (65536, 4),
     (131071, 4), (131072, 5), (524287, 5), (524288, 6), (1048575, 6), (1048576, 7), (1 << 30, 7)],
)  # fmt: skip
def test_size_buckets_are_nydus_s(nbytes: int, bucket: int) -> None:
    assert size_bucket(nbytes) == bucket


def test_latency_buckets_are_nydus_s() -> None:
    assert [fop_latency_bucket(us) for us in (0, 200, 201, 1000, 20_000, 50_001, 2_000_000, 2_000_001)] == [
        0, 0, 1, 1, 2, 4, 6, 7,
    ]  # fmt: skip
    assert [backend_latency_bucket(ms) for ms in (0, 1, 2, 20, 100, 101, 2000, 2001)] == [0, 0, 1, 1, 3, 4, 6, 7]


def test_fs_metrics_count_what_happened() -> None:
    metrics = FsMetrics("/", files=True, access_pattern=True, latest_read_files=True)
    metrics.done(Fop.OPEN, 5, 1000)
    metrics.read(5, 4096, 300_000)
    metrics.read(5, 100, 1000)
    metrics.failed(Fop.READ, 5, 1000)
    metrics.done(Fop.RELEASE, 5, 1000)
    metrics.done(Fop.GETATTR, 9, 1000)  # a file never opened gets no per-file record
    report = metrics.report()
    assert report["data_read"] == 4196 and report["nr_opens"] == 0
    assert report["block_count_read"] == [1, 0, 1, 0, 0, 0, 0, 0]
    assert report["read_latency_dist"] == [1, 1, 0, 0, 0, 0, 0, 0]
    hits, errors = report["fop_hits"], report["fop_errors"]
    assert isinstance(hits, list) and isinstance(errors, list)
    assert hits[Fop.READ] == 2 and errors[Fop.READ] == 1 and hits[Fop.OPEN] == hits[Fop.RELEASE] == 1
    files = metrics.files_report()
    assert list(files) == ["5"]
    assert files["5"]["data_read"] == 4196 and files["5"]["nr_open"] == 0 and files["5"]["total_fops"] == 4
    assert metrics.take_latest() == [5] and metrics.take_latest() == []
    (record,) = metrics.pattern_report()
    assert record["ino"] == 5 and record["nr_read"] == 2


class _Backend:
    def __init__(self) -> None:
        self.fail = False

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        if self.fail:
            raise BackendError("down", blob_id=blob_id)
        return bytes(length)

    def blob_size(self, blob_id: str) -> int:
        return 0

    def close(self) -> None:
        pass


def test_metered_backend_counts_reads_bytes_and_errors() -> None:
    inner, metrics = _Backend(), BackendMetrics("localfs")
    backend = MeteredBackend(inner, metrics)
    assert backend.read_range("a" * 64, 0, 5000) == bytes(5000)
    inner.fail = True
    with pytest.raises(BackendError):
        backend.read_range("a" * 64, 0, 10)
    report = metrics.report()
    assert report["read_count"] == 2 and report["read_errors"] == 1 and report["read_amount_total"] == 5000
    assert report["read_count_block_size_dist"] == [0, 0, 1, 0, 0, 0, 0, 0]


def test_error_events_are_bounded_in_count_and_bytes() -> None:
    events = ErrorEvents(max_errors=3, max_size=1000)
    log = logging.getLogger("test-events")
    log.addHandler(events)
    try:
        log.warning("not an error")
        for number in range(5):
            log.error("failure %d", number)
        log.error("x" * 2000)
    finally:
        log.removeHandler(events)
    report = events.report()
    assert report["total_errors"] == 6
    errors = report["errors"]
    assert isinstance(errors, list) and len(errors) == 1 and errors[0].endswith("x" * 100)
    assert report["total_size"] == len(errors[0]) <= 1000


async def _exchange(raw: bytes) -> bytes:
    """What the API's framing answers to `raw`, with a handler that echoes the request."""

    async def echo(request: Request) -> Response:
        if request.path == "/fail":
            raise ApiError(409, "Conflict", "no")
        return Response(200, {"method": request.method, "path": request.path, "query": request.query,
                              "body": request.body.decode()})  # fmt: skip

    left, right = trio.socket.socketpair()
    server, client = trio.SocketStream(left), trio.SocketStream(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, echo)
        await client.send_all(raw)
        received = b""
        with trio.fail_after(5):
            while chunk := await client.receive_some(65536):
                received += chunk
    await client.aclose()
    return received


@pytest.mark.trio
async def test_framing_keep_alive_bodies_queries_and_errors() -> None:
    body = json.dumps({"a": 1}).encode()
    raw = (
        b"PUT /api/v1/daemon?x=1&y=%2Fsub HTTP/1.1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        + b"GET /fail HTTP/1.1\r\n\r\n"
        + b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    answer = await _exchange(raw)
    parts = answer.split(b"HTTP/1.1 ")[1:]
    assert [part.split(b" ", 1)[0] for part in parts] == [b"200", b"409", b"200"]
    first = json.loads(parts[0].split(b"\r\n\r\n", 1)[1])
    assert first == {"method": "PUT", "path": "/api/v1/daemon", "query": {"x": "1", "y": "/sub"}, "body": '{"a": 1}'}
    assert json.loads(parts[1].split(b"\r\n\r\n", 1)[1]) == {"code": "Conflict", "message": "no"}
    assert b"Connection: close" in parts[2]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"501"),
        (b"GET / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", b"413"),
        (b"GET /\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * (70 << 10), b"431"),
    ],
    ids=["chunked", "huge-body", "bad-request-line", "huge-headers"],
)
@pytest.mark.trio
async def test_framing_refuses_what_it_does_not_take(raw: bytes, status: bytes) -> None:
    answer = await _exchange(raw)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert b'"code"' in answer and b"Connection: close" in answer
