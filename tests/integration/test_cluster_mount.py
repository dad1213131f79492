"""`nydusd --image` through Dragonfly's proxy (the stand-in) and through a pull-through mirror.

Real daemons, real registry: the proxy killed in the middle of a start (fallback on: every byte
right, from the origin; off: EIO), its ping failing and recovering as checked by the mount's
own health task (and no ping after unmount), a start through a cold pull-through mirror, and a
mount that sets a cold mirror caching every blob of the image before anything is read.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.dragonfly_standin import DragonflyStandIn
from daemon.storage.registry import RegistryClient, RegistryOptions
from rafs.oci import ImageReference, parse_converted_manifest
from tests.daemon.images import debian_root
from tests.daemon.nydusd import requires_fuse
from tests.integration.registry_mount import convert, fix_mtimes, image_mounted, push_directory, write_image_config
from tests.reference import diff, snapshot_directory
from tests.registry_fixture import RunningRegistry, start_registry

pytestmark = [pytest.mark.fuse, requires_fuse]

FILES = 4
FILE_BYTES = 2 << 20
NO_PREFETCH = {"enable": False}  # each read meets the backend when the test reads


@dataclass(frozen=True)
class Pushed:
    registry: RunningRegistry
    source_dir: str
    ref: str


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    base = tmp_path_factory.mktemp("cluster-image")
    running = start_registry(base / "registry")
    try:
        source = debian_root(str(base / "src"))
        rng = random.Random(13)
        os.makedirs(os.path.join(source, "data"))
        for number in range(FILES):
            Path(source, "data", f"f{number}").write_bytes(rng.randbytes(FILE_BYTES))
        fix_mtimes(source)
        target = convert(push_directory(running.host, "library/cluster", source), str(base / "convert"))
        yield Pushed(running, source, str(target))
    finally:
        running.stop()


@pytest.fixture
def standin() -> Iterator[DragonflyStandIn]:
    proxy = DragonflyStandIn(piece_bytes=1 << 20)
    try:
        yield proxy
    finally:
        proxy.stop()


def read_or_errno(path: str) -> bytes | int:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        return error.errno or -1


def proxy_config(tmp_path: Path, standin: DragonflyStandIn, **proxy: object) -> str:
    backend = {"proxy": {"url": standin.url, "ping_url": standin.ping_url, "check_interval": 0.05, **proxy}}
    return write_image_config(
        str(tmp_path / "c.json"), str(tmp_path / "cache"), backend=backend, fs_prefetch=NO_PREFETCH
    )


def wait_for(condition: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("fallback", [True, False])
def test_a_proxy_killed_mid_start(pushed: Pushed, standin: DragonflyStandIn, tmp_path: Path, fallback: bool) -> None:
    config = proxy_config(tmp_path, standin, fallback=fallback)
    with image_mounted(pushed.ref, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
        first = read_or_errno(os.path.join(daemon.mountpoint, "data/f0"))
        assert first == Path(pushed.source_dir, "data/f0").read_bytes()
        seen = standin.headers_seen()
        assert seen and all(h["X-Dragonfly-Priority"] == "6" for h in seen), seen
        standin.die()
        if fallback:
            actual = snapshot_directory(daemon.mountpoint)
            assert diff(snapshot_directory(pushed.source_dir), actual, ignore_root=True) == []
        else:
            assert read_or_errno(os.path.join(daemon.mountpoint, "data/f1")) == errno.EIO
            assert "fallback is off" in daemon.log()


def test_the_mounts_health_task_routes_around_a_failing_ping(
    pushed: Pushed, standin: DragonflyStandIn, tmp_path: Path
) -> None:
    config = proxy_config(tmp_path, standin)
    with image_mounted(pushed.ref, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
        wait_for(lambda: standin.stats.pings >= 1)  # the mount pings from the start
        standin.fail_pings = True
        failed_at = standin.stats.pings
        wait_for(lambda: standin.stats.pings >= failed_at + 2)  # a failed ping has been seen since
        asked = standin.stats.requests
        assert (
            read_or_errno(os.path.join(daemon.mountpoint, "data/f1")) == Path(pushed.source_dir, "data/f1").read_bytes()
        )
        assert standin.stats.requests == asked, "an unhealthy proxy is not used"
        standin.fail_pings = False
        healed_at = standin.stats.pings
        wait_for(lambda: standin.stats.pings >= healed_at + 2)
        assert (
            read_or_errno(os.path.join(daemon.mountpoint, "data/f2")) == Path(pushed.source_dir, "data/f2").read_bytes()
        )
        assert standin.stats.requests > asked, "healthy again: used again"
        assert "does not answer its ping" in daemon.log() and "answers its ping again" in daemon.log()
    stopped_at = standin.stats.pings
    time.sleep(0.5)  # ten intervals: a ping task that outlived its mount would have pinged
    assert standin.stats.pings == stopped_at


def test_a_start_through_a_cold_pull_through_mirror(pushed: Pushed, tmp_path: Path) -> None:
    mirror = start_registry(tmp_path / "mirror", remote_url=pushed.registry.url)
    try:
        backend = {"mirrors": [{"host": f"http://{mirror.host}"}]}
        config = write_image_config(str(tmp_path / "c.json"), str(tmp_path / "cache"), backend=backend)
        with image_mounted(pushed.ref, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
            actual = snapshot_directory(daemon.mountpoint)
            log = daemon.log()
        assert diff(snapshot_directory(pushed.source_dir), actual, ignore_root=True) == []
        assert "mirror has not cached blob" in log, log
    finally:
        mirror.stop()


def test_a_mount_sets_a_cold_mirror_caching_every_blob_before_any_read(pushed: Pushed, tmp_path: Path) -> None:
    """So that the mirror caches an image's blobs side by side from the start, not one after
    another as the reads reach them. Nothing is read from the mount here."""
    ref = ImageReference.parse(pushed.ref)
    client = RegistryClient(RegistryOptions(docker_config=""))
    try:
        blobs = parse_converted_manifest(client.get_image_manifest(ref).document, pushed.ref).blob_digests
    finally:
        client.close()
    mirror = start_registry(tmp_path / "mirror", remote_url=pushed.registry.url)

    def cached(digest: str) -> bool:
        algorithm, hex_digest = digest.split(":")
        data = mirror.root / "storage/docker/registry/v2/blobs" / algorithm / hex_digest[:2] / hex_digest / "data"
        return data.exists()

    try:
        backend = {"mirrors": [{"host": f"http://{mirror.host}"}]}
        config = write_image_config(str(tmp_path / "c.json"), str(tmp_path / "cache"), backend=backend)
        with image_mounted(pushed.ref, str(tmp_path / "mnt"), config, str(tmp_path / "log")):
            assert blobs
            wait_for(lambda: all(cached(digest) for digest in blobs))  # nothing read them: the mount asked
    finally:
        mirror.stop()
