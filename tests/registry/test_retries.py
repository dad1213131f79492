"""Retries through a fault-injecting proxy: 5xx, 429, drops and truncated bodies are retried with
backoff; 4xx answers are final after one request."""

from __future__ import annotations

import functools
import http.server
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import nydusify
from builder.build import BuildOptions
from daemon.storage import backend
from daemon.storage.http import HttpBackend
from daemon.storage.options import HttpConfig, HttpOptions
from daemon.storage.registry import (
    RegistryAuthError,
    RegistryBlobNotFound,
    RegistryClient,
    RegistryError,
    RegistryOptions,
)
from daemon.storage.transport import RemoteUnavailable
from rafs.oci import ImageReference, Platform, sha256_digest
from tests.registry.faultproxy import FaultProxy
from tests.registry.images import push_image, sample_image
from tests.registry_fixture import RunningRegistry

QUICK = HttpOptions(timeout_s=10, connect_timeout_s=2, retry_limit=3, backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
def proxy(registry: RunningRegistry) -> Iterator[FaultProxy]:
    running = FaultProxy(registry.host)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def pushed(registry: RunningRegistry) -> tuple[str, bytes, bytes]:
    """The sample image pushed straight to the registry: (repository, first layer, manifest)."""
    image = sample_image()
    client = RegistryClient(RegistryOptions(docker_config=""))
    push_image(client, ImageReference.parse(f"{registry.host}/retry/app"), image)
    return "retry/app", image.layers[0], image.manifest


def through(proxy: FaultProxy, options: HttpOptions = QUICK, **kwargs: object) -> RegistryClient:
    return RegistryClient(RegistryOptions(http=options, docker_config="", **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("fault", ["500", "502", "503", "429", "drop", "truncate"])
def test_transient_faults_are_retried(proxy: FaultProxy, pushed: tuple[str, bytes, bytes], fault: str) -> None:
    repo, layer, manifest = pushed
    ref = ImageReference.parse(f"{proxy.host}/{repo}")
    client = through(proxy)
    digest = sha256_digest(layer)
    proxy.inject(fault, "/manifests/", times=2)
    assert client.get_manifest(ref).data == manifest
    assert proxy.count("GET", "/manifests/") == 3
    proxy.inject(fault, "/blobs/", method="GET", times=2)
    assert client.read_blob_range(ref, digest, 1000, 5000) == layer[1000:6000]
    proxy.inject(fault, "/blobs/", method="GET")
    assert client.read_blob(ref, digest) == layer


def test_a_stalled_answer_times_out_and_is_retried(proxy: FaultProxy, pushed: tuple[str, bytes, bytes]) -> None:
    repo, layer, _ = pushed
    ref = ImageReference.parse(f"{proxy.host}/{repo}")
    proxy.stall_s = 1.5
    proxy.inject("stall", "/blobs/", method="GET")
    impatient = HttpOptions(timeout_s=0.3, connect_timeout_s=1, retry_limit=2, backoff_s=0.01)
    started = time.monotonic()
    assert through(proxy, impatient).read_blob_range(ref, sha256_digest(layer), 0, 100) == layer[:100]
    assert time.monotonic() - started < 1.4
    assert proxy.count("GET", "/blobs/") == 2


def test_truncated_download_is_fetched_again(
    proxy: FaultProxy, pushed: tuple[str, bytes, bytes], tmp_path: Path
) -> None:
    repo, layer, _ = pushed
    ref = ImageReference.parse(f"{proxy.host}/{repo}")
    proxy.inject("truncate", "/blobs/", method="GET", times=2)
    target = tmp_path / "layer"
    assert through(proxy).download_blob(ref, sha256_digest(layer), str(target)) == len(layer)
    assert target.read_bytes() == layer
    assert not (tmp_path / "layer.part").exists()


def test_persistent_failure_gives_up_after_the_retry_limit(proxy: FaultProxy, pushed: tuple[str, bytes, bytes]) -> None:
    repo, layer, _ = pushed
    ref = ImageReference.parse(f"{proxy.host}/{repo}")
    proxy.inject("503", "/blobs/", times=10)
    with pytest.raises(RemoteUnavailable) as caught:
        through(proxy).read_blob_range(ref, sha256_digest(layer), 0, 10)
    assert isinstance(caught.value, backend.TransientError)
    assert "4 attempt(s): HTTP 503" in str(caught.value) and proxy.host in str(caught.value)
    assert proxy.count("GET", "/blobs/") == 4


@pytest.mark.parametrize(
    ("fault", "error"), [("404", RegistryBlobNotFound), ("403", RegistryAuthError), ("400", RegistryError)]
)
def test_client_errors_are_not_retried(
    proxy: FaultProxy, pushed: tuple[str, bytes, bytes], fault: str, error: type[RegistryError]
) -> None:
    repo, layer, _ = pushed
    ref = ImageReference.parse(f"{proxy.host}/{repo}")
    proxy.inject(fault, "/blobs/", times=5)
    with pytest.raises(RegistryError) as caught:
        through(proxy).read_blob_range(ref, sha256_digest(layer), 0, 10)
    assert type(caught.value) is error
    assert caught.value.status == int(fault)
    assert proxy.count("GET", "/blobs/") == 1


def test_redirect_to_blob_storage_is_followed(proxy: FaultProxy, pushed: tuple[str, bytes, bytes]) -> None:
    repo, layer, _ = pushed
    ref = ImageReference.parse(f"{proxy.host}/{repo}")
    proxy.inject("redirect", "/blobs/", method="GET", times=2)
    client = through(proxy)
    assert client.read_blob_range(ref, sha256_digest(layer), 7, 70) == layer[7:77]
    assert client.read_blob(ref, sha256_digest(layer)) == layer
    assert [outcome for _, _, outcome in proxy.seen if outcome == "redirect"] == ["redirect", "redirect"]


@pytest.mark.parametrize(
    ("chunk_size", "fault", "method"),
    [(0, "500", "POST"), (0, "drop", "PUT"), (65536, "500", "POST"), (65536, "503", "PATCH"), (65536, "drop", "PUT")],
)
def test_uploads_restart_after_a_failure(
    proxy: FaultProxy, registry: RunningRegistry, chunk_size: int, fault: str, method: str
) -> None:
    ref = ImageReference.parse(f"{proxy.host}/retry/upload-{chunk_size}-{method.lower()}")
    data = random.Random(11).randbytes(200_000)
    proxy.inject(fault, "/blobs/uploads/", method=method)
    client = through(proxy, upload_chunk_size=chunk_size)
    assert client.push_blob(ref, sha256_digest(data), data)
    assert client.read_blob(ref, sha256_digest(data)) == data
    assert proxy.count("POST", "/blobs/uploads/") == 2


def test_convert_through_faults_gives_the_same_image(
    proxy: FaultProxy, registry: RunningRegistry, tmp_path: Path
) -> None:
    image = sample_image(seed=9)
    direct = RegistryClient(RegistryOptions(docker_config=""))
    push_image(direct, ImageReference.parse(f"{registry.host}/retry/convert"), image)
    options = BuildOptions(chunk_size=0x10000)
    platforms = [Platform("linux", "amd64")]
    clean = nydusify.convert(
        direct, f"{registry.host}/retry/convert", ImageReference.parse(f"{registry.host}/retry/clean:nydus"),
        str(tmp_path / "clean"), options, platforms,
    )  # fmt: skip
    for fault, path, method in (("500", "/blobs/", "GET"), ("truncate", "/blobs/", "GET"), ("drop", "/uploads/", "PUT"),
                                ("502", "/manifests/", "PUT"), ("drop", "/manifests/", "GET")):  # fmt: skip
        proxy.inject(fault, path, method=method)
    faulty = nydusify.convert(
        through(proxy), f"{proxy.host}/retry/convert", ImageReference.parse(f"{proxy.host}/retry/faulty:nydus"),
        str(tmp_path / "faulty"), options, platforms,
    )  # fmt: skip
    assert faulty.digest == clean.digest
    assert proxy.faults == [], "every injected fault was met"


# ---- the http backend (plain URL prefix)


@pytest.fixture
def blob_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Python's static file server over a blob dir: no Range support, so it answers 200 whole."""
    directory = tmp_path / "blobs"
    directory.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", directory
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_http_backend_ranges_and_retries(blob_server: tuple[str, Path], registry: RunningRegistry) -> None:
    host, directory = blob_server
    data = random.Random(5).randbytes(100_000)
    blob_id = sha256_digest(data)[7:]
    (directory / blob_id).write_bytes(data)
    proxy = FaultProxy(host)
    try:
        http_backend = HttpBackend(HttpConfig(f"http://{proxy.host}/", QUICK))
        assert http_backend.read_range(blob_id, 500, 1000) == data[500:1500]
        assert http_backend.blob_size(blob_id) == len(data)
        proxy.inject("500", blob_id)
        proxy.inject("drop", blob_id)
        proxy.inject("truncate", blob_id)
        assert http_backend.read_range(blob_id, 99_000, 1000) == data[99_000:]
        with pytest.raises(backend.RangeNotSatisfied):
            http_backend.read_range(blob_id, 99_500, 1000)
        before = len(proxy.seen)
        with pytest.raises(backend.BlobNotFound):
            http_backend.read_range("f" * 64, 0, 10)
        assert len(proxy.seen) == before + 1
        http_backend.close()
    finally:
        proxy.stop()

    registry_prefix = HttpBackend(HttpConfig(f"http://{registry.host}/v2/none/blobs", QUICK))
    with pytest.raises(backend.BlobNotFound):
        registry_prefix.read_range("../" + "a" * 61, 0, 1)
