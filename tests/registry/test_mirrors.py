"""Registry mirrors before a real origin: failure_limit and recovery, paths kept, auth, a corrupt range.

Each mirror here is a `FaultProxy` (or a second registry), so the test scripts its failures and
counts what reached it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.storage.cache import DiskChunkCache
from daemon.storage.fetch import fetch_chunks
from daemon.storage.options import Mirror
from daemon.storage.registry import RegistryBackend, RegistryClient, RegistryOptions, mirrors
from rafs import layout
from rafs.oci import ImageReference, sha256_digest
from tests.daemon.images import build_image
from tests.daemon.storage.test_fetch import requests_of
from tests.registry.faultproxy import FaultProxy
from tests.registry_fixture import RunningRegistry, start_registry

BLOB = os.urandom(1 << 20)
DIGEST = sha256_digest(BLOB)


@pytest.fixture
def mirrored(registry: RunningRegistry) -> Iterator[tuple[FaultProxy, ImageReference]]:
    """A mirror that has what the origin has (it forwards there), and the origin's reference."""
    ref = ImageReference.parse(f"{registry.host}/demo/mirrored")
    plain = RegistryClient(RegistryOptions(docker_config=""))
    plain.push_blob(ref, DIGEST, BLOB)
    plain.close()
    mirror = FaultProxy(registry.host)
    try:
        yield mirror, ref
    finally:
        mirror.stop()


def mirror_client(mirror: FaultProxy, **keys: object) -> RegistryClient:
    options = RegistryOptions(docker_config="", mirrors=(Mirror(mirror.host, **keys),))  # type: ignore[arg-type]
    return RegistryClient(options)


def test_a_mirror_keeps_the_path_and_serves_ranges(mirrored: tuple[FaultProxy, ImageReference]) -> None:
    mirror, ref = mirrored
    client = mirror_client(mirror)
    try:
        assert client.read_blob_range(ref, DIGEST, 100, 50) == BLOB[100:150]
        assert client.read_blob_range(ref, DIGEST, 5000, 50) == BLOB[5000:5050]
    finally:
        client.close()
    path = f"/v2/demo/mirrored/blobs/{DIGEST}"
    assert [(method, seen) for method, seen, _ in mirror.seen] == [("GET", path)] * 3  # the probe, then the ranges
    assert client.mirrors[0].gate.probes == 1  # the probe found ranges served, once for the blob


@pytest.mark.logs_warnings  # provoked on purpose
def test_failure_limit_skips_a_mirror_until_its_ping_answers(mirrored: tuple[FaultProxy, ImageReference]) -> None:
    mirror, ref = mirrored
    client = mirror_client(mirror, failure_limit=2)
    health = client.health_checks()[0]
    try:
        assert client.read_blob_range(ref, DIGEST, 0, 10) == BLOB[:10]
        assert health.check() is None  # healthy: a mirror is pinged only to bring it back
        mirror.inject("500", "/blobs/")
        mirror.inject("drop", "/blobs/")
        for offset in (10, 20):
            assert client.read_blob_range(ref, DIGEST, offset, 10) == BLOB[offset : offset + 10]  # from the origin
        assert not health.healthy
        asked = len(mirror.seen)
        assert client.read_blob_range(ref, DIGEST, 30, 10) == BLOB[30:40]
        assert len(mirror.seen) == asked, "a disabled mirror is not asked"
        mirror.inject("500", "/v2/")  # the first ping fails: still skipped
        assert health.check() is False and not health.healthy
        assert health.check() is True and health.healthy  # the ping answers: in use again
        assert client.read_blob_range(ref, DIGEST, 40, 10) == BLOB[40:50]
        assert mirror.count("GET", "/blobs/") == 5  # the probe, one served, two failed, none while skipped, this one
    finally:
        client.close()


def test_a_mirror_that_answers_404_is_passed_by(registry: RunningRegistry, tmp_path: Path) -> None:
    empty = start_registry(tmp_path / "empty-mirror")
    try:
        ref = ImageReference.parse(f"{registry.host}/demo/absent")
        plain = RegistryClient(RegistryOptions(docker_config=""))
        plain.push_blob(ref, DIGEST, BLOB)
        plain.close()
        client = RegistryClient(RegistryOptions(docker_config="", mirrors=(Mirror(empty.host),)))
        try:
            assert client.read_blob_range(ref, DIGEST, 7, 7) == BLOB[7:14]
            assert client.mirrors[0].health.healthy  # not having a blob is not a failure
        finally:
            client.close()
    finally:
        empty.stop()


def test_a_mirror_asking_for_a_login_gets_it(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    """The mirror (Basic auth) has the blob, the origin has not: only the mirror can answer."""
    origin = start_registry(tmp_path / "origin")
    try:
        _login_through_mirror(origin, basic_registry)
    finally:
        origin.stop()


def _login_through_mirror(registry: RunningRegistry, basic_registry: RunningRegistry) -> None:
    data = b"only the mirror, behind a login, has this"
    digest = sha256_digest(data)
    login = RegistryOptions(docker_config="", username=basic_registry.username, password=basic_registry.password)
    pusher = RegistryClient(login)
    pusher.push_blob(ImageReference.parse(f"{basic_registry.host}/demo/login"), digest, data)
    pusher.close()
    options = RegistryOptions(
        docker_config="",
        username=basic_registry.username,
        password=basic_registry.password,
        mirrors=(Mirror(basic_registry.host),),
    )
    client = RegistryClient(options)
    try:
        ref = ImageReference.parse(f"{registry.host}/demo/login")
        assert client.read_blob_range(ref, digest, 5, 10) == data[5:15]
        assert client.read_blob(ref, digest) == data
    finally:
        client.close()


@pytest.mark.logs_warnings  # provoked on purpose
def test_a_corrupt_range_from_a_mirror_is_caught_and_fetched_from_the_origin(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    data = random.Random(3).randbytes(6 * 4096)
    (source / "file").write_bytes(data)
    built = build_image(str(source), str(tmp_path), chunk_size=4096, compressor=layout.COMPRESSOR_NONE)
    requests = requests_of(built.bootstrap)
    blob_id = requests[0].blob.blob_id
    blob = (Path(built.blob_dir) / blob_id).read_bytes()
    ref = ImageReference.parse(f"{registry.host}/demo/corrupt")
    plain = RegistryClient(RegistryOptions(docker_config=""))
    plain.push_blob(ref, f"sha256:{blob_id}", blob)
    plain.close()
    mirror = FaultProxy(registry.host)
    try:
        mirror.inject("flip", "/blobs/", method="GET", times=10)  # every range it sends is damaged
        backend = RegistryBackend(mirror_client(mirror), ref)
        cache = DiskChunkCache(str(tmp_path / "cache"))
        try:
            results = fetch_chunks(backend, cache, requests, digester=layout.DIGESTER_BLAKE3, merging_size=1 << 20)
        finally:
            backend.close()
            cache.close()
        assert b"".join(results[request.key] for request in requests) == data  # type: ignore[misc]
        assert mirror.count("GET", "/blobs/") == 2, "the probe and the damaged range: the retry skipped the mirror"
    finally:
        mirror.stop()


def test_probes_of_a_cold_blob_back_off_within_their_jitter() -> None:
    """Each probe of a blob that stays cold waits longer than the last, up to the cap; a blob
    found ready or absent starts again from the base interval."""
    gate = mirrors.RangeGate(probe_interval_s=0.5, cold_wait_s=60.0)
    low, high = 1 - mirrors.PROBE_JITTER, 1 + mirrors.PROBE_JITTER
    for cold_probes in range(20):
        nominal = min(0.5 * mirrors.PROBE_BACKOFF ** max(cold_probes - 1, 0), mirrors.MAX_PROBE_INTERVAL_S)
        for _ in range(20):
            assert nominal * low <= gate.wait_after(cold_probes) <= nominal * high
    assert gate.wait_after(50) <= mirrors.MAX_PROBE_INTERVAL_S * high

    answers = iter([mirrors.Probe.COLD, mirrors.Probe.COLD, mirrors.Probe.RANGES])
    gate.probe_interval_s = 0.01
    assert gate.ready("sha256:x", lambda: next(answers)) is mirrors.Probe.RANGES
    assert gate.probes == 3
    assert gate.ready("sha256:x", lambda: pytest.fail("a ready blob is not probed again")) is mirrors.Probe.RANGES
