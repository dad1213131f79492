"""Cold-start benchmark: OCI pull-and-unpack against lazy mounts, on a real registry over shaped links.

    python3 -m benchmarks.coldstart [--rtt-ms 20] [--rate-mbit 200,400] [--images a,b] [--runs 3] [--quick]

Starts Debian's `docker-registry` on loopback with a link shaper (`benchmarks.shaper`) in front
of it for each rate, builds real images from Debian packages (cached in ~/.cache/nydus-py),
pushes each as an OCI image and converts it with `nydusify convert`. Then, for each image and
link, with the page cache dropped before every run (then the tools' own code, runc, tar and
nydusd's interpreter and modules, read back in, as on a host that runs containers all day: the
OCI puller runs in this process, loaded already), it times from nothing of the image on the host
to the exit of the image's workload run with `runc`:

- `oci`: the best case of a pull: every layer's download streamed into `tar -xz`, layers
  downloading in parallel while they unpack in order; then run;
- `local-disk`: the workload on the image unpacked beforehand on local disk (under a writable
  overlay, as the lazy modes): the floor a lazy start is judged against;
- `lazy-cold`: mount the converted image with nydusd reading from the registry through the
  shaper, with an empty cache, under a writable overlay, and run. The image is converted as a
  user would, without a trace: `nydusify convert` guesses its prefetch list from the entrypoint;
- `lazy-bare`: the same on the image converted with `--prefetch-policy none` (no prefetch list:
  every read a miss until readahead and amplification catch up);
- `lazy-prefetch`: the same, with the image rebuilt with the files the first run read, in order,
  as its prefetch list;
- `lazy-warm`: the same as `lazy-cold` with the chunk cache filled by an earlier run;
- `erofs-cold`, `erofs-prefetch`, `erofs-warm`: the three lazy modes with nydusd's
  `"fs_driver": "erofs"` (the kernel's EROFS serves the tree, nydusd its data device). A warm
  host has the EROFS metadata from its earlier run; a cold one writes it at mount.

Per run it records the phases (daemon exec, mounted, first FUSE read, workload exit), the bytes,
HTTP requests and most requests in flight the shaper saw, the shaper's bytes over time, and, from
`nydusd --timeline-out`, the time FUSE reads spent blocked on misses and the bytes they read.
Every mode is run: a tool that cannot do its part fails the run rather than leaving a mode out.
Writes `coldstart.json`, `.md`, `.png` and `-timeline.png` to benchmarks/results/
(or `--output-dir`). Needs root (runc, mounts, drop_caches), /dev/fuse, `docker-registry`, `runc`
and apt access to build images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from benchmarks.coldstart_images import DEFAULT_CACHE, IMAGES, BuiltImage, build_image, push_image
from benchmarks.coldstart_runtime import (
    Phases,
    drop_page_cache,
    lazy_rootfs,
    oci_pull_unpack,
    overlay_rootfs,
    registry_client,
    run_container,
    unpack_layer,
)
from benchmarks.coldstart_services import Network, Shaper, network
from benchmarks.coldstart_timeline import read_timeline, summarise
from benchmarks.common import RESULTS_DIR
from benchmarks.report import (
    BASELINE,
    CaseRecord,
    DaemonRecord,
    ImageRecord,
    LinkRecord,
    Results,
    RunRecord,
    markdown,
    write_report,
)
from rafs import oci
from rafs.oci import ImageReference
from rafs.pathlist import read_prefetch_entries

MODES = (
    "oci",
    "local-disk",
    "lazy-cold",
    "lazy-bare",
    "lazy-prefetch",
    "lazy-warm",
    "erofs-cold",
    "erofs-prefetch",
    "erofs-warm",
)
LAZY_MODES = ("lazy-cold", "lazy-bare", "lazy-prefetch", "lazy-warm", "erofs-cold", "erofs-prefetch", "erofs-warm")
EROFS_MODES = {
    "erofs-cold": "lazy-cold",
    "erofs-prefetch": "lazy-prefetch",
    "erofs-warm": "lazy-warm",
}  # the same with fs_driver erofs
QUICK_IMAGE = "debian-base"
OCI_TAG, NYDUS_TAG, PREFETCH_TAG, BARE_TAG = "oci", "nydus", "nydus-prefetch", "nydus-bare"
EROFS_SUFFIX = "-erofs"  # the same conversions with `--erofs`, for the erofs-* modes


# ---- configs


def registry_backend_config(
    host: str, repository: str, cache_dir: str, prefetch: bool, fs_driver: str = "fusedev"
) -> dict[str, object]:
    """nydusd's config for blobs from `host` (plain HTTP), chunks cached in `cache_dir`.

    Only what the case needs is set, so that the daemon's defaults (concurrency, merging,
    readahead, digest checks, prefetching the bootstrap's prefetch table) are what is measured;
    the trace-prefetch case says `fs_prefetch.enable` explicitly."""
    config: dict[str, object] = {
        "device": {
            "backend": {"type": "registry", "config": {"scheme": "http", "host": host, "repo": repository}},
            "cache": {"type": "blobcache", "config": {"work_dir": cache_dir}},
        },
    }
    if prefetch:
        config["fs_prefetch"] = {"enable": True}
    if fs_driver != "fusedev":
        config["fs_driver"] = fs_driver
    return config


# ---- one image


@dataclass
class Prepared:
    """An image pushed and converted, with the figures of its artifacts and the host state the
    modes start from (all made before any measured run)."""

    built: BuiltImage
    repository: str
    record: ImageRecord
    warm_dir: Path | None = None  # a filled chunk cache and the bootstrap, for lazy-warm
    local_rootfs: Path | None = None  # the image unpacked on local disk, for local-disk
    runs: dict[tuple[float, str], list[RunRecord]] = field(default_factory=dict)  # (rate, mode) -> runs


def convert(
    net: Network,
    repository: str,
    target_tag: str,
    work: Path,
    prefetch_files: Path | None = None,
    erofs: bool = False,
    prefetch_policy: str = "entrypoint",
) -> float:
    """`nydusify convert` of the OCI image into `target_tag` (setup traffic, not through the shaper)."""
    argv = [
        "nydusify", "convert", "--source", f"{net.direct_host}/{repository}:{OCI_TAG}",
        "--target", f"{net.direct_host}/{repository}:{target_tag}", "--work-dir", str(work),
    ]  # fmt: skip
    if prefetch_files is not None:
        argv += ["--prefetch-files", str(prefetch_files)]
    if erofs:
        argv += ["--erofs"]
    argv += ["--prefetch-policy", prefetch_policy]
    started = time.perf_counter()
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"nydusify convert failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def converted_sizes(net: Network, repository: str, tag: str) -> tuple[int, int]:
    """(bytes of blob layers, bytes of the bootstrap layer) of a converted image."""
    ref = ImageReference(net.direct_host, repository, tag)
    client = registry_client()
    try:
        image = oci.parse_converted_manifest(client.get_image_manifest(ref).document, str(ref))
    finally:
        client.close()
    return sum(image.blob_sizes), image.bootstrap_size


def prepare(net: Network, built: BuiltImage, work: Path, *, erofs: bool = False, bare: bool = False) -> Prepared:
    """Push `built` as an OCI image and convert it (both straight to the registry: setup, not
    measured); with `erofs`, also with `--erofs`, to the same tag with `EROFS_SUFFIX`; with
    `bare`, also with no prefetch list, to `BARE_TAG`."""
    repository = f"coldstart/{built.spec.name}"
    client = registry_client()
    try:
        push_image(client, ImageReference(net.direct_host, repository, OCI_TAG), built)
    finally:
        client.close()
    record: ImageRecord = {
        "name": built.spec.name,
        "description": built.spec.description,
        "workload": list(built.spec.workload),
        "layers": len(built.layers),
        "files": built.files,
        "oci_bytes": built.compressed_size,
        "unpacked_bytes": built.unpacked_bytes,
        "nydus_blob_bytes": None,
        "bootstrap_bytes": None,
        "convert_s": None,
        "trace_files": None,
        "read_bytes": None,
        "links": [],
    }
    record["convert_s"] = convert(net, repository, NYDUS_TAG, work / "convert")
    record["nydus_blob_bytes"], record["bootstrap_bytes"] = converted_sizes(net, repository, NYDUS_TAG)
    shutil.rmtree(work / "convert", ignore_errors=True)
    if erofs:
        convert(net, repository, NYDUS_TAG + EROFS_SUFFIX, work / "convert", erofs=True)
        shutil.rmtree(work / "convert", ignore_errors=True)
    if bare:
        convert(net, repository, BARE_TAG, work / "convert", prefetch_policy="none")
        shutil.rmtree(work / "convert", ignore_errors=True)
    return Prepared(built, repository, record)


# ---- measured starts

REQUIRED_TOOLS = ("nydusd", "nydusify", "runc", "tar", "umount")

Start = Callable[[Phases], DaemonRecord | None]


def measure(shaper: Shaper, start: Start) -> RunRecord:
    """Run `start` from nothing (page cache dropped) to the workload's exit; what the shaper
    carried meanwhile, and what the daemon said."""
    drop_page_cache()
    opening = shaper.sample_after()
    phases = Phases()
    daemon = start(phases)
    closing = shaper.sample_after(phases.events["exit"])
    window = shaper.window(opening, closing, origin=phases.started_at)
    return {
        "seconds": round(phases.total, 4),
        "events": phases.since_start(),
        "bytes_down": window.down,
        "bytes_up": window.up,
        "requests": window.requests,
        "max_in_flight": window.max_in_flight,
        "down_series": [[at, down] for at, down in window.down_series],
        "in_flight_series": [[at, peak] for at, peak in window.in_flight_series],
        "daemon": daemon,
    }


def oci_start(shaper: Shaper, image: Prepared, work: Path) -> Start:
    def start(phases: Phases) -> None:
        rootfs = oci_pull_unpack(shaper.host, image.repository, OCI_TAG, work, phases)
        run_container(work / "bundle", rootfs, image.built.spec.workload)
        phases.mark("exit")

    return start


def local_disk_start(image: Prepared, work: Path) -> Start:
    def start(phases: Phases) -> None:
        assert image.local_rootfs is not None
        with overlay_rootfs(image.local_rootfs, work) as rootfs:
            run_container(work / "bundle", rootfs, image.built.spec.workload)
            phases.mark("exit")

    return start


def lazy_start(
    shaper: Shaper, image: Prepared, tag: str, work: Path, cache_dir: Path,
    *, prefetch: bool = False, extra_args: tuple[str, ...] = (), fs_driver: str = "fusedev",
) -> Start:  # fmt: skip
    """A start of the lazy image `tag`: nydusd (+ overlay) then the workload. The host's state is
    `cache_dir` (chunks and bootstrap): empty for a cold start, kept from a first run for a warm one."""

    def start(phases: Phases) -> DaemonRecord:
        config = registry_backend_config(shaper.host, image.repository, str(cache_dir), prefetch, fs_driver)
        # nydusd fetches manifest and bootstrap itself (keeping it in its cache)
        args = ["--image", f"{shaper.host}/{image.repository}:{tag}"]
        timeline_path = work / "timeline.json"
        args += ["--timeline-out", str(timeline_path)]
        phases.mark("daemon exec")
        with lazy_rootfs([*args, *extra_args], work / "mount", config, phases) as rootfs:
            run_container(work / "bundle", rootfs, image.built.spec.workload)
            phases.mark("exit")
        daemon = summarise(read_timeline(timeline_path), phases.started_at)
        phases.mark("daemon process", phases.started_at + daemon["started_s"])
        phases.mark("mounted", phases.started_at + daemon["mounted_s"])  # the daemon's own moment
        if daemon["first_read_s"] is not None:
            phases.mark("first read", phases.started_at + daemon["first_read_s"])
        return daemon

    return start


def run_mode(shaper: Shaper, image: Prepared, mode: str, work: Path) -> RunRecord:
    """One measured start of `image` in `mode` over `shaper`'s link; its work directory removed after."""
    fs_driver = "erofs" if mode in EROFS_MODES else "fusedev"
    lazy_mode = EROFS_MODES.get(mode, mode)
    suffix = EROFS_SUFFIX if mode in EROFS_MODES else ""
    try:
        if mode == BASELINE:
            start = oci_start(shaper, image, work)
        elif mode == "local-disk":
            start = local_disk_start(image, work)
        elif lazy_mode == "lazy-warm":
            assert image.warm_dir is not None
            start = lazy_start(shaper, image, NYDUS_TAG + suffix, work, image.warm_dir / "cache", fs_driver=fs_driver)
        elif lazy_mode == "lazy-bare":
            start = lazy_start(shaper, image, BARE_TAG, work, work / "cache", fs_driver=fs_driver)
        elif lazy_mode == "lazy-prefetch":
            tag = PREFETCH_TAG + suffix
            start = lazy_start(shaper, image, tag, work, work / "cache", prefetch=True, fs_driver=fs_driver)
        else:
            start = lazy_start(shaper, image, NYDUS_TAG + suffix, work, work / "cache", fs_driver=fs_driver)
        return measure(shaper, start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare_hosts(net: Network, image: Prepared, modes: list[str], work: Path) -> None:
    """Unmeasured first runs and setup: the access trace for `lazy-prefetch`, the filled cache
    for `lazy-warm` (both over the first link), the unpacked rootfs for `local-disk`."""
    shaper = net.shapers[0]
    if "erofs-prefetch" in modes and "lazy-prefetch" not in modes:
        modes = [*modes, "lazy-prefetch"]  # one trace, one rebuilt image for both drivers
    if "erofs-warm" in modes and "lazy-warm" not in modes:
        modes = [*modes, "lazy-warm"]
    if "lazy-prefetch" in modes:
        trace = work / "trace.txt"
        start = lazy_start(
            shaper, image, NYDUS_TAG, work / "trace-run", work / "trace-cache",
            extra_args=("--trace-out", str(trace)),
        )  # fmt: skip
        start(Phases())
        if not trace.exists():
            raise RuntimeError(f"nydusd --trace-out wrote no {trace}")
        image.record["trace_files"] = len({entry.path for entry in read_prefetch_entries(str(trace))})
        shutil.rmtree(work / "trace-run", ignore_errors=True)
        shutil.rmtree(work / "trace-cache", ignore_errors=True)
        convert(net, image.repository, PREFETCH_TAG, work / "convert", prefetch_files=trace)
        shutil.rmtree(work / "convert", ignore_errors=True)
        if "erofs-prefetch" in modes:
            convert(net, image.repository, PREFETCH_TAG + EROFS_SUFFIX, work / "convert", trace, erofs=True)
            shutil.rmtree(work / "convert", ignore_errors=True)
    if "lazy-warm" in modes:
        image.warm_dir = work / "warm"
        image.warm_dir.mkdir(parents=True)
        start = lazy_start(shaper, image, NYDUS_TAG, work / "warm-run", image.warm_dir / "cache")
        start(Phases())
        shutil.rmtree(work / "warm-run", ignore_errors=True)
        if "erofs-warm" in modes:  # the host ran the image with the EROFS driver before
            tag = NYDUS_TAG + EROFS_SUFFIX
            start = lazy_start(shaper, image, tag, work / "warm-run", image.warm_dir / "cache", fs_driver="erofs")
            start(Phases())
            shutil.rmtree(work / "warm-run", ignore_errors=True)
    if "local-disk" in modes:
        image.local_rootfs = work / "local-rootfs"
        image.local_rootfs.mkdir(parents=True)
        for layer in image.built.layers:
            unpack_layer(layer.path, image.local_rootfs)


def median_case(mode: str, runs: list[RunRecord]) -> CaseRecord:
    return {
        "mode": mode,
        "available": True,
        "reason": "",
        "runs": runs,
        "median_s": statistics.median(run["seconds"] for run in runs),
        "median_bytes_down": int(statistics.median(run["bytes_down"] for run in runs)),
    }


def read_bytes(links: list[LinkRecord]) -> int | None:
    """What the start reads through the filesystem: the median FUSE read bytes of the cold lazy runs."""
    counts = [
        run["daemon"]["fuse_read_bytes"]
        for link in links
        for case in link["cases"]
        if case["mode"] == "lazy-cold"
        for run in case["runs"]
        if run["daemon"] is not None
    ]
    return int(statistics.median(counts)) if counts else None


# ---- the whole run


@dataclass(frozen=True)
class Settings:
    rtt_ms: float
    rates_mbit: list[float]
    images: list[str]
    runs: int
    modes: list[str]
    output_dir: str
    cache_dir: Path
    name: str


def _run_line(name: str, shaper: Shaper, mode: str, run: int, record: RunRecord) -> str:
    daemon = record["daemon"]
    blocked = (
        ""
        if daemon is None
        else f", blocked {daemon['blocked_s']:.2f} s, read {daemon['fuse_read_bytes'] / 2**20:.1f} MiB"
    )
    return (
        f"  {name} {shaper.rate_mbit:g} Mbit/s {mode} run {run + 1}: {record['seconds']:.2f} s, "
        f"{record['bytes_down'] / 2**20:.1f} MiB in {record['requests']} requests "
        f"(at most {record['max_in_flight']} in flight){blocked}"
    )


def benchmark(settings: Settings) -> Results:
    print("building images (cached in", settings.cache_dir, ")", flush=True)
    built = [build_image(IMAGES[name], settings.cache_dir) for name in settings.images]
    records: list[ImageRecord] = []
    with tempfile.TemporaryDirectory(prefix="coldstart-") as temp:
        root = Path(temp)
        with network(root, settings.rtt_ms, settings.rates_mbit) as net:
            links = ", ".join(f"{shaper.host} ({shaper.rate_mbit:g} Mbit/s)" for shaper in net.shapers)
            print(f"registry {net.direct_host}, shapers {links}, {settings.rtt_ms:g} ms RTT", flush=True)
            for image in built:
                work = root / image.spec.name
                prepared = prepare(
                    net,
                    image,
                    work,
                    erofs=any(mode in EROFS_MODES for mode in settings.modes),
                    bare="lazy-bare" in settings.modes,
                )
                prepare_hosts(net, prepared, settings.modes, work)
                for run in range(settings.runs):
                    for shaper in net.shapers:
                        for mode in settings.modes:
                            case_work = work / f"{mode}-{shaper.rate_mbit:g}-{run}"
                            record = run_mode(shaper, prepared, mode, case_work)
                            prepared.runs.setdefault((shaper.rate_mbit, mode), []).append(record)
                            print(_run_line(image.spec.name, shaper, mode, run, record), flush=True)
                prepared.record["links"] = [
                    {
                        "rtt_ms": shaper.rtt_ms,
                        "rate_mbit": shaper.rate_mbit,
                        "cases": [
                            median_case(mode, prepared.runs.get((shaper.rate_mbit, mode), []))
                            for mode in settings.modes
                        ],
                    }
                    for shaper in net.shapers
                ]
                prepared.record["read_bytes"] = read_bytes(prepared.record["links"])
                records.append(prepared.record)
                shutil.rmtree(work, ignore_errors=True)
    settings_record: dict[str, object] = {
        "rtt_ms": settings.rtt_ms,
        "rates_mbit": settings.rates_mbit,
        "runs": settings.runs,
        "images": settings.images,
        "modes": settings.modes,
    }
    return {"settings": settings_record, "images": records}


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of Mbit/s: {text!r}") from error
    if not rates or any(rate <= 0 for rate in rates) or len(set(rates)) != len(rates):
        raise argparse.ArgumentTypeError(f"need distinct positive rates: {text!r}")
    return rates


def parse_arguments(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round-trip time the shapers add (20)")
    parser.add_argument(
        "--rate-mbit", type=_rates, default=[200.0, 400.0], help="bandwidths of the links, comma-separated (200,400)"
    )
    parser.add_argument("--images", default=",".join(IMAGES), help=f"comma-separated, of: {', '.join(IMAGES)}")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each case; medians are reported (3)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--quick", action="store_true", help=f"one small image ({QUICK_IMAGE}), one link, one run")
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help=".debs and built layers (~/.cache/nydus-py)")
    arguments = parser.parse_args(argv)
    images = [QUICK_IMAGE] if arguments.quick else [name for name in arguments.images.split(",") if name]
    modes = [mode for mode in arguments.modes.split(",") if mode]
    for name in images:
        if name not in IMAGES:
            parser.error(f"unknown image {name!r}; known: {', '.join(IMAGES)}")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if BASELINE not in modes:
        modes.insert(0, BASELINE)  # every ratio is against the baseline measured in the same run
    runs = 1 if arguments.quick else arguments.runs
    if runs < 1:
        parser.error("--runs must be at least 1")
    rates = arguments.rate_mbit[:1] if arguments.quick else arguments.rate_mbit
    name = "coldstart-quick" if arguments.quick else "coldstart"
    return Settings(arguments.rtt_ms, rates, images, runs, modes, arguments.output_dir, Path(arguments.cache_dir), name)


def main(argv: list[str] | None = None) -> int:
    settings = parse_arguments(argv)
    if os.geteuid() != 0:
        print("coldstart: needs root (runc, overlay and FUSE mounts, drop_caches)", file=sys.stderr)
        return 2
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        print(f"coldstart: not on PATH: {', '.join(missing)} (scripts/install.sh installs them; "
              "its venv's bin/ must be on PATH)", file=sys.stderr)  # fmt: skip
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = time.perf_counter()
    try:
        results = benchmark(settings)
    except KeyboardInterrupt:
        print("coldstart: interrupted; registry, shapers and mounts stopped", file=sys.stderr)
        return 130
    results["settings"]["wall_s"] = round(time.perf_counter() - started, 1)
    paths = write_report(results, settings.output_dir, settings.name)
    print(markdown(results))
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
