"""A TCP link shaper: adds round-trip time and caps bandwidth between a client and a server.

The kernel here has no netem, so the cold-start benchmark puts this proxy between the daemon
(or the OCI puller) and the registry. It models one shared link: each direction is a
bottleneck of `rate` bits per second that every connection shares (bytes queue for it in
arrival order), followed by a one-way propagation delay of RTT/2. Usage:

    python3 -m benchmarks.shaper --upstream 127.0.0.1:5000 [--listen 127.0.0.1:0] \
        [--rtt-ms 20] [--rate-mbit 200] [--stats-file FILE]

It prints `listening HOST:PORT` on stdout once it accepts connections, and runs until killed.
With `--stats-file`, it rewrites FILE (atomically, every 50 ms) with the bytes each direction
has carried so far, `{"up": N, "down": N, "written_at": UNIX_TIME}`: a reader that waits for a
`written_at` later than the moment its transfer ended sees every byte of that transfer counted
(a byte is counted when the shaper reads it, before it can reach the other end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

import trio

READ_SIZE = 64 * 1024
QUEUE_PIECES = 64
STATS_INTERVAL_S = 0.05


@dataclass
class Link:
    """One direction of the shaped link: a serialising bottleneck plus propagation delay."""

    rate_bytes_per_s: float
    one_way_delay_s: float
    free_at: float = 0.0
    bytes_carried: int = 0

    def schedule(self, now: float, size: int) -> float:
        """When a piece of `size` bytes that arrived at `now` reaches the other end."""
        start = max(now, self.free_at)
        self.free_at = start + (size / self.rate_bytes_per_s if self.rate_bytes_per_s > 0 else 0.0)
        self.bytes_carried += size
        return self.free_at + self.one_way_delay_s


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, link: Link) -> None:
    send_channel, receive_channel = trio.open_memory_channel[tuple[float, bytes]](QUEUE_PIECES)

    async def read_side() -> None:
        async with send_channel:
            while True:
                try:
                    data = await source.receive_some(READ_SIZE)
                except trio.BrokenResourceError:
                    data = b""
                deliver_at = link.schedule(trio.current_time(), len(data)) if data else trio.current_time()
                await send_channel.send((deliver_at, data))
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
                try:
                    await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_side)
        nursery.start_soon(write_side)


async def _serve_connection(client: trio.SocketStream, upstream: tuple[str, int], up: Link, down: Link) -> None:
    try:
        server = await trio.open_tcp_stream(*upstream)
    except OSError:
        await client.aclose()
        return
    async with client, server, trio.open_nursery() as nursery:
        nursery.start_soon(_pump, client, server, up)
        nursery.start_soon(_pump, server, client, down)


def write_stats(path: str, up: Link, down: Link) -> None:
    """Replace `path` with the byte counts of both directions, stamped with the wall clock."""
    temp_path = f"{path}.tmp"
    with open(temp_path, "w") as file:
        json.dump({"up": up.bytes_carried, "down": down.bytes_carried, "written_at": time.time()}, file)
    os.replace(temp_path, path)


async def _report_stats(path: str, up: Link, down: Link) -> None:
    while True:
        write_stats(path, up, down)
        await trio.sleep(STATS_INTERVAL_S)


async def run(
    listen: tuple[str, int], upstream: tuple[str, int], rtt_ms: float, rate_mbit: float, stats_file: str = ""
) -> None:
    rate = rate_mbit * 1e6 / 8
    up = Link(rate, rtt_ms / 2000)
    down = Link(rate, rtt_ms / 2000)
    listeners = await trio.open_tcp_listeners(listen[1], host=listen[0])
    host, port = listeners[0].socket.getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_connection(stream, upstream, up, down)

    async with trio.open_nursery() as nursery:
        if stats_file:
            nursery.start_soon(_report_stats, stats_file, up, down)
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
    parser.add_argument("--stats-file", default="", help="keep the byte counts of both directions in this JSON file")
    arguments = parser.parse_args()
    try:
        trio.run(run, arguments.listen, arguments.upstream, arguments.rtt_ms, arguments.rate_mbit, arguments.stats_file)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
