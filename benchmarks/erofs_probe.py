"""EROFS probe: how a warm start would fare if the kernel served the image's metadata.

A measurement for a design this project has not built (the README's "what would move the
figures"). Today every lookup, open, release, readlink and directory listing of a start is a
FUSE request answered in Python: about 11,500 for debian-sci's. Here the unpacked rootfs is
written by `mkfs.erofs --chunksize --blobdev` into a small EROFS metadata image plus one chunk
device file; the device file is built into a nydus image and served by nydusd (localfs backend,
chunk cache filled by an unmeasured first run); the kernel mounts the metadata image file-backed
(no loop device) with the device file on the nydusd mount as its extra device. Only reads of
that one file reach nydusd.

Modes, alternating, the page cache dropped before each run, all warm (no network):

- `local-disk`: the unpacked rootfs (the floor);
- `nydusd`: the image as `nydus-image create` builds it today, mounted by nydusd;
- `erofs-nydusd`: EROFS metadata, its chunk device on the nydusd mount;
- `erofs-local`: EROFS metadata, its chunk device on local disk.

With `--rate-mbit R`, also over the real registry behind a shaped link (20 ms RTT, R Mbit/s),
every chunk fetched on demand, both layouts: `cold-nydusd` and `cold-erofs` (an empty chunk
cache), `trace-nydusd` and `trace-erofs` (rebuilt with `--prefetch-files` from a `--trace-out` of
a first start, prefetched at mount). Those daemons start with `--bootstrap` (the bootstrap is
local; only blobs cross the link), so mounting is the same for both layouts.

`--device-chunk-size` sets the chunk size of the device's nydus image (1 MiB by default). The
device packs small files together, so a 1 MiB chunk of it holds many files: fetching one
fetches its neighbours, and a trace names them. `--device-readahead-kb N` sets the kernel's readahead of the nydusd mount under EROFS (nydusd
raises it to 1 MiB for its own mounts): EROFS reads around on its own, so the FUSE file's
readahead fetches, and traces, chunks the start does not use.

Each runs the image's workload in `runc` on an overlay over the mode's rootfs, as the cold-start
harness does. Usage (root, /dev/fuse, erofs-utils, a kernel with file-backed EROFS mounts):

    python3 -m benchmarks.erofs_probe [--image debian-sci] [--runs 3] [--rate-mbit 200] [--device-readahead-kb 0]

Figures print as a table and go to benchmarks/results/erofs_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.coldstart_images import IMAGES, BuiltImage, build_image
from benchmarks.coldstart_runtime import (
    drop_page_cache,
    is_mounted,
    load_tools,
    overlay_rootfs,
    registry_client,
    run_container,
    unmount,
    unpack_layer,
)
from benchmarks.coldstart_services import Network, network, stop_group
from benchmarks.coldstart_timeline import read_timeline, summarise
from benchmarks.common import markdown_table, write_results
from builder.options import chunk_size
from daemon.erofs_mount import mount_erofs
from daemon.mountpoint import mounts_at
from daemon.serve import MAX_READ_BYTES
from rafs.errors import MountError
from rafs.oci import ImageReference

MODES = ("local-disk", "nydusd", "erofs-nydusd", "erofs-local")
LINK_MODES = ("cold-nydusd", "cold-erofs", "trace-nydusd", "trace-erofs")
RTT_MS = 20.0
CHUNK_SIZE = 1 << 20  # the same as the nydus images'
MOUNT_TIMEOUT_S = 30.0


class ProbeError(RuntimeError):
    """A tool or kernel feature the probe needs is missing; the message says which."""


def set_readahead(mountpoint: Path, kilobytes: int) -> None:
    """The readahead of the FUSE mount at `mountpoint`, set once nydusd has set its own (it does
    so just after mounting, and would overwrite an earlier value)."""
    entries = mounts_at(str(mountpoint))
    if not entries:
        raise ProbeError(f"{mountpoint} is not mounted")
    knob = Path(f"/sys/class/bdi/{entries[-1].device}/read_ahead_kb")
    deadline = time.monotonic() + 2.0
    while knob.read_text().strip() != str(MAX_READ_BYTES // 1024) and time.monotonic() < deadline:
        time.sleep(0.005)
    knob.write_text(str(kilobytes))


@contextmanager
def erofs_rootfs(image: Path, device: Path, target: Path) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mount_erofs(str(image), str(target), str(device))
    try:
        yield target
    finally:
        unmount(target)


def localfs(blob_dir: Path) -> dict[str, object]:
    return {"type": "localfs", "config": {"dir": str(blob_dir)}}


def registry(host: str, repository: str) -> dict[str, object]:
    return {"type": "registry", "config": {"scheme": "http", "host": host, "repo": repository}}


@contextmanager
def nydusd_mount(
    bootstrap: Path, backend: dict[str, object], cache_dir: Path, work: Path, extra: tuple[str, ...] = ()
) -> Iterator[tuple[Path, Path]]:
    """nydusd over `bootstrap` (blobs from `backend`, blobcache in `cache_dir`); yields (mountpoint, timeline path)."""
    mountpoint, timeline = work / "lower", work / "timeline.json"
    mountpoint.mkdir(parents=True, exist_ok=True)
    config = {"device": {"backend": backend, "cache": {"type": "blobcache", "config": {"work_dir": str(cache_dir)}}}}
    config_path = work / "nydusd.json"
    config_path.write_text(json.dumps(config))
    log_path = work / "nydusd.log"
    argv = ["nydusd", "--bootstrap", str(bootstrap), "--mountpoint", str(mountpoint), "--config", str(config_path)]
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [*argv, "--timeline-out", str(timeline), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not is_mounted(mountpoint):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise ProbeError(f"nydusd did not mount: {log_path.read_text()[-2000:]}")
            time.sleep(0.002)
        yield mountpoint, timeline
    finally:
        stop_group(daemon)
        unmount(mountpoint)


class Probe:
    """The artifacts of one image (made once, unmeasured) and one measured start per call."""

    def __init__(
        self,
        built: BuiltImage,
        root: Path,
        device_readahead_kb: int | None = None,
        device_chunk_size: int | None = None,
    ) -> None:
        self.built = built
        self.root = root
        self.device_readahead_kb = device_readahead_kb
        self.device_chunk_size = device_chunk_size
        self.rootfs = root / "rootfs"
        self.device_dir = root / "device"
        self.erofs_image = root / "meta.erofs"
        self.figures: dict[str, object] = {}

    def prepare(self) -> None:
        for tool in ("mkfs.erofs", "nydus-image", "nydusd", "runc"):
            if shutil.which(tool) is None:
                raise ProbeError(
                    f"{tool} is not installed (erofs-utils for mkfs.erofs; scripts/install.sh for the rest)"
                )
        self.rootfs.mkdir(parents=True)
        for layer in self.built.layers:
            unpack_layer(layer.path, self.rootfs)
        self.device_dir.mkdir()
        device = self.device_dir / "chunks.img"
        self.figures["mkfs_s"] = self._timed(
            [
                "mkfs.erofs",
                "--quiet",
                f"--chunksize={CHUNK_SIZE}",
                f"--blobdev={device}",
                str(self.erofs_image),
                str(self.rootfs),
            ]
        )
        self.figures["erofs_metadata_bytes"] = self.erofs_image.stat().st_size
        self.figures["erofs_device_bytes"] = device.stat().st_size
        layers = [str(layer.path) for layer in self.built.layers]
        self.figures["create_image_s"] = self._timed(self._create("targz", "image", layers))
        self.figures["create_device_s"] = self._timed(self._create("directory", "device", [str(self.device_dir)]))

    def _create(self, source_type: str, name: str, sources: list[str]) -> list[str]:
        bootstrap, blobs = self.root / f"{name}.boot", self.root / f"{name}-blobs"
        argv = ["nydus-image", "create", "--source-type", source_type, "--bootstrap", str(bootstrap)]
        if name.startswith("device") and self.device_chunk_size is not None:
            argv += ["--chunk-size", hex(self.device_chunk_size)]
        return [*argv, "--blob-dir", str(blobs), *sources]

    @staticmethod
    def _timed(argv: list[str]) -> float:
        started = time.perf_counter()
        completed = subprocess.run(argv, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise ProbeError(f"{argv[0]} failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
        return round(time.perf_counter() - started, 2)

    def start(self, mode: str, work: Path, net: Network | None = None) -> dict[str, object]:
        """One start of the workload in `mode`, page cache dropped first; seconds and the daemon's figures."""
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        drop_page_cache()
        load_tools()
        opening = net.shapers[0].sample_after() if net is not None else None
        started = time.perf_counter()
        timeline: Path | None = None
        with contextlib.ExitStack() as stack:
            if mode == "local-disk":
                lower = self.rootfs
            elif mode == "erofs-local":
                lower = stack.enter_context(
                    erofs_rootfs(self.erofs_image, self.device_dir / "chunks.img", work / "erofs")
                )
            else:
                name = "device" if "erofs" in mode else "image"
                if mode.startswith("trace-"):
                    name += "-trace"
                if net is None:
                    backend, cache = localfs(self.root / f"{name}-blobs"), self.root / f"{name}-cache"
                else:  # over the link, from nothing
                    backend, cache = registry(net.shapers[0].host, f"probe/{name}"), work / "cache"
                mountpoint, timeline = stack.enter_context(
                    nydusd_mount(self.root / f"{name}.boot", backend, cache, work)
                )
                lower = mountpoint
                if "erofs" in mode:
                    lower = stack.enter_context(self._erofs_over(mountpoint, work))
            with overlay_rootfs(lower, work) as merged:
                run_container(work / "bundle", merged, self.built.spec.workload)
            seconds = time.perf_counter() - started
        record: dict[str, object] = {"seconds": round(seconds, 3)}
        if timeline is not None:
            daemon = summarise(read_timeline(timeline), 0.0)
            record.update(fuse_reads=daemon["fuse_reads"], cpu_s=daemon["cpu_s"], blocked_s=daemon["blocked_s"])
        if net is not None and opening is not None:
            window = net.shapers[0].window(opening, net.shapers[0].sample_after(), origin=0.0)
            record.update(bytes_down=window.down, requests=window.requests)
        shutil.rmtree(work, ignore_errors=True)
        return record

    def _erofs_over(self, mountpoint: Path, work: Path) -> contextlib.AbstractContextManager[Path]:
        """EROFS metadata over the chunk device on the nydusd mount at `mountpoint`."""
        if self.device_readahead_kb is not None:
            set_readahead(mountpoint, self.device_readahead_kb)
        return erofs_rootfs(self.erofs_image, mountpoint / "chunks.img", work / "erofs")

    def trace_and_rebuild(self) -> None:
        """For the trace modes: a `--trace-out` of one start of each layout (local blobs, fresh cache),
        then each image built again with that trace as `--prefetch-files`."""
        for name, erofs, source_type, sources in (
            ("image", False, "targz", [str(layer.path) for layer in self.built.layers]),
            ("device", True, "directory", [str(self.device_dir)]),
        ):
            work = self.root / f"trace-{name}"
            trace = work / "trace.txt"
            work.mkdir()
            with contextlib.ExitStack() as stack:
                mountpoint, _ = stack.enter_context(
                    nydusd_mount(
                        self.root / f"{name}.boot", localfs(self.root / f"{name}-blobs"), work / "cache", work,
                        extra=("--trace-out", str(trace)),
                    )
                )  # fmt: skip
                lower = mountpoint
                if erofs:
                    lower = stack.enter_context(self._erofs_over(mountpoint, work))
                with overlay_rootfs(lower, work) as merged:
                    run_container(work / "bundle", merged, self.built.spec.workload)
            argv = self._create(source_type, f"{name}-trace", sources)
            self.figures[f"create_{name}_trace_s"] = self._timed([*argv, "--prefetch-files", str(trace)])
            shutil.rmtree(work, ignore_errors=True)

    def push_blobs(self, net: Network) -> None:
        """Every blob of the four nydus images into `probe/<name>` on the registry (setup, not through the shaper)."""
        client = registry_client()
        try:
            for name in ("image", "device", "image-trace", "device-trace"):
                reference = ImageReference(net.direct_host, f"probe/{name}", "latest")
                for blob in sorted((self.root / f"{name}-blobs").iterdir()):
                    client.push_blob(reference, f"sha256:{blob.name}", str(blob))
        finally:
            client.close()


def median_of(runs: list[dict[str, object]], key: str) -> float | None:
    values = [float(str(run[key])) for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def table_rows(modes: tuple[str, ...], runs: dict[str, list[dict[str, object]]], baseline: str) -> list[list[str]]:
    """One row per mode: medians, and the time against `baseline`'s median."""
    floor = median_of(runs[baseline], "seconds") or 1.0
    rows = []
    for mode in modes:
        seconds = median_of(runs[mode], "seconds") or 0.0
        cpu, reads = median_of(runs[mode], "cpu_s"), median_of(runs[mode], "fuse_reads")
        down, blocked = median_of(runs[mode], "bytes_down"), median_of(runs[mode], "blocked_s")
        rows.append([
            mode, f"{seconds:.2f}", f"{seconds / floor:.2f}x",
            "-" if cpu is None else f"{cpu:.2f}", "-" if reads is None else f"{int(reads)}",
            "-" if down is None else f"{down / 2**20:.1f}", "-" if blocked is None else f"{blocked:.2f}",
        ])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.erofs_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--image", choices=sorted(IMAGES), default="debian-sci")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate-mbit", type=float, default=None, help="also cold and trace starts over this link")
    parser.add_argument("--device-readahead-kb", type=int, default=None, help="readahead of the mount under EROFS")
    parser.add_argument("--device-chunk-size", type=chunk_size, default=None, help="chunk size of the device's image")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.rate_mbit is not None and args.rate_mbit <= 0:
        parser.error("--rate-mbit must be positive")
    if args.device_readahead_kb is not None and args.device_readahead_kb < 0:
        parser.error("--device-readahead-kb must not be negative")
    if os.geteuid() != 0:
        parser.error("needs root (FUSE, EROFS and overlay mounts, runc)")
    built = build_image(IMAGES[args.image])
    runs: dict[str, list[dict[str, object]]] = {mode: [] for mode in (*MODES, *LINK_MODES)}
    with tempfile.TemporaryDirectory(prefix="erofs-probe-") as temp:
        probe = Probe(built, Path(temp), args.device_readahead_kb, args.device_chunk_size)
        try:
            probe.prepare()
            for mode in ("nydusd", "erofs-nydusd"):  # fill the chunk caches: these are warm starts
                probe.start(mode, Path(temp) / "fill")
            for number in range(args.runs):
                for mode in MODES:
                    runs[mode].append(probe.start(mode, Path(temp) / f"run-{mode}"))
                    print(f"  {args.image} {mode} run {number + 1}: {runs[mode][-1]}", flush=True)
            if args.rate_mbit is not None:
                probe.trace_and_rebuild()
                with network(Path(temp) / "net", RTT_MS, [args.rate_mbit]) as net:
                    probe.push_blobs(net)
                    for number in range(args.runs):
                        for mode in LINK_MODES:
                            runs[mode].append(probe.start(mode, Path(temp) / f"run-{mode}", net))
                            print(f"  {args.image} {mode} run {number + 1}: {runs[mode][-1]}", flush=True)
        except (ProbeError, MountError) as error:
            print(f"erofs_probe: {error}", file=sys.stderr)
            return 1
    header = [
        "mode",
        "seconds (median)",
        "against the first row",
        "daemon CPU s",
        "FUSE reads",
        "fetched MiB",
        "blocked s",
    ]
    table = f"{args.image}, warm, median of {args.runs}, page cache dropped before each run\n\n"
    table += markdown_table(header, table_rows(MODES, runs, "local-disk"))
    if args.rate_mbit is not None:
        table += f"\n\n{args.image}, {RTT_MS:g} ms RTT, {args.rate_mbit:g} Mbit/s, median of {args.runs}\n\n"
        table += markdown_table(header, table_rows(LINK_MODES, runs, "cold-nydusd"))
    print(table)
    results = {
        "image": args.image, "rate_mbit": args.rate_mbit, "device_readahead_kb": args.device_readahead_kb,
        "device_chunk_size": args.device_chunk_size,
        "figures": probe.figures, "runs": runs,
    }  # fmt: skip
    print(f"wrote {write_results('erofs_probe', results, table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
