"""The `http` backend through a real mount: blobs served by a plain web server over loopback.

The server is a small Range-capable file server of the test's own (Python's `http.server` ignores
`Range`), standing in for nginx; it counts the bytes it sends so the test also sees that a small
read fetches a small range, not the blob.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.readahead import AMPLIFY_BEFORE_SHARE
from tests.daemon.images import build_image, synthetic_tree, unpack
from tests.daemon.nydusd import mounted, requires_fuse
from tests.reference import diff, snapshot_directory

pytestmark = [pytest.mark.fuse, requires_fuse]


class BlobServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.bytes_sent = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), BlobHandler)


class BlobHandler(BaseHTTPRequestHandler):
    server: BlobServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _path(self) -> str | None:
        name = self.path.rsplit("/", 1)[-1]
        path = os.path.join(self.server.directory, name)
        return path if re.fullmatch(r"[0-9a-f]{64}", name) and os.path.isfile(path) else None

    def do_HEAD(self) -> None:
        path = self._path()
        self.send_response(200 if path else 404)
        self.send_header("Content-Length", str(os.path.getsize(path)) if path else "0")
        self.end_headers()

    def do_GET(self) -> None:
        path = self._path()
        if path is None:
            self.send_error(404)
            return
        size = os.path.getsize(path)
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        start, end = (int(match.group(1)), min(int(match.group(2)), size - 1)) if match else (0, size - 1)
        with open(path, "rb") as file:
            file.seek(start)
            body = file.read(end - start + 1)
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with self.server.lock:
            self.server.bytes_sent += len(body)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[BlobServer, str, str, str]]:
    image = build_image(synthetic_tree(str(tmp_path / "src")), str(tmp_path), chunk_size=0x10000)
    server = BlobServer(image.blob_dir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "nydusd.json"
    url = f"http://127.0.0.1:{server.server_address[1]}/blobs"
    cache = {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}
    config.write_text(json.dumps({"device": {"backend": {"type": "http", "config": {"url": url}}, "cache": cache}}))
    yield server, image.bootstrap, str(config), unpack(image, str(tmp_path / "unpacked"))
    server.shutdown()
    server.server_close()


def test_http_backend_mount_matches_unpack_and_fetches_lazily(
    served: tuple[BlobServer, str, str, str], tmp_path: Path
) -> None:
    server, bootstrap, config, unpacked = served
    mountpoint = str(tmp_path / "mnt")
    with mounted(bootstrap, mountpoint, config, str(tmp_path / "nydusd.log")):
        with open(os.path.join(mountpoint, "etc", "passwd"), "rb") as file:
            small = file.read()
        after_small_read = server.bytes_sent
        seen = snapshot_directory(mountpoint)
    with open(os.path.join(unpacked, "etc", "passwd"), "rb") as file:
        assert small == file.read()
    blobs_total = sum(os.path.getsize(os.path.join(server.directory, name)) for name in os.listdir(server.directory))
    # One small file: its chunk plus at most one readahead window (amplify_io, 1 MiB, after it and a
    # quarter of that before it), not the blobs.
    window = (1 << 20) + int((1 << 20) * AMPLIFY_BEFORE_SHARE)
    assert 0 < after_small_read <= window + 0x10000 < blobs_total
    assert diff(snapshot_directory(unpacked), seen) == []
