"""A TCP link shaper: adds round-trip time and caps bandwidth between a client and a server.

The kernel here has no netem, so the cold-start benchmark puts this proxy between the daemon
(or the OCI puller) and the registry. It models one shared link: each direction is a
bottleneck of `rate` bits per second followed by a one-way propagation delay of RTT/2. The
connections crossing it share the bottleneck as TCP flows converge to: round robin, a piece
(`PIECE_BYTES`) at a time among those with bytes waiting, so a small answer (a 4 KiB chunk, a
ping) waits behind one piece per busy connection, not behind every byte they have queued. Each
connection queues at most `FLOW_QUEUE_BYTES` at the bottleneck (what a router buffer lets a flow
keep there) and has at most `FLOW_WINDOW_BYTES` sent but not taken by the far end (its receive
window); a connection closed by either end drops what it had queued, as a reset sender would.
Usage:

    python3 -m benchmarks.shaper --upstream 127.0.0.1:5000 [--listen 127.0.0.1:0] \
        [--rtt-ms 20] [--rate-mbit 200] [--series-file FILE]

It prints `listening HOST:PORT` on stdout once it accepts connections, and runs until killed.
With `--series-file`, it appends to FILE every 50 ms one JSON line of what it has carried so far:

    {"t": UNIX_TIME, "up": BYTES, "down": BYTES, "requests": N, "responses": N,
     "in_flight": N, "peak_in_flight": N}

`up` and `down` count bytes as the shaper hands them to the far end (after the link's queue and
delay, just before the far end can have them), so a reader that waits for a line with `t` later
than the moment its transfer ended sees every byte of it, and the series shows when bytes arrived. `requests`, `responses` and the in-flight figures count the HTTP/1.1 messages in the
streams (`benchmarks.http_meter`): a request is in flight from its head's arrival until the last
byte of its response is delivered; `peak_in_flight` is the most in flight since the line before.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Callable

import trio

from benchmarks.http_meter import ConnectionMeter, RequestCounters

READ_SIZE = 64 * 1024
PIECE_BYTES = 32 * 1024  # the round robin's grain: what one connection sends before the next's turn
PACING_S = 0.001  # the bottleneck runs at most this far ahead of the clock (fewer wake-ups)
FLOW_QUEUE_BYTES = 64 * 1024
FLOW_WINDOW_BYTES = 4 << 20
SERIES_INTERVAL_S = 0.05


class Flow:
    """One connection's bytes in one direction: waiting at the bottleneck, then on the wire."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.waiting: collections.deque[bytes] = collections.deque()  # b"" is the end of the stream
        self.waiting_bytes = 0
        self.on_wire: collections.deque[tuple[float, bytes]] = collections.deque()  # (arrives at, piece)
        self.on_wire_bytes = 0
        self.closed = False
        self.has_room = trio.lowlevel.ParkingLot()  # the reader waits here while the queue is full
        self.has_arrivals = trio.lowlevel.ParkingLot()  # the writer waits here for the wire

    async def queue(self, data: bytes) -> None:
        """Put bytes read from the source in line for the bottleneck (b"" ends the stream)."""
        pieces = [data[at : at + PIECE_BYTES] for at in range(0, len(data), PIECE_BYTES)] or [b""]
        for piece in pieces:
            while self.waiting_bytes >= FLOW_QUEUE_BYTES and not self.closed:
                await self.has_room.park()
            if self.closed:
                return
            self.waiting.append(piece)
            self.waiting_bytes += len(piece)
            self.link.wants_turn(self)

    async def arrival(self) -> bytes | None:
        """The next piece once it has crossed the wire; None when the flow was closed."""
        while not self.on_wire and not self.closed:
            await self.has_arrivals.park()
        if self.closed:
            return None
        arrives_at, piece = self.on_wire[0]
        await trio.sleep_until(arrives_at)
        if self.closed:
            return None
        self.on_wire.popleft()
        self.on_wire_bytes -= len(piece)
        self.link.wants_turn(self)  # the window has room again
        return piece

    def close(self) -> None:
        """Either end went away: drop what waits, and wake both sides."""
        self.closed = True
        self.waiting.clear()
        self.waiting_bytes = 0
        self.has_room.unpark_all()
        self.has_arrivals.unpark_all()

    def can_send(self) -> bool:
        return bool(self.waiting) and not self.closed and self.on_wire_bytes < FLOW_WINDOW_BYTES


class Link:
    """One direction of the shaped link: a bottleneck shared round robin, then propagation delay."""

    def __init__(self, rate_bytes_per_s: float, one_way_delay_s: float) -> None:
        self.rate_bytes_per_s = rate_bytes_per_s
        self.one_way_delay_s = one_way_delay_s
        self.bytes_carried = 0  # counted as each piece is handed to the far end
        self._turns: collections.deque[Flow] = collections.deque()
        self._in_turns: set[Flow] = set()
        self._has_turns = trio.lowlevel.ParkingLot()
        self._free_at = 0.0

    def wants_turn(self, flow: Flow) -> None:
        if flow not in self._in_turns and flow.can_send():
            self._turns.append(flow)
            self._in_turns.add(flow)
            self._has_turns.unpark_all()

    async def run(self) -> None:
        """Send one piece at a time, each flow with bytes waiting in turn."""
        while True:
            while not self._turns:
                await self._has_turns.park()
            flow = self._turns.popleft()
            self._in_turns.discard(flow)
            if not flow.can_send():
                continue
            piece = flow.waiting.popleft()
            flow.waiting_bytes -= len(piece)
            flow.has_room.unpark_all()
            now = trio.current_time()
            self._free_at = max(self._free_at, now)
            if self.rate_bytes_per_s > 0:
                self._free_at += len(piece) / self.rate_bytes_per_s
            if not flow.closed:
                flow.on_wire.append((self._free_at + self.one_way_delay_s, piece))
                flow.on_wire_bytes += len(piece)
                flow.has_arrivals.unpark_all()
            self.wants_turn(flow)
            if self._free_at > now + PACING_S:
                await trio.sleep_until(self._free_at - PACING_S)  # keep at most PACING_S of sending ahead


Observer = Callable[[bytes], None]


def _ignore(data: bytes) -> None:
    pass


async def _pump(
    source: trio.SocketStream,
    sink: trio.SocketStream,
    link: Link,
    on_read: Observer = _ignore,
    on_delivered: Observer = _ignore,
) -> None:
    """Carry `source`'s bytes to `sink` through `link`, showing them to the observers on the way."""
    flow = Flow(link)

    async def read_side() -> None:
        while not flow.closed:
            try:
                data = await source.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if data:
                on_read(data)
            await flow.queue(data)
            if not data:
                return

    async def write_side() -> None:
        try:
            while True:
                piece = await flow.arrival()
                if piece is None:
                    return
                if not piece:
                    try:
                        await sink.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    return
                link.bytes_carried += len(piece)  # before the send: the far end never has bytes not yet counted
                on_delivered(piece)
                try:
                    await sink.send_all(piece)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
        finally:
            flow.close()  # the far end is gone, or the stream ended: nothing more to carry

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_side)
        nursery.start_soon(write_side)


async def _serve_connection(
    client: trio.SocketStream, upstream: tuple[str, int], up: Link, down: Link, counters: RequestCounters
) -> None:
    try:
        server = await trio.open_tcp_stream(*upstream)
    except OSError:
        await client.aclose()
        return
    meter = ConnectionMeter(counters)
    try:
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, server, up, meter.client_sent)
            nursery.start_soon(_pump, server, client, down, _ignore, meter.delivered)
    finally:
        meter.closed()


def series_line(up: Link, down: Link, counters: RequestCounters) -> str:
    """One sample of the counters, stamped with the wall clock (takes the interval's in-flight peak)."""
    sample = {
        "t": round(time.time(), 4),
        "up": up.bytes_carried,
        "down": down.bytes_carried,
        "requests": counters.requests,
        "responses": counters.responses,
        "in_flight": counters.in_flight,
        "peak_in_flight": counters.take_peak(),
    }
    return json.dumps(sample) + "\n"


async def _write_series(path: str, up: Link, down: Link, counters: RequestCounters) -> None:
    with open(path, "a", buffering=1) as file:  # line-buffered: each sample is visible once written
        while True:
            file.write(series_line(up, down, counters))
            await trio.sleep(SERIES_INTERVAL_S)


async def run(
    listen: tuple[str, int], upstream: tuple[str, int], rtt_ms: float, rate_mbit: float, series_file: str = ""
) -> None:
    rate = rate_mbit * 1e6 / 8
    up = Link(rate, rtt_ms / 2000)
    down = Link(rate, rtt_ms / 2000)
    counters = RequestCounters()
    listeners = await trio.open_tcp_listeners(listen[1], host=listen[0])
    host, port = listeners[0].socket.getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_connection(stream, upstream, up, down, counters)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(up.run)
        nursery.start_soon(down.run)
        if series_file:
            nursery.start_soon(_write_series, series_file, up, down, counters)
        nursery.start_soon(trio.serve_listeners, handler, listeners)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise argparse.ArgumentTypeError("the shaper only serves loopback addresses")
    return host, int(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", type=_address, required=True)
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0))
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--rate-mbit", type=float, default=200.0)
    parser.add_argument("--series-file", default="", help="append a JSON line of the counters every 50 ms")
    arguments = parser.parse_args()
    try:
        trio.run(
            run, arguments.listen, arguments.upstream, arguments.rtt_ms, arguments.rate_mbit, arguments.series_file
        )
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
