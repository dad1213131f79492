"""The cold-start benchmark's network: a real registry on loopback and the link shaper before it.

Both are child processes that the harness stops in `finally` blocks (the shaper runs in its own
process group, killed as a group), so an error or Ctrl-C leaves nothing listening. Nothing here
listens on or connects to anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.registry_fixture import RunningRegistry, start_registry

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATS_WAIT_S = 5.0


@dataclass(frozen=True)
class LinkBytes:
    """Bytes the shaper carried: `down` from the registry to clients, `up` the other way."""

    up: int
    down: int

    def __sub__(self, other: LinkBytes) -> LinkBytes:
        return LinkBytes(self.up - other.up, self.down - other.down)


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


class Shaper:
    """`benchmarks.shaper` in front of `upstream`, with its byte counters read from a stats file."""

    def __init__(self, upstream: str, rtt_ms: float, rate_mbit: float, stats_path: Path) -> None:
        self.stats_path = stats_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.shaper", "--upstream", upstream, "--rtt-ms", str(rtt_ms),
             "--rate-mbit", str(rate_mbit), "--stats-file", str(stats_path)],
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

    def bytes_carried(self, after: float | None = None) -> LinkBytes:
        """The counters as of a moment later than `after` (wall clock; default: now).

        Every byte that reached a client before `after` is in a snapshot written after it.
        """
        moment = time.time() if after is None else after
        deadline = time.monotonic() + STATS_WAIT_S
        while True:
            try:
                with open(self.stats_path) as file:
                    stats = json.load(file)
                if float(stats["written_at"]) > moment:
                    return LinkBytes(int(stats["up"]), int(stats["down"]))
            except (FileNotFoundError, ValueError, KeyError):
                pass
            if self.process.poll() is not None:
                raise RuntimeError("the link shaper exited")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the link shaper has not updated {self.stats_path} for {STATS_WAIT_S} s")
            time.sleep(0.01)

    def stop(self) -> None:
        stop_group(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass(frozen=True)
class Network:
    """`registry.host` for setup traffic (pushes, conversion); `shaped_host` for measured pulls."""

    registry: RunningRegistry
    shaper: Shaper

    @property
    def direct_host(self) -> str:
        return self.registry.host

    @property
    def shaped_host(self) -> str:
        return self.shaper.host


@contextmanager
def network(root: Path, rtt_ms: float, rate_mbit: float) -> Iterator[Network]:
    """A fresh registry under `root` and a shaper in front of it; both stopped on the way out."""
    registry = start_registry(root / "registry")
    try:
        shaper = Shaper(registry.host, rtt_ms, rate_mbit, root / "shaper-stats.json")
        try:
            yield Network(registry, shaper)
        finally:
            shaper.stop()
    finally:
        registry.stop()
