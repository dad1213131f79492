"""The cold-start harness: its unpacker, runc and lazy-mount plumbing, its report, and one real
`--quick` run whose numbers are checked where they can be (an OCI pull fetches every layer byte;
a lazy start, when the project can do one, fetches less)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from benchmarks import coldstart
from benchmarks.coldstart_images import IMAGES
from benchmarks.coldstart_runtime import Phases, is_mounted, lazy_rootfs, run_container, unpack_layer, unpack_stream
from benchmarks.coldstart_timeline import TimelineError, read_timeline, summarise, union
from benchmarks.report import (
    CaseRecord,
    DaemonRecord,
    ImageRecord,
    LinkRecord,
    Results,
    RunRecord,
    load,
    markdown,
    write_report,
)

REPOSITORY = Path(__file__).resolve().parents[2]
is_root = os.geteuid() == 0
requires_runc = pytest.mark.skipif(not is_root or shutil.which("runc") is None, reason="needs root and runc")


# ---- OCI unpack


def _layer(path: Path, entries: Mapping[str, bytes | None]) -> Path:
    """A tar.gz of files (bytes) and directories (None)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def test_unpack_applies_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    lower = {"etc": None, "etc/keep": b"k", "etc/gone": b"g", "opaque": None, "opaque/old": b"o", "tree": None}
    unpack_layer(_layer(tmp_path / "1.tar.gz", {**lower, "tree/a": b"a"}), rootfs)
    upper = {"etc/.wh.gone": b"", "opaque/.wh..wh..opq": b"", "opaque/new": b"n", ".wh.tree": b"", "added": b"+"}
    unpack_layer(_layer(tmp_path / "2.tar.gz", upper), rootfs)
    assert sorted(os.listdir(rootfs)) == ["added", "etc", "opaque"]
    assert sorted(os.listdir(rootfs / "etc")) == ["keep"]
    assert sorted(os.listdir(rootfs / "opaque")) == ["new"]


def test_unpack_stream_extracts_pieces_as_they_come_and_checks_the_digest(tmp_path: Path) -> None:
    layer = _layer(tmp_path / "1.tar.gz", {"dir": None, "dir/file": b"contents" * 10_000})
    data = layer.read_bytes()
    pieces = [data[index : index + 1000] for index in range(0, len(data), 1000)]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (tmp_path / "rootfs").mkdir()
    unpack_stream(iter(pieces), tmp_path / "rootfs", "layer-1", digest)
    assert (tmp_path / "rootfs/dir/file").read_bytes() == b"contents" * 10_000
    (tmp_path / "other").mkdir()
    with pytest.raises(RuntimeError, match="differs from its digest"):
        unpack_stream(iter(pieces), tmp_path / "other", "layer-1", "sha256:" + "0" * 64)


def test_unpack_stream_stops_tar_when_the_download_fails(tmp_path: Path) -> None:
    data = _layer(tmp_path / "1.tar.gz", {"file": b"x" * 100_000}).read_bytes()

    def failing() -> Iterator[bytes]:
        yield data[:100]
        raise ConnectionError("link went down")

    (tmp_path / "rootfs").mkdir()
    with pytest.raises(ConnectionError, match="link went down"):
        unpack_stream(failing(), tmp_path / "rootfs", "layer-1")


def test_unpack_refuses_a_corrupt_layer(tmp_path: Path) -> None:
    layer = tmp_path / "bad.tar.gz"
    layer.write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "rootfs").mkdir()
    with pytest.raises(RuntimeError, match=r"tar -xzf"):
        unpack_layer(layer, tmp_path / "rootfs")


# ---- runc and the lazy mount (localfs backend: plumbing only, never a benchmark figure)


def _host_shell_root(root: Path) -> Path:
    """A rootfs with the host's /bin/sh and the libraries it links."""
    shell = os.path.realpath("/bin/sh")
    libraries = subprocess.run(["ldd", shell], capture_output=True, text=True, check=True).stdout
    for path in [shell, *(word for word in libraries.split() if word.startswith("/"))]:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    if not (root / "bin/sh").exists():
        (root / "bin").mkdir(exist_ok=True)
        os.symlink(shell, root / "bin/sh")
    for name in ("tmp", "proc", "dev", "sys"):
        (root / name).mkdir(exist_ok=True)
    return root


@requires_runc
def test_run_container_returns_output_and_raises_on_failure(tmp_path: Path) -> None:
    rootfs = _host_shell_root(tmp_path / "rootfs")
    ids = [f"coldstart-test-{os.getpid()}-{index}" for index in range(2)]
    assert run_container(tmp_path / "bundle", rootfs, ["/bin/sh", "-c", "echo hello"], ids[0]) == "hello\n"
    with pytest.raises(RuntimeError, match="exited 3"):
        run_container(tmp_path / "bundle", rootfs, ["/bin/sh", "-c", "exit 3"], ids[1])
    listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True, check=True).stdout.split()
    assert not set(ids) & set(listed)  # both deleted (other sessions' containers may be running)


@requires_runc
@pytest.mark.fuse
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_lazy_rootfs_overlays_the_mount_and_undoes_everything(tmp_path: Path) -> None:
    rootfs = _host_shell_root(tmp_path / "source")
    subprocess.run(
        ["nydus-image", "create", "--source-type", "directory", "--bootstrap", str(tmp_path / "image.boot"),
         "--blob-dir", str(tmp_path / "blobs"), str(rootfs)],
        check=True, capture_output=True,
    )  # fmt: skip
    config: dict[str, object] = {
        "device": {
            "backend": {"type": "localfs", "config": {"dir": str(tmp_path / "blobs")}},
            "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}},
        }
    }
    work = tmp_path / "mount"
    phases = Phases()
    with lazy_rootfs(["--bootstrap", str(tmp_path / "image.boot")], work, config, phases) as merged:
        assert is_mounted(work / "lower") and is_mounted(merged)
        output = run_container(tmp_path / "bundle", merged, ["/bin/sh", "-c", "echo written > /tmp/new; echo ok"])
        assert output == "ok\n"
    assert list(phases.events) == ["mounted"]
    assert phases.started_at <= phases.events["mounted"] <= time.time()
    assert (work / "upper/tmp/new").read_text() == "written\n"  # writes went to the upper dir
    assert not is_mounted(work / "lower") and not is_mounted(work / "merged")


# ---- nydusd's timeline


def test_timeline_summary_in_seconds_from_the_start_with_the_union_of_waits(tmp_path: Path) -> None:
    origin = 1_000.0
    document = {
        "clock": "unix", "started_at": 1_000.2, "mounted_at": 1_000.5, "first_read_at": 1_000.6,
        "fuse_reads": 40, "fuse_read_bytes": 5 << 20, "max_in_flight": 3, "cpu_s": 1.25,
        "requests": [
            {"start": 1_000.6, "end": 1_000.7, "bytes": 1 << 20, "priority": "demand", "ok": True},
            {"start": 1_000.6, "end": 1_000.8, "bytes": 2 << 20, "priority": "readahead", "ok": True},
            {"start": 1_000.7, "end": 1_000.9, "bytes": 0, "priority": "demand", "ok": False},
        ],
        "blocked": [{"start": 1_000.6, "end": 1_000.7}, {"start": 1_000.65, "end": 1_000.75},
                    {"start": 1_001.0, "end": 1_001.5}],
    }  # fmt: skip
    path = tmp_path / "timeline.json"
    path.write_text(json.dumps(document))
    summary = summarise(read_timeline(path), origin)
    assert (summary["started_s"], summary["mounted_s"], summary["first_read_s"]) == (0.2, 0.5, 0.6)
    assert (summary["fuse_reads"], summary["fuse_read_bytes"], summary["max_in_flight"]) == (40, 5 << 20, 3)
    assert summary["requests_by_priority"] == {"demand": 2, "readahead": 1, "prefetch": 0}
    assert summary["bytes_by_priority"] == {"demand": 1 << 20, "readahead": 2 << 20, "prefetch": 0}
    assert (summary["requests"], summary["failed_requests"], summary["cpu_s"]) == (3, 1, 1.25)
    assert summary["blocked_spans"] == [[0.6, 0.75], [1.0, 1.5]]
    assert summary["blocked_s"] == pytest.approx(0.65)
    assert summary["blocked_read_s"] == pytest.approx(0.7)
    assert union([(3, 4), (1, 2), (2, 2.5)]) == [(1, 2.5), (3, 4)]


def test_timeline_that_is_missing_or_not_nydusds_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TimelineError, match="wrote no timeline"):
        read_timeline(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"clock": "monotonic"}')
    with pytest.raises(TimelineError, match="unix clock"):
        read_timeline(tmp_path / "other.json")
    with pytest.raises(TimelineError, match="mounted_at"):
        summarise({"clock": "unix", "started_at": 1.0, "mounted_at": None}, 0.0)


# ---- report (from a synthetic results file)


def _run(seconds: float, fetched: int, *, requests: int = 10, in_flight: int = 2, lazy: bool = False) -> RunRecord:
    daemon: DaemonRecord | None = None
    events = {"unpacked": seconds * 0.9, "exit": seconds}
    if lazy:
        daemon = {
            "started_s": 0.1, "mounted_s": 0.3, "first_read_s": 0.4, "fuse_reads": 100, "fuse_read_bytes": 7 << 20,
            "requests": requests, "failed_requests": 0, "requests_by_priority": {"demand": 6, "readahead": 4, "prefetch": 0},
            "bytes_by_priority": {"demand": 1, "readahead": 1, "prefetch": 0}, "max_in_flight": in_flight,
            "blocked_s": 0.25, "blocked_read_s": 0.5, "blocked_spans": [[0.4, 0.5], [0.6, 0.75]], "cpu_s": 1.5,
        }  # fmt: skip
        events = {"daemon process": 0.1, "mounted": 0.3, "first read": 0.4, "exit": seconds}
    return {
        "seconds": seconds, "events": events, "bytes_down": fetched, "bytes_up": 100, "requests": requests,
        "max_in_flight": in_flight, "down_series": [[seconds / 2, fetched // 2], [seconds, fetched]],
        "in_flight_series": [[seconds / 2, in_flight], [seconds, 0]], "daemon": daemon,
    }  # fmt: skip


def _case(mode: str, runs: list[RunRecord], reason: str = "") -> CaseRecord:
    if not runs:
        return {"mode": mode, "available": False, "reason": reason, "runs": [], "median_s": None,
                "median_bytes_down": None}  # fmt: skip
    return {"mode": mode, "available": True, "reason": "", "runs": runs,
            "median_s": sorted(run["seconds"] for run in runs)[len(runs) // 2],
            "median_bytes_down": sorted(run["bytes_down"] for run in runs)[len(runs) // 2]}  # fmt: skip


def _results() -> Results:
    link: LinkRecord = {
        "rtt_ms": 20,
        "rate_mbit": 200,
        "cases": [
            _case("oci", [_run(8.0, 40 << 20, requests=4), _run(9.0, 40 << 20, requests=4), _run(7.0, 40 << 20)]),
            _case("local-disk", [_run(1.0, 0, requests=0, in_flight=0)]),
            _case("lazy-cold", [_run(2.0, 8 << 20, requests=30, in_flight=5, lazy=True)]),
            _case("lazy-prefetch", [_run(1.6, 4 << 20, requests=6, in_flight=3, lazy=True)]),
            _case("lazy-warm", [], reason="no warm cache today"),
        ],
    }
    image: ImageRecord = {
        "name": "img", "description": "d", "workload": ["/bin/sh", "-c", "true"], "layers": 2, "files": 10,
        "oci_bytes": 40 << 20, "unpacked_bytes": 100 << 20, "nydus_blob_bytes": 42 << 20, "bootstrap_bytes": 2048,
        "convert_s": 1.5, "trace_files": 12, "read_bytes": 7 << 20,
        "links": [link, {**link, "rate_mbit": 400}],
    }  # fmt: skip
    return {"settings": {"rtt_ms": 20, "rates_mbit": [200, 400], "runs": 3}, "images": [image]}


def test_report_table_gives_ratios_to_oci_local_disk_and_the_trace_mode(tmp_path: Path) -> None:
    table = markdown(_results())
    assert "### img, 20 ms RTT, 200 Mbit/s" in table and "### img, 20 ms RTT, 400 Mbit/s" in table
    # mode | seconds | OCI / this | this / local disk | MiB | bytes / trace mode's | requests | max in flight
    assert "| OCI pull + unpack | 8.00 | 1.00x | 8.00x | 40.0 | - | 4 | 2 |" in table
    assert "| local disk | 1.00 | 8.00x | 1.00x | 0.0 | - | 0 | 0 |" in table
    assert "| lazy, cold | 2.00 | 4.00x | 2.00x | 8.0 | 2.00x | 30 | 5 |" in table
    assert "| lazy, cold + trace prefetch | 1.60 | 5.00x | 1.60x | 4.0 | 1.00x | 6 | 3 |" in table
    assert "| lazy, warm cache | not available: no warm cache today |" in table
    # phases of the median run: mounted, then first read, then exit, total, blocked, FUSE MiB, requests
    assert "| lazy, cold | 0.30 | 0.10 | 1.60 | 2.00 | 0.25 (0.5) | 7.0 | 6/4/0 | 5 | 1.50 |" in table
    assert "| OCI pull + unpack | 7.20 | - | 0.80 | 8.00 | - | - | - | - | - |" in table
    assert "| img | d | `/bin/sh -c true` | 2 | 10 | 100.0 | 40.0 | 42.0 | 2 | 1.5 | 12 | 7.0 |" in table


def test_report_writes_json_markdown_and_both_charts(tmp_path: Path) -> None:
    results = _results()
    paths = write_report(results, str(tmp_path), "check")
    names = [os.path.basename(path) for path in paths]
    assert names == ["check.json", "check.md", "check.png", "check-timeline.png"]
    assert json.loads(Path(paths[0]).read_text())["images"][0]["links"][1]["rate_mbit"] == 400
    assert Path(paths[1]).read_text() == markdown(results) + "\n"
    for png in paths[2:]:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load(paths[0])["images"] == results["images"]  # what `python3 -m benchmarks.report` reads back


def test_arguments_quick_links_and_baseline() -> None:
    settings = coldstart.parse_arguments(["--quick", "--modes", "lazy-cold"])
    assert (settings.images, settings.runs, settings.modes) == ([coldstart.QUICK_IMAGE], 1, ["oci", "lazy-cold"])
    assert (settings.name, settings.rates_mbit) == ("coldstart-quick", [200.0])
    defaults = coldstart.parse_arguments([])
    assert (defaults.rtt_ms, defaults.rates_mbit, defaults.runs) == (20.0, [200.0, 400.0], 3)
    assert defaults.modes == list(coldstart.MODES)
    assert "debian-sci" in defaults.images
    assert coldstart.parse_arguments(["--rate-mbit", "100"]).rates_mbit == [100.0]
    for bad in ("0", "fast", "200,200"):
        with pytest.raises(SystemExit):
            coldstart.parse_arguments(["--rate-mbit", bad])


def test_config_leaves_the_daemons_defaults_alone() -> None:
    cold = coldstart.registry_backend_config("127.0.0.1:1", "repo", "/cache", prefetch=False)
    assert "fs_prefetch" not in cold  # not even "enable": false: the default is what is measured
    assert coldstart.registry_backend_config("127.0.0.1:1", "repo", "/cache", prefetch=True)["fs_prefetch"] == {
        "enable": True
    }
    assert "fs_driver" not in cold
    assert (
        coldstart.registry_backend_config("h:1", "r", "/c", prefetch=False, fs_driver="erofs")["fs_driver"] == "erofs"
    )


def test_large_image_is_layered_like_a_real_one() -> None:
    spec = IMAGES["debian-sci"]
    assert len(spec.layers) == 4  # base, python + numpy, the scientific stack, the app
    assert spec.layers[-1].files and not spec.layers[-1].packages
    links = dict(spec.layers[1].symlinks)
    assert links["usr/lib/x86_64-linux-gnu/libblas.so.3"] == "/etc/alternatives/libblas.so.3-x86_64-linux-gnu"


# ---- one real quick run


@pytest.mark.slow
@pytest.mark.fuse
@requires_runc
@pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs docker-registry")
def test_quick_run_measures_honest_bytes(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.coldstart", "--quick", "--output-dir", str(tmp_path)],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "coldstart-quick.json").read_text())
    for suffix in (".png", "-timeline.png", ".md"):
        assert (tmp_path / f"coldstart-quick{suffix}").exists(), suffix
    [image] = results["images"]
    [link] = image["links"]
    assert link["rate_mbit"] == 200
    cases = {case["mode"]: case for case in link["cases"]}
    assert list(cases) == list(coldstart.MODES)
    oci = cases["oci"]
    assert oci["available"] and len(oci["runs"]) == 1
    [oci_run] = oci["runs"]
    assert 0 < oci_run["events"]["unpacked"] < oci_run["events"]["exit"] == oci_run["seconds"]
    # an OCI pull fetches every byte of every layer (plus manifest, config and HTTP headers), in
    # one request each: manifest, config, layers
    assert oci["median_bytes_down"] >= image["oci_bytes"]
    assert oci["median_bytes_down"] < image["oci_bytes"] * 1.05 + (1 << 20)
    assert oci_run["requests"] >= 2 + image["layers"]
    assert oci_run["down_series"][-1][1] == oci_run["bytes_down"]
    [local] = cases["local-disk"]["runs"]
    assert (local["bytes_down"], local["requests"], local["daemon"]) == (0, 0, None)
    for mode in coldstart.LAZY_MODES:
        case = cases[mode]
        assert case["available"] and len(case["runs"]) == 1, mode
        assert 0 < case["median_bytes_down"] < oci["median_bytes_down"], mode
        [run] = case["runs"]
        assert run["requests"] >= 1 and run["max_in_flight"] >= 1, mode
        daemon = run["daemon"]  # nydusd's own account: the workload read through the mount after it mounted
        assert daemon is not None and daemon["fuse_read_bytes"] > 0, mode
        assert daemon["mounted_s"] <= (daemon["first_read_s"] or 0) <= run["seconds"], mode
        assert run["events"]["mounted"] == pytest.approx(daemon["mounted_s"], abs=1e-3), mode
    assert image["trace_files"] > 0  # the prefetch list came from a real access trace
    assert cases["lazy-warm"]["median_bytes_down"] < cases["lazy-cold"]["median_bytes_down"]
    assert cases["erofs-warm"]["median_bytes_down"] < cases["erofs-cold"]["median_bytes_down"]
    # the registry and the shaper stopped with the run: their ports refuse connections
    addresses = re.search(r"registry (127\.0\.0\.1:\d+), shapers (127\.0\.0\.1:\d+)", completed.stdout)
    assert addresses is not None, completed.stdout
    for address in addresses.groups():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=2).close()


def test_missing_tools_are_named_in_one_line(tmp_path: Path) -> None:
    """Run from a shell without the venv on PATH: one line naming what is missing, exit 2."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.coldstart", "--quick", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coldstart: not on PATH: nydusd, nydusify"), lines
    assert list(tmp_path.iterdir()) == []  # nothing written
