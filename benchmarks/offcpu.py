"""Where a container start waits: each workload's time off the CPU, by what the kernel waited in.

The cold-start harness shows how long a start takes; this shows what its process waited for.
Record a harness run with the scheduler's switch events and their kernel call chains, then read
the recording (`perf` is Debian's `linux-perf`; both as root):

    perf record -a -g -e sched:sched_switch -e sched:sched_wakeup -o /tmp/offcpu.data -- \\
        python3 -m benchmarks.coldstart --images debian-sci --rate-mbit 400 --runs 1 \\
        --modes lazy-prefetch,lazy-warm
    python3 -m benchmarks.offcpu /tmp/offcpu.data

A workload is a process that runc's init (`runc:[2:INIT]`) turned into the container's command;
they are listed in the order they started, which is the order of the harness's runs (the OCI
and local-disk runs included). For each: its threads' time on a CPU; and of its main thread
(the start itself: helper threads mostly sleep), the time it was runnable but waited for a CPU
(known only if wake-ups were recorded, else counted as off the CPU) and the time off the CPU by
the call chain it left through: a FUSE request of each kind (the daemon answering), page I/O of
a fault or a `read` (a FUSE read in flight, or the disk), or other.
It writes `offcpu.json` and `offcpu.md` under `benchmarks/results`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from benchmarks.common import markdown_table, write_results

RUNC_INIT = "runc:[2:INIT]"
MAX_STACK = 8
# (label, prefixes of functions that must all be in the chain), first match wins.
WAIT_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("page I/O of a fault", ("folio_wait_bit_common", "filemap_fault")),
    ("page I/O of a read", ("folio_wait_bit_common", "filemap_read")),
    ("page I/O, other", ("folio_wait_bit_common",)),
    ("FUSE lookup", ("__fuse_simple_request", "fuse_lookup")),
    ("FUSE open", ("__fuse_simple_request", "fuse_open")),
    ("FUSE open", ("__fuse_simple_request", "fuse_do_open")),
    ("FUSE readdir", ("__fuse_simple_request", "fuse_readdir")),
    ("FUSE readlink", ("__fuse_simple_request", "fuse_get_link")),
    ("FUSE, other", ("__fuse_simple_request",)),
)
# One line of `perf sched timehist -g`: time, [cpu], task, wait, sched delay, run (ms), chain.
_LINE = re.compile(
    r"^\s*(?P<time>\d+\.\d+)\s+\[\d+\]\s+(?P<task>.+?)\[(?P<tid>\d+)(?:/(?P<pid>\d+))?\]"
    r"\s+(?P<wait>\d+\.\d+)\s+(?P<delay>\d+\.\d+)\s+(?P<run>\d+\.\d+)\s*(?P<chain>.*)$"
)


class OffCpuError(Exception):
    """The recording cannot be read (say which and why)."""


@dataclass
class Workload:
    """One container workload: its process id, command and where its time went."""

    pid: int
    command: str = ""
    first_s: float = 0.0
    last_s: float = 0.0
    on_cpu_ms: float = 0.0  # all its threads
    runnable_ms: float = 0.0  # its main thread, as the two below
    off_cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def span_s(self) -> float:
        return self.last_s - self.first_s


def wait_kind(chain: str) -> str:
    """What a switch out of the CPU waited in, from its kernel call chain ("a <- b <- c")."""
    functions = chain.split(" <- ")
    for label, needed in WAIT_KINDS:  # a prefix names a family: fuse_readdir_uncached is a readdir
        if all(any(function.startswith(prefix) for function in functions) for prefix in needed):
            return label
    return "other"


def workloads(timehist: Iterable[str]) -> list[Workload]:
    """The workloads of `perf sched timehist -g` output, in the order they started.

    Each line is a switch away from a task: the wait (off the CPU) and sched delay before it ran
    and how long it ran, then the chain it left through. A line's wait is charged to the chain of
    the same thread's previous line, which is where it went to sleep.
    """
    found: dict[int, Workload] = {}
    process_of: dict[int, int] = {}  # thread -> workload process, for threads of workloads
    left_through: dict[int, str] = {}  # thread -> the chain of its last switch out
    for line in timehist:
        match = _LINE.match(line)
        if match is None:
            continue
        tid = int(match["tid"])
        pid = int(match["pid"] or tid)
        task = match["task"]
        when = float(match["time"])
        if task == RUNC_INIT and tid == pid and pid not in found:
            found[pid] = Workload(pid, first_s=when)
        if pid in found:
            process_of[tid] = pid
        workload = found.get(process_of.get(tid, -1))
        if workload is not None:
            if tid == workload.pid and task != RUNC_INIT:
                workload.command = task
            workload.last_s = when
            workload.on_cpu_ms += float(match["run"])
            previous = left_through.get(tid)
            if tid == workload.pid and previous is not None:
                workload.runnable_ms += float(match["delay"])
                kind = wait_kind(previous)
                workload.off_cpu_ms[kind] = workload.off_cpu_ms.get(kind, 0.0) + float(match["wait"])
        left_through[tid] = match["chain"]
    return [workload for workload in found.values() if workload.command]


def read_recording(path: str) -> list[str]:
    try:
        done = subprocess.run(
            ["perf", "sched", "timehist", "-g", "--max-stack", str(MAX_STACK), "-i", path],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        raise OffCpuError("perf is not installed (Debian: apt-get install linux-perf)") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise OffCpuError(f"{path}: perf sched timehist failed: {reason}")
    return done.stdout.splitlines()


def report(found: list[Workload]) -> str:
    kinds = sorted({kind for workload in found for kind in workload.off_cpu_ms})
    header = ["#", "command", "span s", "on CPU s", "main thread: waiting for a CPU s", "off CPU s"]
    header += [f"{kind} s" for kind in kinds]
    rows = []
    for number, workload in enumerate(found, 1):
        off = workload.off_cpu_ms
        rows.append(
            [
                number,
                f"{workload.command} (pid {workload.pid})",
                f"{workload.span_s:.2f}",
                f"{workload.on_cpu_ms / 1000:.2f}",
                f"{workload.runnable_ms / 1000:.2f}",
                f"{sum(off.values()) / 1000:.2f}",
                *[f"{off.get(kind, 0.0) / 1000:.2f}" for kind in kinds],
            ]
        )
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("recording", help="a `perf record -a -g -e sched:sched_switch -e sched:sched_wakeup` file")
    args = parser.parse_args(argv)
    try:
        found = workloads(read_recording(args.recording))
    except OffCpuError as error:
        print(f"offcpu: {error}", file=sys.stderr)
        return 1
    if not found:
        print(f"offcpu: {args.recording}: no container workload (no process started by {RUNC_INIT})", file=sys.stderr)
        return 1
    table = report(found)
    print(table)
    data = {
        "recording": args.recording,
        "workloads": [
            {
                "pid": workload.pid,
                "command": workload.command,
                "span_s": round(workload.span_s, 4),
                "on_cpu_s": round(workload.on_cpu_ms / 1000, 4),
                "waiting_for_cpu_s": round(workload.runnable_ms / 1000, 4),
                "off_cpu_s": {kind: round(ms / 1000, 4) for kind, ms in workload.off_cpu_ms.items()},
            }
            for workload in found
        ],
    }
    print("wrote", write_results("offcpu", data, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
