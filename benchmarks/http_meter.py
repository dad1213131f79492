"""Counting HTTP/1.1 requests and responses in the two byte streams of a proxied connection.

The link shaper carries plain HTTP/1.1 between the host and the registry. To say how many range
requests a start sent and how many were outstanding at once, independently of the daemon's own
account, it feeds each connection's bytes through a `ConnectionMeter`: the client-to-server
stream is split into requests (request line, headers, a body framed by Content-Length or
chunked), the server-to-client stream into responses (a HEAD's, a 1xx's, a 204's and a 304's
have no body; otherwise Content-Length, chunked, or until the connection closes). A request is
in flight from the moment its head has been read until the last byte of its response has been
delivered, or its connection closed. A stream that does not start like HTTP is left alone.

Parsing is incremental and never holds more than one message head: body bytes are skipped by
counting, so a 200 MB layer costs no copies.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024  # a longer head than this is not HTTP we understand: stop parsing
UNTIL_CLOSE = 1 << 62  # the length of a body that ends with its connection
_REQUEST_LINE = re.compile(rb"^([A-Z]+) \S+ HTTP/1\.[01]$")
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})")
_NO_BODY_STATUSES = (204, 304)


@dataclass
class RequestCounters:
    """What every connection's meter adds to: the shaper reports these."""

    requests: int = 0  # request heads read from clients
    responses: int = 0  # responses delivered in full
    in_flight: int = 0  # requests sent whose response has not completed
    peak_in_flight: int = 0  # the most in flight since `take_peak` last ran

    def started(self) -> None:
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def finished(self, completed: bool) -> None:
        self.in_flight -= 1
        if completed:
            self.responses += 1

    def take_peak(self) -> int:
        """The peak since the last call; the next interval's peak starts from what is in flight now."""
        peak = self.peak_in_flight
        self.peak_in_flight = self.in_flight
        return peak


@dataclass(frozen=True)
class Head:
    """A message head: its first line and the headers that frame its body (names lower-cased)."""

    first_line: bytes
    content_length: int | None
    chunked: bool


def parse_head(raw: bytes) -> Head | None:
    """The head of `raw` (everything before the blank line), or None if it is not well formed."""
    lines = raw.split(b"\r\n")
    content_length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            if not value.isdigit():
                return None
            content_length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
    return Head(lines[0], content_length, chunked)


class BodySkipper:
    """Consumes one message body: `length` bytes, or chunked framing to its last chunk."""

    def __init__(self, length: int | None, chunked: bool) -> None:
        self.remaining = 0 if length is None else length
        self.chunked = chunked
        self.line = b""  # a chunk-size line or the trailer being read
        self.state = "size" if chunked else "data"
        self.done = not chunked and self.remaining == 0

    def feed(self, data: bytes, start: int) -> int:
        """Consume from `data[start:]`; returns where the body ended (or `len(data)` if it has not)."""
        position = start
        while not self.done and position < len(data):
            if self.state == "data":
                taken = min(self.remaining, len(data) - position)
                self.remaining -= taken
                position += taken
                if self.remaining == 0:
                    if self.chunked:
                        self.state = "crlf"
                        self.remaining = 2
                    else:
                        self.done = True
            elif self.state == "crlf":  # the CRLF after a chunk's data
                taken = min(self.remaining, len(data) - position)
                self.remaining -= taken
                position += taken
                if self.remaining == 0:
                    self.state = "size"
            else:  # "size" or "trailer": a line at a time
                end = data.find(b"\n", position)
                if end < 0:
                    self.line += data[position:]
                    return len(data)
                line = (self.line + data[position:end]).strip()
                self.line = b""
                position = end + 1
                if self.state == "trailer":
                    self.done = not line
                else:
                    size = int(line.split(b";", 1)[0] or b"0", 16)
                    if size == 0:
                        self.state = "trailer"
                    else:
                        self.state, self.remaining = "data", size
        return position


class NotHttp(Exception):
    """A stream that is not HTTP/1.1 we can frame: its meter stops parsing it."""


HeadHandler = Callable[[Head], "BodySkipper | None"]


class _Stream:
    """One direction of a connection, split into heads and skipped bodies."""

    def __init__(self, on_head: HeadHandler, on_body_end: Callable[[], None]) -> None:
        self.on_head = on_head  # returns the body that follows the head, or None when there is none
        self.on_body_end = on_body_end
        self.head = b""
        self.body: BodySkipper | None = None
        self.broken = False

    def feed(self, data: bytes) -> None:
        position = 0
        while position < len(data) and not self.broken:
            if self.body is not None:
                position = self.body.feed(data, position)
                if self.body.done:
                    self.body = None
                    self.on_body_end()
                continue
            if self.head:  # a head begun in earlier pieces: its end may straddle the cut
                data, position = self.head + data[position:], 0
                self.head = b""
            end = data.find(b"\r\n\r\n", position)
            if end < 0:
                self.head = data[position:]
                self.broken = len(self.head) > MAX_HEAD_BYTES
                if self.broken:
                    self.head = b""
                return
            raw = data[position:end].lstrip(b"\r\n")
            position = end + 4
            head = parse_head(raw)
            try:
                if head is None:
                    raise NotHttp(raw[:80])
                self.body = self.on_head(head)
            except NotHttp:
                self.broken = True


class ConnectionMeter:
    """Requests and responses of one proxied connection, added to the shared `counters`."""

    def __init__(self, counters: RequestCounters) -> None:
        self.counters = counters
        self.unanswered: deque[bytes] = deque()  # methods of requests whose response has not begun
        self.answering = False  # a response's body is being read
        self.until_close = False  # ... and it ends when the connection does
        self.requests = _Stream(self._request_head, lambda: None)
        self.responses = _Stream(self._response_head, self._response_end)

    def client_sent(self, data: bytes) -> None:
        """Bytes read from the client (the requests' direction)."""
        self.requests.feed(data)

    def delivered(self, data: bytes) -> None:
        """Bytes delivered to the client (the responses' direction)."""
        self.responses.feed(data)

    def closed(self) -> None:
        """The connection ended: whatever is still in flight ends with it."""
        if self.answering:
            self.counters.finished(completed=self.until_close)
            self.answering = False
        while self.unanswered:
            self.unanswered.popleft()
            self.counters.finished(completed=False)

    def _request_head(self, head: Head) -> BodySkipper | None:
        match = _REQUEST_LINE.match(head.first_line)
        if match is None:
            raise NotHttp(head.first_line)
        self.counters.started()
        self.unanswered.append(match.group(1))
        body = BodySkipper(head.content_length, head.chunked)
        return None if body.done else body

    def _response_head(self, head: Head) -> BodySkipper | None:
        match = _STATUS_LINE.match(head.first_line)
        if match is None or not self.unanswered:
            raise NotHttp(head.first_line)
        status = int(match.group(1))
        if 100 <= status < 200:
            if status == 101:
                raise NotHttp(head.first_line)  # switched protocols: no longer HTTP
            return None  # an interim answer: the response proper follows
        method = self.unanswered.popleft()
        self.answering = True
        if method == b"HEAD" or status in _NO_BODY_STATUSES:
            body = BodySkipper(0, chunked=False)
        elif head.chunked or head.content_length is not None:
            body = BodySkipper(head.content_length, head.chunked)
        else:
            self.until_close = True
            body = BodySkipper(UNTIL_CLOSE, chunked=False)
        if body.done:
            self._response_end()
            return None
        return body

    def _response_end(self) -> None:
        self.answering = False
        self.counters.finished(completed=True)
