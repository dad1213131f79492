"""Remote parties that misbehave: each answer is a bounded failure, one log line, no traceback.

A blob server that trickles a range one byte every half second (the read fails with EIO in
bounded time), one that redirects forever, a "registry" whose manifest never ends, and a real
registry (`docker-registry`) holding a bootstrap layer that is a gzip bomb. Every daemon is the
console script `nydusd`; peak memory is the child's `ru_maxrss`, read by a small parent process.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.storage.registry import RegistryClient, RegistryOptions
from rafs import oci
from rafs.oci import ImageReference, sha256_digest
from tests.daemon.images import Image, build_image, synthetic_tree
from tests.daemon.nydusd import force_unmount, mounted, requires_fuse
from tests.registry_fixture import RunningRegistry, registry

__all__ = ["registry"]  # the fixture, imported to be used here

pytestmark = [pytest.mark.fuse, requires_fuse]

HANG_TIMEOUT_S = 120.0  # only catches a hang: each failure below takes a few seconds
RSS_BOUND_KIB = 256 << 10  # the daemon runs in ~60 MiB; the payloads below are 400 MiB and 1.5 GiB
RSS_PROBE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def nydusd() -> str:
    found = shutil.which("nydusd")
    if found is None:
        pytest.skip("console script nydusd is not installed (pip install -e .)")
    return found


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.stopping = threading.Event()
        self.requests = 0
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def serve() -> Iterator[object]:
    """`serve(Handler)` starts a server of the test's own on loopback; all are stopped after."""
    started: list[Server] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> Server:
        server = Server(handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stopping.set()
        server.shutdown()
        server.server_close()


class Quiet(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass


class Trickle(Quiet):
    """Answers a range with the right headers, then one byte every half second."""

    def do_GET(self) -> None:
        self.server.requests += 1
        first, _, last = self.headers.get("Range", "bytes=0-0").removeprefix("bytes=").partition("-")
        length = int(last) - int(first) + 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{1 << 30}")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            for _ in range(length):
                if self.server.stopping.wait(0.5):
                    return
                self.wfile.write(b"\0")
                self.wfile.flush()
        except OSError:
            pass  # the daemon gave up: what the test wants


class RedirectLoop(Quiet):
    def do_GET(self) -> None:
        self.server.requests += 1
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    base = tmp_path_factory.mktemp("hostile")
    return build_image(synthetic_tree(str(base / "src"), files=6), str(base), chunk_size=0x10000)


def http_config(path: Path, url: str) -> str:
    backend = {"url": url, "timeout": 1, "connect_timeout": 1, "min_transfer_rate": 100_000, "retry_limit": 1}
    path.write_text(json.dumps({"device": {"backend": {"type": "http", "config": backend}}, "amplify_io": 0}))
    return str(path)


def read_in_thread(path: str) -> OSError | bytes | None:
    """Read `path` in a thread; None if it is still blocked after `HANG_TIMEOUT_S`."""
    outcome: list[OSError | bytes] = []

    def read() -> None:
        try:
            outcome.append(Path(path).read_bytes())
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(HANG_TIMEOUT_S)
    return outcome[0] if outcome else None


def one_line_per_failed_read(log: str, *needles: str) -> None:
    """Each failed read (the kernel may retry one) logged as one line saying why; no traceback."""
    assert "Traceback" not in log, log
    failures = [line for line in log.splitlines() if " ERROR " in line]
    assert 1 <= len(failures) <= 4, log
    for line in failures:
        assert all(needle in line for needle in needles), line


@pytest.mark.parametrize(("handler", "needle"), [(Trickle, "too slow"), (RedirectLoop, "too many redirects")])
def test_a_misbehaving_blob_server_fails_the_read_in_bounded_time(
    image: Image, tmp_path: Path, serve: object, handler: type[BaseHTTPRequestHandler], needle: str
) -> None:
    server = serve(handler)  # type: ignore[operator]
    config = http_config(tmp_path / "c.json", f"{server.url}/blobs")
    log_path = str(tmp_path / "nydusd.log")
    with mounted(image.bootstrap, str(tmp_path / "mnt"), config, log_path, command=[nydusd()]) as daemon:
        outcome = read_in_thread(os.path.join(daemon.mountpoint, "etc/passwd"))
        assert outcome is not None, "the read still hangs"
        assert isinstance(outcome, OSError) and outcome.errno == errno.EIO, outcome
        assert os.lstat(os.path.join(daemon.mountpoint, "etc/passwd")).st_size > 0  # metadata still served
    assert server.requests >= 1
    one_line_per_failed_read(daemon.log(), "read failed on /etc/passwd", needle)


def run_measured(arguments: list[str], timeout_s: float = HANG_TIMEOUT_S) -> tuple[int, str, int]:
    """Exit status, stderr and peak RSS (KiB) of a console script run as a user would run it."""
    completed = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, *arguments], capture_output=True, text=True, timeout=timeout_s
    )
    return completed.returncode, completed.stderr, int(completed.stdout.strip().splitlines()[-1])


class GiantManifest(Quiet):
    """A "registry" whose manifest is 400 MiB of JSON whitespace, with or without Content-Length."""

    declare_length = False

    def do_GET(self) -> None:
        if not self.path.startswith("/v2/library/app/manifests/"):
            self.send_response(200 if self.path == "/v2/" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", oci.OCI_MANIFEST)
        if self.declare_length:
            self.send_header("Content-Length", str(400 << 20))
        self.end_headers()
        try:
            for _ in range(400):
                if self.server.stopping.is_set():
                    return
                self.wfile.write(b" " * (1 << 20))
        except OSError:
            pass


class GiantDeclaredManifest(GiantManifest):
    declare_length = True


@pytest.mark.parametrize("handler", [GiantManifest, GiantDeclaredManifest], ids=["streamed", "declared"])
def test_a_giant_manifest_is_refused_with_bounded_memory(
    tmp_path: Path, serve: object, handler: type[BaseHTTPRequestHandler]
) -> None:
    server = serve(handler)  # type: ignore[operator]
    host = server.url.removeprefix("http://")
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps({"device": {"cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "w")}}}})
    )
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    code, stderr, peak_kib = run_measured(
        [nydusd(), "--image", f"{host}/library/app:latest", "--mountpoint", str(mountpoint), "--config", str(config)]
    )
    force_unmount(str(mountpoint))
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "4194304 bytes" in lines[0], stderr
    assert peak_kib < RSS_BOUND_KIB, f"peak RSS {peak_kib} KiB"


def gzip_bomb(expanded_bytes: int) -> bytes:
    """A tar.gz holding `image/image.boot` of `expanded_bytes` zeros (1.5 GiB: about 1.5 MiB)."""
    header = tarfile.TarInfo(oci.BOOTSTRAP_PATH_IN_LAYER)
    header.size = expanded_bytes
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    out = io.BytesIO()
    out.write(compressor.compress(header.tobuf(format=tarfile.PAX_FORMAT)))
    zeros = bytes(1 << 20)
    for _ in range(expanded_bytes // len(zeros)):
        out.write(compressor.compress(zeros))
    out.write(compressor.compress(bytes(1024)))  # the tar's end
    out.write(compressor.flush())
    return out.getvalue()


def push_bomb_image(registry: RunningRegistry, layer: bytes) -> str:
    ref = ImageReference.parse(f"{registry.host}/library/bomb:nydus")
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [
            {
                "mediaType": oci.OCI_LAYER_GZIP,
                "digest": sha256_digest(layer),
                "size": len(layer),
                "annotations": {
                    oci.ANNOTATION_NYDUS_BOOTSTRAP: "true",
                    oci.ANNOTATION_NYDUS_FS_VERSION: oci.FS_VERSION,
                },
            }
        ],
    }
    client = RegistryClient(RegistryOptions(docker_config=""))
    try:
        client.push_blob(ref, sha256_digest(config), config)
        client.push_blob(ref, sha256_digest(layer), layer)
        client.push_manifest(ref, json.dumps(manifest).encode(), oci.OCI_MANIFEST)
    finally:
        client.close()
    return str(ref)


def test_a_gzip_bomb_bootstrap_layer_is_refused_with_bounded_memory(tmp_path: Path, registry: RunningRegistry) -> None:
    started = time.monotonic()
    layer = gzip_bomb(3 << 29)  # 1.5 GiB of zeros
    assert len(layer) < 4 << 20, f"{len(layer)} bytes, built in {time.monotonic() - started:.1f} s"
    ref = push_bomb_image(registry, layer)
    work_dir = tmp_path / "work"
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"device": {"cache": {"type": "blobcache", "config": {"work_dir": str(work_dir)}}}}))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    code, stderr, peak_kib = run_measured(
        [nydusd(), "--image", ref, "--mountpoint", str(mountpoint), "--config", str(config)]
    )
    force_unmount(str(mountpoint))
    assert code != 0
    lines = [line for line in stderr.splitlines() if " INFO " not in line and line.strip()]
    assert len(lines) == 1 and "bootstrap_size_limit" in lines[0], stderr
    assert "Traceback" not in stderr
    assert peak_kib < RSS_BOUND_KIB, f"peak RSS {peak_kib} KiB"
    assert os.listdir(work_dir / "bootstraps") == []  # neither the layer nor a partial bootstrap is left
