"""A TCP link shaper: adds round-trip time and caps bandwidth between a client and a server.

The kernel here has no netem, so the cold-start benchmark puts this proxy between the daemon
(or the OCI puller) and the registry. It models one shared link: each direction is a
bottleneck of `rate` bits per second that every connection shares (bytes queue for it in
arrival order), followed by a one-way propagation delay of RTT/2. Usage:

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
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from benchmarks.http_meter import ConnectionMeter, RequestCounters

READ_SIZE = 64 * 1024
QUEUE_PIECES = 64
SERIES_INTERVAL_S = 0.05


@dataclass
class Link:
    """One direction of the shaped link: a serialising bottleneck plus propagation delay."""

    rate_bytes_per_s: float
    one_way_delay_s: float
    free_at: float = 0.0
    bytes_carried: int = 0  # counted as each piece is handed to the far end

    def schedule(self, now: float, size: int) -> float:
        """When a piece of `size` bytes that arrived at `now` reaches the other end."""
        start = max(now, self.free_at)
        self.free_at = start + (size / self.rate_bytes_per_s if self.rate_bytes_per_s > 0 else 0.0)
        return self.free_at + self.one_way_delay_s


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
    send_channel, receive_channel = trio.open_memory_channel[tuple[float, bytes]](QUEUE_PIECES)

    async def read_side() -> None:
        async with send_channel:
            while True:
                try:
                    data = await source.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if data:
                    on_read(data)
                deliver_at = link.schedule(trio.current_time(), len(data)) if data else trio.current_time()
                try:
                    await send_channel.send((deliver_at, data))
                except trio.BrokenResourceError:
                    return  # the far end went away (the writer stopped): nothing more to carry
                if not data:
                    return

    async def write_side() -> None:
        async with receive_channel:
            async for deliver_at, data in receive_channel:
                await trio.sleep_until(deliver_at)
                if not data:
                    try:
                        await sink.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    return
                link.bytes_carried += len(data)  # before the send: the far end never has bytes not yet counted
                on_delivered(data)
                try:
                    await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

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
