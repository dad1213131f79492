"""Cold-start benchmark: OCI pull-and-unpack against lazy mounts, on a real registry over a shaped link.

    python3 -m benchmarks.coldstart [--rtt-ms 20] [--rate-mbit 200] [--images a,b] [--runs 3] [--quick]

Starts Debian's `docker-registry` on loopback with the link shaper (`benchmarks.shaper`) in
front, builds real images from Debian packages (cached in ~/.cache/nydus-py), pushes each as an
OCI image and converts it with `nydusify convert`. Then, for each image, it times from nothing on
the host to the exit of the image's workload run with `runc`:

- `oci`: pull every layer through the shaper, unpack it into a directory, run;
- `lazy-cold`: mount the converted image with nydusd reading from the registry through the
  shaper, with an empty cache, under a writable overlay, and run;
- `lazy-prefetch`: the same, with the image rebuilt with the files the first run read, in order,
  as its prefetch list;
- `lazy-warm`: the same as `lazy-cold` with the chunk cache filled by an earlier run.

Bytes fetched are counted by the shaper (registry to host, HTTP included). A mode the project
cannot do yet is reported as not available, with the reason, never approximated. Writes
`coldstart.json`, `coldstart.md` and `coldstart.png` to benchmarks/results/ (or `--output-dir`).
Needs root (runc, mounts), /dev/fuse, `docker-registry`, `runc` and apt access to build images.
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
    fetch_bootstrap,
    lazy_rootfs,
    oci_pull_unpack,
    registry_client,
    run_container,
)
from benchmarks.coldstart_services import Network, network
from benchmarks.common import RESULTS_DIR
from benchmarks.report import BASELINE, CaseRecord, ImageRecord, Results, RunRecord, markdown, write_report
from rafs import oci
from rafs.oci import ImageReference

MODES = ("oci", "lazy-cold", "lazy-prefetch", "lazy-warm")
QUICK_IMAGE = "debian-base"
OCI_TAG, NYDUS_TAG, PREFETCH_TAG = "oci", "nydus", "nydus-prefetch"


# ---- what the project can do today


def _help(argv: list[str]) -> str:
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    return completed.stdout + completed.stderr


def registry_backend_config(host: str, repository: str, cache_dir: str, prefetch: bool) -> dict[str, object]:
    """nydusd's config for blobs from `host` (plain HTTP), chunks cached in `cache_dir`."""
    return {
        "device": {
            "backend": {"type": "registry", "config": {"scheme": "http", "host": host, "repo": repository}},
            "cache": {"type": "blobcache", "config": {"work_dir": cache_dir}},
        },
        "mode": "direct",
        "digest_validate": True,
        "fs_prefetch": {"enable": prefetch, "threads_count": 4, "merging_size": 1 << 20, "bandwidth_rate": 0},
    }


@dataclass(frozen=True)
class Support:
    """Why each mode cannot run ("" when it can), and how nydusd is to be started."""

    reasons: dict[str, str]
    image_flag: bool  # nydusd --image REF (fetches manifest and bootstrap itself)

    def available(self, mode: str) -> bool:
        return not self.reasons.get(mode, "")


def detect_support() -> Support:
    """Ask the installed tools, not their version numbers, what they can do."""
    from daemon.config import parse_config
    from rafs.errors import ConfigError

    reasons = {mode: "" for mode in MODES}
    lazy = ""
    if shutil.which("nydusd") is None:
        lazy = "nydusd is not installed"
    else:
        try:
            parse_config(registry_backend_config("127.0.0.1:1", "probe", "/nonexistent", True))
        except ConfigError as error:
            lazy = f"nydusd has no registry backend yet ({error})"
    nydusd_help = _help(["nydusd", "--help"]) if not lazy else ""
    image_flag = "--image" in nydusd_help
    for mode in ("lazy-cold", "lazy-prefetch", "lazy-warm"):
        reasons[mode] = lazy
    if not lazy:
        missing = []
        if "--trace-out" not in nydusd_help:
            missing.append("nydusd --trace-out")
        if "--prefetch-files" not in _help(["nydusify", "convert", "--help"]):
            missing.append("nydusify convert --prefetch-files")
        if missing:
            reasons["lazy-prefetch"] = f"no access trace to build from ({', '.join(missing)} missing)"
    if shutil.which("nydusify") is None:
        for mode in ("lazy-cold", "lazy-prefetch", "lazy-warm"):
            reasons[mode] = reasons[mode] or "nydusify is not installed"
    return Support(reasons, image_flag)


# ---- one image


@dataclass
class Prepared:
    """An image pushed and converted, with the figures of its artifacts."""

    built: BuiltImage
    repository: str
    record: ImageRecord
    warm_dir: Path | None = None  # a filled chunk cache and the bootstrap, for lazy-warm
    runs: dict[str, list[RunRecord]] = field(default_factory=dict)


def convert(net: Network, repository: str, target_tag: str, work: Path, prefetch_files: Path | None = None) -> float:
    """`nydusify convert` of the OCI image into `target_tag` (setup traffic, not through the shaper)."""
    argv = [
        "nydusify", "convert", "--source", f"{net.direct_host}/{repository}:{OCI_TAG}",
        "--target", f"{net.direct_host}/{repository}:{target_tag}", "--work-dir", str(work),
    ]  # fmt: skip
    if prefetch_files is not None:
        argv += ["--prefetch-files", str(prefetch_files)]
    started = time.perf_counter()
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"nydusify convert failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def converted_sizes(net: Network, repository: str, tag: str) -> tuple[int, int]:
    """(bytes of blob layers, bytes of the bootstrap layer) of a converted image."""
    client = registry_client()
    try:
        manifest = client.get_image_manifest(ImageReference(net.direct_host, repository, tag)).document
    finally:
        client.close()
    layers = manifest.get("layers")
    assert isinstance(layers, list)
    blobs = bootstrap = 0
    for layer in layers:
        annotations = layer.get("annotations", {})
        if annotations.get(oci.ANNOTATION_NYDUS_BOOTSTRAP) == "true":
            bootstrap += int(layer["size"])
        else:
            blobs += int(layer["size"])
    return blobs, bootstrap


def prepare(net: Network, built: BuiltImage, work: Path) -> Prepared:
    """Push `built` as an OCI image and convert it (both straight to the registry: setup, not measured)."""
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
        "cases": [],
    }
    if shutil.which("nydusify") is not None:
        record["convert_s"] = convert(net, repository, NYDUS_TAG, work / "convert")
        record["nydus_blob_bytes"], record["bootstrap_bytes"] = converted_sizes(net, repository, NYDUS_TAG)
        shutil.rmtree(work / "convert", ignore_errors=True)
    return Prepared(built, repository, record)


# ---- measured starts


def measure(net: Network, start: Callable[[Phases], None]) -> RunRecord:
    """Time `start` from nothing to the workload's exit; bytes through the shaper meanwhile."""
    before = net.shaper.bytes_carried()
    phases = Phases()
    start(phases)
    ended = time.time()
    carried = net.shaper.bytes_carried(after=ended) - before
    return {
        "seconds": phases.total,
        "phases": phases.seconds,
        "bytes_down": carried.down,
        "bytes_up": carried.up,
    }


def run_oci(net: Network, image: Prepared, work: Path) -> RunRecord:
    def start(phases: Phases) -> None:
        rootfs = oci_pull_unpack(net.shaped_host, image.repository, OCI_TAG, work, phases)
        run_container(work / "bundle", rootfs, image.built.spec.workload)
        phases.mark("run")

    try:
        return measure(net, start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _lazy_start(
    net: Network, image: Prepared, support: Support, tag: str, work: Path, cache_dir: Path,
    *, prefetch: bool = False, extra_args: tuple[str, ...] = (),
) -> Callable[[Phases], None]:  # fmt: skip
    """A start of the lazy image `tag`: nydusd (+ overlay) then the workload. The host's state is
    `cache_dir` (chunks and bootstrap): empty for a cold start, kept from a first run for a warm one."""

    def start(phases: Phases) -> None:
        config = registry_backend_config(net.shaped_host, image.repository, str(cache_dir), prefetch)
        if support.image_flag:  # nydusd fetches manifest and bootstrap (keeping it in its cache)
            args = ["--image", f"{net.shaped_host}/{image.repository}:{tag}"]
        else:  # the harness does, keeping the bootstrap beside the cache as nydusd would
            path = cache_dir.parent / f"{cache_dir.name}.boot"
            if not path.exists():
                fetch_bootstrap(net.shaped_host, image.repository, tag, path)
                phases.mark("bootstrap")
            args = ["--bootstrap", str(path)]
        with lazy_rootfs([*args, *extra_args], work / "mount", config, phases) as rootfs:
            run_container(work / "bundle", rootfs, image.built.spec.workload)
            phases.mark("run")

    return start


def run_lazy(net: Network, image: Prepared, support: Support, mode: str, work: Path) -> RunRecord:
    try:
        if mode == "lazy-warm":
            assert image.warm_dir is not None
            start = _lazy_start(net, image, support, NYDUS_TAG, work, image.warm_dir / "cache")
        elif mode == "lazy-prefetch":
            start = _lazy_start(net, image, support, PREFETCH_TAG, work, work / "cache", prefetch=True)
        else:
            start = _lazy_start(net, image, support, NYDUS_TAG, work, work / "cache")
        return measure(net, start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare_lazy(net: Network, image: Prepared, support: Support, modes: list[str], work: Path) -> None:
    """Unmeasured first runs: the access trace for `lazy-prefetch`, the filled cache for `lazy-warm`."""
    if "lazy-prefetch" in modes and support.available("lazy-prefetch"):
        trace = work / "trace.txt"
        start = _lazy_start(
            net, image, support, NYDUS_TAG, work / "trace-run", work / "trace-cache",
            extra_args=("--trace-out", str(trace)),
        )  # fmt: skip
        start(Phases())
        if not trace.exists():
            raise RuntimeError(f"nydusd --trace-out wrote no {trace}")
        image.record["trace_files"] = len([line for line in trace.read_text().splitlines() if line.strip()])
        shutil.rmtree(work / "trace-run", ignore_errors=True)
        shutil.rmtree(work / "trace-cache", ignore_errors=True)
        convert(net, image.repository, PREFETCH_TAG, work / "convert", prefetch_files=trace)
        shutil.rmtree(work / "convert", ignore_errors=True)
    if "lazy-warm" in modes and support.available("lazy-warm"):
        image.warm_dir = work / "warm"
        image.warm_dir.mkdir(parents=True)
        start = _lazy_start(net, image, support, NYDUS_TAG, work / "warm-run", image.warm_dir / "cache")
        start(Phases())
        shutil.rmtree(work / "warm-run", ignore_errors=True)


def median_case(mode: str, support: Support, runs: list[RunRecord]) -> CaseRecord:
    if not support.available(mode):
        return {"mode": mode, "available": False, "reason": support.reasons[mode], "runs": [],
                "median_s": None, "median_bytes_down": None}  # fmt: skip
    return {
        "mode": mode,
        "available": True,
        "reason": "",
        "runs": runs,
        "median_s": statistics.median(run["seconds"] for run in runs),
        "median_bytes_down": int(statistics.median(run["bytes_down"] for run in runs)),
    }


# ---- the whole run


@dataclass(frozen=True)
class Settings:
    rtt_ms: float
    rate_mbit: float
    images: list[str]
    runs: int
    modes: list[str]
    output_dir: str
    cache_dir: Path
    name: str


def benchmark(settings: Settings) -> Results:
    support = detect_support()
    for mode in settings.modes:
        if not support.available(mode):
            print(f"mode {mode}: not available: {support.reasons[mode]}", flush=True)
    print("building images (cached in", settings.cache_dir, ")", flush=True)
    built = [build_image(IMAGES[name], settings.cache_dir) for name in settings.images]
    records: list[ImageRecord] = []
    with tempfile.TemporaryDirectory(prefix="coldstart-") as temp:
        root = Path(temp)
        with network(root, settings.rtt_ms, settings.rate_mbit) as net:
            print(f"registry {net.direct_host}, shaper {net.shaped_host} "
                  f"({settings.rtt_ms} ms RTT, {settings.rate_mbit} Mbit/s)", flush=True)  # fmt: skip
            for image in built:
                work = root / image.spec.name
                prepared = prepare(net, image, work)
                prepare_lazy(net, prepared, support, settings.modes, work)
                for run in range(settings.runs):
                    for mode in settings.modes:
                        if not support.available(mode):
                            continue
                        case_work = work / f"{mode}-{run}"
                        if mode == BASELINE:
                            record = run_oci(net, prepared, case_work)
                        else:
                            record = run_lazy(net, prepared, support, mode, case_work)
                        prepared.runs.setdefault(mode, []).append(record)
                        print(f"  {image.spec.name} {mode} run {run + 1}: {record['seconds']:.2f} s, "
                              f"{record['bytes_down'] / 2**20:.1f} MiB", flush=True)  # fmt: skip
                prepared.record["cases"] = [
                    median_case(mode, support, prepared.runs.get(mode, [])) for mode in settings.modes
                ]
                records.append(prepared.record)
                shutil.rmtree(work, ignore_errors=True)
    settings_record: dict[str, object] = {
        "rtt_ms": settings.rtt_ms,
        "rate_mbit": settings.rate_mbit,
        "runs": settings.runs,
        "images": settings.images,
        "modes": settings.modes,
    }
    return {"settings": settings_record, "images": records}


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_arguments(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round-trip time the shaper adds (20)")
    parser.add_argument("--rate-mbit", type=float, default=200.0, help="bandwidth of the shaped link (200)")
    parser.add_argument("--images", default=",".join(IMAGES), help=f"comma-separated, of: {', '.join(IMAGES)}")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each case; medians are reported (3)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--quick", action="store_true", help=f"one small image ({QUICK_IMAGE}), one run")
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
    name = "coldstart-quick" if arguments.quick else "coldstart"
    return Settings(
        arguments.rtt_ms,
        arguments.rate_mbit,
        images,
        runs,
        modes,
        arguments.output_dir,
        Path(arguments.cache_dir),
        name,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_arguments(argv)
    if os.geteuid() != 0:
        print("coldstart: needs root (runc, overlay and FUSE mounts)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = time.perf_counter()
    try:
        results = benchmark(settings)
    except KeyboardInterrupt:
        print("coldstart: interrupted; registry, shaper and mounts stopped", file=sys.stderr)
        return 130
    results["settings"]["wall_s"] = round(time.perf_counter() - started, 1)
    paths = write_report(results, settings.output_dir, settings.name)
    print(markdown(results))
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
