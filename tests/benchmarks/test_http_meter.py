"""The HTTP/1.1 framing the shaper counts requests with (`benchmarks.http_meter`), fed byte streams
cut at every possible point: a count must not depend on how TCP split the bytes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.http_meter import ConnectionMeter, RequestCounters

GET = b"GET /v2/r/blobs/sha256:1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-9\r\n\r\n"
HEAD = b"HEAD /v2/r/manifests/t HTTP/1.1\r\nHost: h\r\n\r\n"
POST = b"POST /v2/r/blobs/uploads/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nHELLO"
RESPONSE_206 = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\r\n0123456789"
RESPONSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"  # a HEAD's answer has no body
RESPONSE_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n"
RESPONSE_202 = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


def _cuts(data: bytes) -> Iterator[list[bytes]]:
    """`data` whole, byte by byte, and split in two at every position."""
    yield [data]
    yield [data[index : index + 1] for index in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]


def _feed(meter: ConnectionMeter, requests: list[bytes], responses: list[bytes]) -> None:
    for piece in requests:
        meter.client_sent(piece)
    for piece in responses:
        meter.delivered(piece)


@pytest.mark.parametrize(
    ("requests", "responses"),
    [
        (GET, RESPONSE_206),
        (HEAD, RESPONSE_HEAD),
        (GET, RESPONSE_CHUNKED),
        (POST, RESPONSE_202),
        (GET + HEAD + GET, RESPONSE_206 + RESPONSE_HEAD + RESPONSE_CHUNKED),  # keep-alive, pipelined
    ],
    ids=["range-get", "head", "chunked", "request-body", "pipelined"],
)
def test_requests_and_responses_counted_however_the_stream_is_cut(requests: bytes, responses: bytes) -> None:
    expected = requests.count(b" HTTP/1.1\r\n")
    for request_pieces in _cuts(requests):
        for response_pieces in (*_cuts(responses),) if len(requests) < 100 else ([responses],):
            counters = RequestCounters()
            meter = ConnectionMeter(counters)
            for piece in request_pieces:
                meter.client_sent(piece)
            assert (counters.requests, counters.in_flight) == (expected, expected)
            for piece in response_pieces:
                meter.delivered(piece)
            assert (counters.responses, counters.in_flight, counters.peak_in_flight) == (expected, 0, expected)


def test_a_response_completes_only_with_its_last_byte() -> None:
    counters = RequestCounters()
    meter = ConnectionMeter(counters)
    meter.client_sent(GET)
    meter.delivered(RESPONSE_206[:-1])
    assert (counters.responses, counters.in_flight) == (0, 1)
    meter.delivered(RESPONSE_206[-1:])
    assert (counters.responses, counters.in_flight) == (1, 0)


def test_interim_answers_are_not_responses() -> None:
    counters = RequestCounters()
    meter = ConnectionMeter(counters)
    meter.client_sent(POST)
    meter.delivered(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert (counters.responses, counters.in_flight) == (0, 1)
    meter.delivered(RESPONSE_202)
    assert (counters.responses, counters.in_flight) == (1, 0)


def test_a_body_without_length_ends_with_the_connection_and_unanswered_requests_end_too() -> None:
    counters = RequestCounters()
    meter = ConnectionMeter(counters)
    meter.client_sent(GET + GET)
    meter.delivered(b"HTTP/1.1 200 OK\r\n\r\nall of it until close")
    assert (counters.responses, counters.in_flight) == (0, 2)
    meter.closed()
    assert (counters.requests, counters.responses, counters.in_flight) == (2, 1, 0)


def test_a_stream_that_is_not_http_is_not_counted() -> None:
    counters = RequestCounters()
    meter = ConnectionMeter(counters)
    meter.client_sent(b"\x16\x03\x01 a TLS hello, say\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    assert (counters.requests, meter.requests.broken) == (0, True)
    endless = ConnectionMeter(counters)
    for _ in range(20):
        endless.client_sent(b"ping" * 1000)  # no head grows without bound
    assert (counters.requests, endless.requests.broken, endless.requests.head) == (0, True, b"")


def test_peak_is_per_interval() -> None:
    counters = RequestCounters()
    meters = [ConnectionMeter(counters) for _ in range(3)]
    for meter in meters:
        meter.client_sent(GET)
    for meter in meters:
        meter.delivered(RESPONSE_206)
    assert counters.take_peak() == 3
    assert counters.take_peak() == 0  # nothing in flight since
    meters[0].client_sent(GET)
    assert counters.take_peak() == 1
    assert counters.take_peak() == 1  # still in flight
