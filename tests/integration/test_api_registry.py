"""nydusd as nydus-snapshotter drives it: its exact command line, a registry backend behind the
fault proxy, every metrics route checked against what the test read and what the proxy saw, a
fault that shows in `events` and `metrics/backend`, the log level set and the exit asked, all
through the API socket."""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.metrics import Fop
from daemon.storage.image import fetch_bootstrap
from daemon.storage.registry import RegistryClient, RegistryOptions
from rafs.oci import ImageReference
from tests.daemon.api_daemon import SNAPSHOTTER_FLAGS, start_api_daemon
from tests.daemon.nydusd import NYDUSD, REPO, force_unmount, is_mounted, requires_fuse
from tests.integration.registry_mount import convert, fix_mtimes, push_directory
from tests.registry.faultproxy import FaultProxy
from tests.registry_fixture import RunningRegistry, start_registry

pytestmark = [pytest.mark.fuse, requires_fuse]

FILES = {"data/big": 2 << 20, "data/small": 100_000, "data/third": 300_000, "etc/hello": 6}


@dataclass(frozen=True)
class Pushed:
    registry: RunningRegistry
    source: str
    ref: ImageReference  # the converted image
    bootstrap: str  # fetched, as the snapshotter fetches it before starting nydusd


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    base = tmp_path_factory.mktemp("api-registry")
    running = start_registry(base / "registry")
    try:
        source = base / "src"
        rng = random.Random(10)
        for name, size in FILES.items():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes(rng.randbytes(size))
        fix_mtimes(str(source))
        target = convert(push_directory(running.host, "library/api", str(source)), str(base / "convert"))
        client = RegistryClient(RegistryOptions(docker_config=""))
        try:
            bootstrap = fetch_bootstrap(client, target, str(base / "boot"))
        finally:
            client.close()
        yield Pushed(running, str(source), target, bootstrap)
    finally:
        running.stop()


def snapshotter_config(path: Path, proxy: FaultProxy, repo: str, work_dir: Path) -> str:
    """nydus-snapshotter's default fusedev config with host, repo, auth and work_dir filled in,
    every metrics switch on, and no prefetch or readahead: each read meets the backend alone."""
    config = {
        "device": {
            "backend": {
                "type": "registry",
                "config": {
                    "scheme": "http",
                    "host": proxy.host,
                    "repo": repo,
                    "auth": base64.b64encode(b"user:secret").decode(),
                    "timeout": 5,
                    "connect_timeout": 5,
                    "retry_limit": 1,
                },
            },
            "cache": {"type": "blobcache", "config": {"work_dir": str(work_dir)}},
        },
        "mode": "direct",
        "digest_validate": False,
        "iostats_files": True,
        "access_pattern": True,
        "latest_read_files": True,
        "enable_xattr": True,
        "amplify_io": 0,
        "fs_prefetch": {"enable": False, "threads_count": 8, "merging_size": 1048576, "prefetch_all": False},
        "readahead": {"whole_file_max": 0, "window_max": 0},
    }
    path.write_text(json.dumps(config))
    return str(path)


def read_file(path: str) -> bytes | int:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        return error.errno or -1


def test_the_snapshotters_command_line_and_every_route(pushed: Pushed, tmp_path: Path) -> None:
    proxy = FaultProxy(pushed.registry.host)
    mountpoint, sock, log_file = str(tmp_path / "mnt"), str(tmp_path / "api.sock"), str(tmp_path / "nydusd.log")
    config = snapshotter_config(tmp_path / "config.json", proxy, pushed.ref.repository, tmp_path / "cache")
    # nydus-snapshotter's exact flags, in its order
    arguments = [
        "--thread-num", "4", "--config", config, "--bootstrap", pushed.bootstrap, "--mountpoint", mountpoint,
        "--apisock", sock, "--log-level", "info", "--log-file", log_file, "--failover-policy", "resend",
    ]  # fmt: skip
    daemon = start_api_daemon(arguments, mountpoint, sock, str(tmp_path / "out"), exact=True)
    try:
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        info = daemon.get("/api/v1/daemon")
        assert isinstance(info, dict)
        assert info["state"] == "RUNNING"
        version = subprocess.run([*NYDUSD, "--version"], capture_output=True, text=True, cwd=REPO, check=True)
        assert info["version"]["package_ver"] in version.stdout
        backend = info["backend_collection"]["/"]
        assert backend["backend_type"] == "registry"
        assert backend["config"]["backend"]["config"]["host"] == proxy.host
        assert backend["config"]["backend"]["config"]["auth"] == "<redacted>"  # never the credentials
        assert daemon.get("/api/v1/metrics/inflight") == []

        # the workload: two files read whole, in this order
        big, small = os.path.join(mountpoint, "data/big"), os.path.join(mountpoint, "data/small")
        assert read_file(big) == Path(pushed.source, "data/big").read_bytes()
        assert read_file(small) == Path(pushed.source, "data/small").read_bytes()
        big_ino, small_ino = os.stat(big).st_ino, os.stat(small).st_ino

        fs = daemon.get("/api/v1/metrics?id=/")
        assert isinstance(fs, dict)
        assert fs["data_read"] == FILES["data/big"] + FILES["data/small"]
        assert fs["fop_hits"][Fop.OPEN] == 2 and fs["nr_opens"] == 0
        assert fs["fop_hits"][Fop.READ] == sum(fs["block_count_read"]) == sum(fs["read_latency_dist"]) >= 2
        assert fs["fop_errors"][Fop.READ] == 0
        assert daemon.get("/api/v1/metrics") == daemon.get("/api/v1/metrics?id=/")  # the only mount
        files = daemon.get("/api/v1/metrics/files")
        assert isinstance(files, dict)
        assert files[str(big_ino)]["data_read"] == FILES["data/big"]
        assert files[str(small_ino)]["data_read"] == FILES["data/small"]
        assert files[str(big_ino)]["nr_open"] == 0
        assert daemon.get("/api/v1/metrics/files?latest=true") == sorted([big_ino, small_ino])
        assert daemon.get("/api/v1/metrics/files?latest=true") == []  # read since the last call: none
        pattern = daemon.get("/api/v1/metrics/pattern")
        assert isinstance(pattern, list)
        assert [entry["ino"] for entry in pattern] == [big_ino, small_ino]  # first-access order
        assert all(entry["nr_read"] >= 1 and entry["first_access_time_secs"] > 0 for entry in pattern)

        backend_metrics = daemon.get("/api/v1/metrics/backend")
        assert isinstance(backend_metrics, dict)
        range_gets = proxy.count("GET", "/blobs/sha256:")
        assert backend_metrics["backend_type"] == "registry"
        assert backend_metrics["read_count"] == range_gets >= 2
        assert backend_metrics["read_amount_total"] == proxy.bytes_sent("/blobs/sha256:")
        assert backend_metrics["read_errors"] == 0
        assert sum(backend_metrics["read_count_block_size_dist"]) == range_gets

        cache = daemon.get("/api/v1/metrics/blobcache")
        assert isinstance(cache, dict)
        assert cache["store_path"] == str(tmp_path / "cache")
        assert cache["underlying_files"] and all(os.path.isfile(path) for path in cache["underlying_files"])
        assert all(os.path.dirname(path) == str(tmp_path / "cache") for path in cache["underlying_files"])
        assert cache["entries_count"] >= 3  # 2 MiB + 100 KB in 1 MiB chunks
        assert cache["total"] >= cache["whole_hits"]
        assert cache["data_all_ready"] is False  # data/third was never read

        # a fault: every blob request answers 500, so a read of the third file fails
        proxy.inject("500", "/blobs/sha256:", method="GET", times=1000)
        assert read_file(os.path.join(mountpoint, "data/third")) == errno.EIO
        proxy.faults.clear()
        events = daemon.get("/api/v1/daemon/events")
        assert isinstance(events, dict)
        assert events["total_errors"] >= 1
        assert any("/data/third" in line and "500" in line for line in events["errors"]), events
        failed = daemon.get("/api/v1/metrics/backend")
        assert isinstance(failed, dict)
        assert failed["read_errors"] >= 1
        assert failed["read_count"] == backend_metrics["read_count"] + failed["read_errors"]
        after = daemon.get("/api/v1/metrics")
        assert isinstance(after, dict)
        assert after["fop_errors"][Fop.READ] >= 1

        # the log level, at run time: debug lines appear only after it is set
        assert "api: GET /api/v1/daemon" not in Path(log_file).read_text()
        assert daemon.call("PUT", "/api/v1/daemon", {"log_level": "debug"}) == (204, None)
        daemon.get("/api/v1/daemon")
        assert "api: GET /api/v1/daemon -> 200" in Path(log_file).read_text()
        status, error = daemon.call("PUT", "/api/v1/daemon", {"log_level": "loud"})
        assert status == 400 and isinstance(error, dict) and "loud" in error["message"]

        # exit through the API: unmounted, socket gone, status 0
        assert daemon.call("PUT", "/api/v1/daemon/exit") == (204, None)
        assert daemon.process.wait(timeout=30) == 0
        assert not is_mounted(mountpoint)
        assert not os.path.exists(sock)
    finally:
        daemon.stop()
        force_unmount(mountpoint)
        proxy.stop()


def test_the_log_file_is_where_the_log_goes(pushed: Pushed, tmp_path: Path) -> None:
    """`--log-file` takes the log (stderr stays quiet), with rotation accepted."""
    proxy = FaultProxy(pushed.registry.host)
    mountpoint, sock, log_file = str(tmp_path / "mnt"), str(tmp_path / "api.sock"), tmp_path / "nydusd.log"
    config = snapshotter_config(tmp_path / "config.json", proxy, pushed.ref.repository, tmp_path / "cache")
    arguments = [*SNAPSHOTTER_FLAGS, "--config", config, "--bootstrap", pushed.bootstrap]
    out = tmp_path / "stderr"
    daemon = start_api_daemon(
        [*arguments, "--log-file", str(log_file), "--log-rotation-size", "1"], mountpoint, sock, str(out)
    )
    try:
        assert "mounted" in log_file.read_text()
        assert daemon.call("PUT", "/api/v1/daemon/exit") == (204, None)
        assert daemon.process.wait(timeout=30) == 0
        assert "unmounted" in log_file.read_text()
        assert out.read_text() == ""
    finally:
        daemon.stop()
        force_unmount(mountpoint)
        proxy.stop()


def test_exit_is_answered_before_the_daemon_goes(pushed: Pushed, tmp_path: Path) -> None:
    """The exit request gets its 204 (the snapshotter waits for it), then the process ends."""
    proxy = FaultProxy(pushed.registry.host)
    mountpoint, sock = str(tmp_path / "mnt"), str(tmp_path / "api.sock")
    config = snapshotter_config(tmp_path / "config.json", proxy, pushed.ref.repository, tmp_path / "cache")
    daemon = start_api_daemon(
        [*SNAPSHOTTER_FLAGS, "--config", config, "--bootstrap", pushed.bootstrap],
        mountpoint,
        sock,
        str(tmp_path / "log"),
    )
    try:
        started = time.monotonic()
        assert daemon.call("PUT", "/api/v1/daemon/exit") == (204, None)
        assert daemon.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 10
    finally:
        daemon.stop()
        force_unmount(mountpoint)
        proxy.stop()
