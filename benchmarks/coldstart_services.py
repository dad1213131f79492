"""The cold-start benchmark's network: a real registry on loopback and a link shaper before it per link.

All are child processes that the harness stops in `finally` blocks (the shaper runs in its own
process group, killed as a group), so an error or Ctrl-C leaves nothing listening. Nothing here
listens on or connects to anything but 127.0.0.1.
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.registry_server import RunningRegistry, start_registry

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERIES_WAIT_S = 5.0


@dataclass(frozen=True)
class LinkSample:
    """One line of the shaper's series: its counters at wall-clock time `t` (see `benchmarks.shaper`)."""

    t: float
    up: int
    down: int
    requests: int
    responses: int
    in_flight: int
    peak_in_flight: int  # the most in flight since the sample before


@dataclass(frozen=True)
class LinkWindow:
    """What the shaper carried between two samples: bytes each way, HTTP requests sent, the most
    in flight at once, and over time (seconds from an origin): the bytes received since the
    opening sample, and the most requests in flight in each sample's interval."""

    up: int
    down: int
    requests: int
    max_in_flight: int
    down_series: list[tuple[float, int]]
    in_flight_series: list[tuple[float, int]]


def stop_group(process: subprocess.Popen[str] | subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM the process group `process` leads, then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=timeout_s)


def _sample_time(sample: LinkSample) -> float:
    return sample.t


class Shaper:
    """`benchmarks.shaper` in front of `upstream`, its counters read from its series file."""

    def __init__(self, upstream: str, rtt_ms: float, rate_mbit: float, series_path: Path) -> None:
        self.rtt_ms, self.rate_mbit = rtt_ms, rate_mbit
        self.series_path = series_path
        self.samples: list[LinkSample] = []
        self._read_offset = 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.shaper", "--upstream", upstream, "--rtt-ms", str(rtt_ms),
             "--rate-mbit", str(rate_mbit), "--series-file", str(series_path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPOSITORY,
            start_new_session=True,
        )  # fmt: skip
        try:
            assert self.process.stdout is not None
            line = self.process.stdout.readline().strip()
            if not line.startswith("listening "):
                raise RuntimeError(f"the link shaper did not start (said {line!r})")
            self.host = line.split(" ", 1)[1]  # 127.0.0.1:PORT
        except BaseException:
            stop_group(self.process)
            raise

    def _read_new_samples(self) -> None:
        try:
            with open(self.series_path, "rb") as file:
                file.seek(self._read_offset)
                data = file.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self._read_offset += len(complete)
        for line in complete.splitlines():
            fields = json.loads(line)
            self.samples.append(LinkSample(**{name: fields[name] for name in LinkSample.__dataclass_fields__}))

    def sample_after(self, moment: float | None = None) -> LinkSample:
        """The first sample taken later than `moment` (wall clock; default: now), waiting for it.

        Every byte that reached a client before `moment` is counted in it.
        """
        moment = time.time() if moment is None else moment
        deadline = time.monotonic() + SERIES_WAIT_S
        while True:
            self._read_new_samples()
            position = bisect.bisect_right(self.samples, moment, key=_sample_time)
            if position < len(self.samples):
                return self.samples[position]
            if self.process.poll() is not None:
                raise RuntimeError("the link shaper exited")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the link shaper has not written {self.series_path} for {SERIES_WAIT_S} s")
            time.sleep(0.01)

    def window(self, opening: LinkSample, closing: LinkSample, origin: float) -> LinkWindow:
        """What was carried after the sample `opening` up to the sample `closing`; times in
        seconds from `origin` (wall clock)."""
        first = bisect.bisect_right(self.samples, opening.t, key=_sample_time)
        last = bisect.bisect_right(self.samples, closing.t, key=_sample_time)
        inside = self.samples[first:last]
        return LinkWindow(
            up=closing.up - opening.up,
            down=closing.down - opening.down,
            requests=closing.requests - opening.requests,
            max_in_flight=max((sample.peak_in_flight for sample in inside), default=0),
            down_series=[(round(sample.t - origin, 3), sample.down - opening.down) for sample in inside],
            in_flight_series=[(round(sample.t - origin, 3), sample.peak_in_flight) for sample in inside],
        )

    def stop(self) -> None:
        stop_group(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass(frozen=True)
class Network:
    """`registry.host` for setup traffic (pushes, conversion); a shaper per link for measured pulls."""

    registry: RunningRegistry
    shapers: tuple[Shaper, ...]

    @property
    def direct_host(self) -> str:
        return self.registry.host


@contextmanager
def network(root: Path, rtt_ms: float, rates_mbit: Sequence[float]) -> Iterator[Network]:
    """A fresh registry under `root` and a shaper in front of it for each rate (all with `rtt_ms`);
    all stopped on the way out."""
    registry = start_registry(root / "registry")
    shapers: list[Shaper] = []
    try:
        for rate_mbit in rates_mbit:
            shapers.append(Shaper(registry.host, rtt_ms, rate_mbit, root / f"shaper-{rate_mbit:g}mbit.jsonl"))
        yield Network(registry, tuple(shapers))
    finally:
        for shaper in shapers:
            shaper.stop()
        registry.stop()
