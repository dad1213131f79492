"""One contract, every backend: localfs, http (with and without `Range` support) and registry.

Each backend is a real one against a real store (a directory, an HTTP server of the test's own,
`docker-registry` on loopback) holding the same blobs; the tests say what `BlobBackend`
promises and hold every backend to it.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.registry_server import start_registry
from daemon.storage.backend import BlobBackend, BlobNotFound, RangeNotSatisfied
from daemon.storage.backends import open_backend
from daemon.storage.options import HttpConfig, HttpOptions, LocalFsConfig, RegistryConfig, RegistryOptions
from daemon.storage.registry import RegistryClient
from rafs.oci import ImageReference, sha256_digest

BLOBS = [random.Random(seed).randbytes(size) for seed, size in ((1, 1), (2, 4096), (3, 300_001))]
QUICK = HttpOptions(timeout_s=10, connect_timeout_s=2, retry_limit=1, backoff_s=0.01)
ABSENT = "f" * 64


def blob_id(data: bytes) -> str:
    return sha256_digest(data)[len("sha256:") :]


def serve_directory(directory: Path, honour_range: bool) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server for `directory`'s files; with `honour_range`, `Range` gets a 206."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _body(self) -> bytes | None:
            path = directory / self.path.lstrip("/")
            if "/" in self.path.lstrip("/") or not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return path.read_bytes()

        def do_HEAD(self) -> None:
            data = self._body()
            if data is not None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()

        def do_GET(self) -> None:
            data = self._body()
            if data is None:
                return
            wanted = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
            if not honour_range or wanted is None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            start, end = int(wanted.group(1)), min(int(wanted.group(2)), len(data) - 1)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Length", str(end + 1 - start))
            self.end_headers()
            self.wfile.write(data[start : end + 1])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(params=["localfs", "http-range", "http-whole", "registry"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobBackend]:
    directory = tmp_path / "blobs"
    directory.mkdir()
    for data in BLOBS:
        (directory / blob_id(data)).write_bytes(data)
    stop: Callable[[], None] = lambda: None  # noqa: E731 - replaced by each kind that starts something
    if request.param == "localfs":
        opened = open_backend(LocalFsConfig(str(directory)))
    elif request.param.startswith("http"):
        server, url = serve_directory(directory, honour_range=request.param == "http-range")
        opened = open_backend(HttpConfig(url, QUICK))

        def stop() -> None:
            server.shutdown()
            server.server_close()

    else:
        registry = start_registry(tmp_path / "registry")
        stop = registry.stop
        ref = ImageReference.parse(f"{registry.host}/contract/blobs")
        pusher = RegistryClient(RegistryOptions(docker_config=""))
        for data in BLOBS:
            pusher.push_blob(ref, sha256_digest(data), data)
        pusher.close()
        options = RegistryOptions(http=QUICK, docker_config="")
        opened = open_backend(RegistryConfig(registry.host, "contract/blobs", options))
    try:
        yield opened
    finally:
        opened.close()
        stop()


def test_exact_ranges(backend: BlobBackend) -> None:
    rng = random.Random(7)
    for data in BLOBS:
        assert backend.read_range(blob_id(data), 0, len(data)) == data
        assert backend.read_range(blob_id(data), len(data) - 1, 1) == data[-1:]
        for _ in range(5):
            offset = rng.randrange(len(data))
            length = rng.randint(1, len(data) - offset)
            assert backend.read_range(blob_id(data), offset, length) == data[offset : offset + length]


def test_sizes(backend: BlobBackend) -> None:
    assert [backend.blob_size(blob_id(data)) for data in BLOBS] == [len(data) for data in BLOBS]


def test_a_range_past_the_end_is_refused(backend: BlobBackend) -> None:
    data = BLOBS[2]
    with pytest.raises(RangeNotSatisfied):
        backend.read_range(blob_id(data), len(data) - 10, 20)
    with pytest.raises(RangeNotSatisfied):
        backend.read_range(blob_id(data), len(data) + 10, 5)


def test_an_absent_blob_is_not_found(backend: BlobBackend) -> None:
    with pytest.raises(BlobNotFound):
        backend.read_range(ABSENT, 0, 10)
    with pytest.raises(BlobNotFound):
        backend.blob_size(ABSENT)


@pytest.mark.parametrize("bad", ["../" + "a" * 61, "A" * 64, "a" * 63, "", "sha256:" + "a" * 57])
def test_an_id_that_is_not_a_sha256_names_nothing(backend: BlobBackend, bad: str) -> None:
    with pytest.raises(BlobNotFound, match="invalid blob id"):
        backend.read_range(bad, 0, 1)


def test_threads_may_share_a_backend(backend: BlobBackend) -> None:
    data = BLOBS[2]
    ranges = [(offset, 4096) for offset in range(0, len(data) - 4096, 37_000)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda r: backend.read_range(blob_id(data), *r), ranges))
    assert got == [data[offset : offset + length] for offset, length in ranges]
