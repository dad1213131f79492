"""Many hosts starting one image at once: straight to the origin, through a mirror, through a proxy.

    python3 -m benchmarks.cluster [--image debian-python] [--hosts 1,2,4,8] [--rtt-ms 20]
        [--rate-mbit 200] [--output-dir DIR]

The origin is Debian's `docker-registry` behind the link shaper (`benchmarks.shaper`): every
byte that reaches the origin crosses one shaped link, and that link's counters are the figure
that matters for a fleet. N simulated hosts (each its own `nydusd --image`, cache `work_dir`,
mountpoint, overlay and `runc` container, all on this machine) start the image's workload at
the same moment, four ways:

- `direct`: every host reads from the origin;
- `mirror-cold`: every host reads through a pull-through mirror (a second `docker-registry`
  with `proxy: remoteurl:` pointing through the shaper) that has never seen the image;
- `mirror-warm`: the same mirror after `nydusify warm` (what an operator runs after `convert`);
- `proxy`: every host reads through `benchmarks.dragonfly_standin`, a STAND-IN for Dragonfly's
  dfdaemon (a forward proxy with a piece cache shared by all hosts; no P2P, memory only).

Per run: the time from the common start to the last host's workload exit, the bytes the origin
link carried during the start and in all (a cold mirror goes on caching whole blobs after the
hosts are done: counted until the link is idle), each host's fetched bytes and the daemons' CPU
time (from `nydusd --timeline-out`), and the mirror's or proxy's CPU. Writes `cluster.json`,
`cluster.md` and `cluster.png` to benchmarks/results/ (or `--output-dir`). Needs root (mounts,
runc, drop_caches), /dev/fuse, `docker-registry` and `runc`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.coldstart import NYDUS_TAG, Prepared, prepare, registry_backend_config
from benchmarks.coldstart_images import IMAGES, build_image
from benchmarks.coldstart_runtime import Phases, drop_page_cache, lazy_rootfs, run_container
from benchmarks.coldstart_services import REPOSITORY, Shaper, network, stop_group
from benchmarks.coldstart_timeline import read_timeline, summarise
from benchmarks.common import RESULTS_DIR, machine, markdown_table
from benchmarks.registry_server import RunningRegistry, start_registry
from builder.warm import warm
from daemon.storage.registry import Mirror, RegistryClient, RegistryOptions
from rafs.oci import ImageReference

MODES = ("direct", "mirror-cold", "mirror-warm", "proxy")
IDLE_S = 1.0  # the origin link counts as idle after this long without a byte
IDLE_WAIT_S = 120.0
MiB = 1 << 20


@dataclass(frozen=True)
class Route:
    """How the hosts of one run reach the image: extra backend config, and the service's pid."""

    backend: dict[str, object]
    service_pid: int | None
    describe: str


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def pull_through_mirror(root: Path, origin: str) -> Iterator[RunningRegistry]:
    mirror = start_registry(root, remote_url=f"http://{origin}")
    try:
        yield mirror
    finally:
        mirror.stop()


@contextmanager
def dragonfly_standin() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The stand-in as a process of its own (its CPU is not the harness's); its address."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.dragonfly_standin"],
        stdout=subprocess.PIPE, text=True, cwd=REPOSITORY, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("listening "):
            raise RuntimeError(f"the dfdaemon stand-in did not start (said {line!r})")
        yield line.split(" ", 1)[1], process
    finally:
        stop_group(process)
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def route(mode: str, root: Path, shaper: Shaper, image: Prepared) -> Iterator[Route]:
    """The mirror or proxy a run goes through (fresh for every run: cold means cold), or none."""
    if mode == "direct":
        yield Route({}, None, "origin")
    elif mode in ("mirror-cold", "mirror-warm"):
        with pull_through_mirror(root / "mirror", shaper.host) as mirror:
            if mode == "mirror-warm":
                options = RegistryOptions(docker_config="", mirrors=(Mirror(mirror.host, plain_http=True),))
                client = RegistryClient(options)
                try:
                    warm(client, ImageReference(shaper.host, image.repository, NYDUS_TAG))
                finally:
                    client.close()
            yield Route({"mirrors": [{"host": f"http://{mirror.host}"}]}, mirror.process.pid, mirror.host)
    else:
        with dragonfly_standin() as (address, process):
            proxy = {"url": f"http://{address}", "ping_url": f"http://{address}/server/ping", "check_interval": 1}
            yield Route({"proxy": proxy}, process.pid, address)


def wait_for_idle(shaper: Shaper) -> int:
    """The link's `down` counter once nothing has crossed for `IDLE_S` (or `IDLE_WAIT_S` passed)."""
    deadline = time.monotonic() + IDLE_WAIT_S
    last = shaper.sample_after()
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        sample = shaper.sample_after(time.time() - 0.1)  # one already written: the shaper may lag on a loaded machine
        if sample.down != last.down:
            last, still_since = sample, time.monotonic()
        elif time.monotonic() - still_since >= IDLE_S:
            break
    return last.down


def host_start(
    shaper: Shaper, image: Prepared, route_: Route, work: Path, start: threading.Barrier, number: int
) -> Callable[[], dict[str, object]]:
    """One host's start: its own daemon, cache, mountpoint and container; what it measured."""

    def run() -> dict[str, object]:
        config = registry_backend_config(shaper.host, image.repository, str(work / "cache"), prefetch=False)
        backend = config["device"]["backend"]["config"]  # type: ignore[index]
        backend.update(route_.backend)
        timeline_path = work / "timeline.json"
        args = ["--image", f"{shaper.host}/{image.repository}:{NYDUS_TAG}", "--timeline-out", str(timeline_path)]
        start.wait()
        phases = Phases()
        with lazy_rootfs(args, work / "mount", config, phases) as rootfs:
            run_container(work / "bundle", rootfs, image.built.spec.workload, f"cluster-{os.getpid()}-{number}")
            phases.mark("exit")
        daemon = summarise(read_timeline(timeline_path), phases.started_at)
        return {
            "started_at": phases.started_at,
            "exit_at": phases.events["exit"],
            "fetched_bytes": sum(daemon["bytes_by_priority"].values()),
            "requests": daemon["requests"],
            "failed_requests": daemon["failed_requests"],
            "cpu_s": daemon["cpu_s"],
        }

    return run


def run_once(shaper: Shaper, image: Prepared, mode: str, hosts: int, root: Path) -> dict[str, object]:
    """`hosts` hosts starting `image` at once in `mode`; the run's figures."""
    with route(mode, root / "route", shaper, image) as route_:
        drop_page_cache()
        service_cpu_before = cpu_seconds(route_.service_pid) if route_.service_pid else 0.0
        barrier = threading.Barrier(hosts + 1)
        results: list[dict[str, object] | BaseException] = [RuntimeError("did not run")] * hosts

        def host(number: int) -> None:
            try:
                results[number] = host_start(shaper, image, route_, root / f"host{number}", barrier, number)()
            except BaseException as error:  # reported below
                results[number] = error

        threads = [threading.Thread(target=host, args=(number,)) for number in range(hosts)]
        for thread in threads:
            thread.start()
        opening = shaper.sample_after()
        barrier.wait()
        began = time.time()
        for thread in threads:
            thread.join()
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise RuntimeError(f"{mode} with {hosts} hosts: {failures[0]}") from failures[0]
        done = [result for result in results if isinstance(result, dict)]
        last_exit = max(float(result["exit_at"]) for result in done)  # type: ignore[arg-type]
        during = shaper.sample_after(last_exit).down - opening.down
        total = wait_for_idle(shaper) - opening.down
        service_cpu = cpu_seconds(route_.service_pid) - service_cpu_before if route_.service_pid else 0.0
    return {
        "mode": mode,
        "hosts": hosts,
        "last_exit_s": round(last_exit - began, 3),
        "mean_exit_s": round(sum(float(r["exit_at"]) for r in done) / hosts - began, 3),  # type: ignore[arg-type, misc]
        "origin_bytes_during": during,
        "origin_bytes_total": total,
        "host_fetched_bytes": [int(r["fetched_bytes"]) for r in done],  # type: ignore[call-overload]
        "failed_requests": sum(int(r["failed_requests"]) for r in done),  # type: ignore[call-overload]
        "daemon_cpu_s": round(sum(float(r["cpu_s"] or 0.0) for r in done), 2),  # type: ignore[arg-type, misc]
        "service_cpu_s": round(service_cpu, 2),
    }


def table(runs: list[dict[str, object]]) -> str:
    by_key = {(str(run["mode"]), int(run["hosts"])): run for run in runs}  # type: ignore[call-overload]
    rows = []
    for run in runs:
        first = by_key.get((str(run["mode"]), 1))
        growth = (
            f"{int(run['origin_bytes_total']) / int(first['origin_bytes_total']):.2f}x"  # type: ignore[call-overload]
            if first and int(first["origin_bytes_total"]) >= MiB  # type: ignore[call-overload]
            else "-"
        )
        hosts_bytes = run["host_fetched_bytes"]
        assert isinstance(hosts_bytes, list)
        rows.append([
            run["mode"], run["hosts"], f"{run['last_exit_s']:.2f}", f"{run['mean_exit_s']:.2f}",
            f"{int(run['origin_bytes_during']) / MiB:.1f}", f"{int(run['origin_bytes_total']) / MiB:.1f}",  # type: ignore[call-overload]
            growth, f"{sum(hosts_bytes) / len(hosts_bytes) / MiB:.1f}", f"{run['daemon_cpu_s']:.1f}",
            f"{run['service_cpu_s']:.1f}",
        ])  # fmt: skip
    header = [
        "route", "hosts", "last host s", "mean host s", "origin MiB (start)", "origin MiB (all)",
        "vs 1 host", "MiB per host", "daemons CPU s", "mirror/proxy CPU s",
    ]  # fmt: skip
    return markdown_table(header, rows)


def chart(runs: list[dict[str, object]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bytes_axis, time_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in MODES:
        mine = [run for run in runs if run["mode"] == mode]
        if not mine:
            continue
        hosts = [int(run["hosts"]) for run in mine]  # type: ignore[call-overload]
        bytes_axis.plot(hosts, [int(r["origin_bytes_total"]) / MiB for r in mine], marker="o", label=mode)  # type: ignore[call-overload]
        time_axis.plot(hosts, [float(r["last_exit_s"]) for r in mine], marker="o", label=mode)  # type: ignore[arg-type]
    bytes_axis.set(
        xlabel="hosts starting at once", ylabel="MiB over the origin link", xscale="log", title="origin link"
    )
    time_axis.set(xlabel="hosts starting at once", ylabel="s to the last host's exit", xscale="log", title="last host")
    for axis in (bytes_axis, time_axis):
        axis.set_xticks([1, 2, 4, 8], labels=["1", "2", "4", "8"])
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def host_counts(text: str) -> list[int]:
    """`--hosts 1,2,4,8`: distinct positive counts (each names its run's work directory)."""
    try:
        counts = [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of host counts") from None
    if any(count < 1 for count in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"{text!r}: each host count must be positive and given once")
    return counts


def mode_list(text: str) -> list[str]:
    """`--modes direct,proxy`: known modes, each once."""
    modes = text.split(",")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(f"{text!r}: modes are {', '.join(MODES)}, each given once")
    return modes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="N hosts starting one image at once.")
    parser.add_argument("--image", default="debian-python", choices=sorted(IMAGES))
    parser.add_argument("--hosts", type=host_counts, default=[1, 2, 4, 8])
    parser.add_argument("--modes", type=mode_list, default=list(MODES))
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--rate-mbit", type=float, default=200.0)
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    arguments = parser.parse_args(argv)
    hosts_list: list[int] = arguments.hosts
    modes: list[str] = arguments.modes
    os.environ["PATH"] = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"  # nydusd, nydusify
    built = build_image(IMAGES[arguments.image])
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="nydus-cluster-") as scratch:
        root = Path(scratch)
        with network(root / "net", arguments.rtt_ms, [arguments.rate_mbit]) as net:
            image = prepare(net, built, root / "prepare")
            shaper = net.shapers[0]
            for mode in modes:
                for hosts in hosts_list:
                    run = run_once(shaper, image, mode, hosts, root / f"{mode}-{hosts}")
                    runs.append(run)
                    print(
                        f"{mode:12} {hosts} hosts: last {run['last_exit_s']:.2f} s, origin "
                        f"{int(run['origin_bytes_total']) / MiB:.1f} MiB, daemons {run['daemon_cpu_s']} s CPU",  # type: ignore[call-overload]
                        flush=True,
                    )
    os.makedirs(arguments.output_dir, exist_ok=True)
    text = table(runs)
    settings = {"image": arguments.image, "rtt_ms": arguments.rtt_ms, "rate_mbit": arguments.rate_mbit}
    heading = (
        f"{arguments.image} ({built.compressed_size / MiB:.0f} MiB as OCI), origin link "
        f"{arguments.rate_mbit:g} Mbit/s, RTT {arguments.rtt_ms:g} ms; proxy = dfdaemon STAND-IN"
    )
    with open(os.path.join(arguments.output_dir, "cluster.json"), "w") as file:
        json.dump({"benchmark": "cluster", "machine": machine(), "settings": settings, "runs": runs}, file, indent=2)
    with open(os.path.join(arguments.output_dir, "cluster.md"), "w") as file:
        file.write(f"{heading}\n\n{text}\n")
    chart(runs, os.path.join(arguments.output_dir, "cluster.png"))
    print(heading)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
