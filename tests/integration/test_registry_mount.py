"""`nydusd --image` against a real registry: a pushed OCI image, converted with `nydusify`, mounted
lazily over FUSE, compared with its source tree, run as a container, and read without fetching
more than the chunks read (counted by a proxy between the daemon and the registry)."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.blob_order import BlobOrder
from rafs.bootstrap import Bootstrap
from rafs.mapped import open_bootstrap
from rafs.oci import ImageReference
from tests.daemon.images import debian_root
from tests.daemon.nydusd import REPO, answers, cached_chunks, force_unmount, is_mounted, requires_fuse
from tests.integration.registry_mount import (
    convert,
    fix_mtimes,
    image_mounted,
    push_directory,
    start_image_daemon,
    write_image_config,
)
from tests.reference import diff, snapshot_directory
from tests.registry.faultproxy import FaultProxy
from tests.registry_fixture import RunningRegistry, start_registry

pytestmark = [pytest.mark.fuse, requires_fuse]

BIG_FILES = 4
BIG_FILE_BYTES = 3 << 20
NO_READAHEAD = {"whole_file_max": 0, "window_max": 0}  # each read meets the backend on its own


@dataclass(frozen=True)
class PushedImage:
    registry: RunningRegistry
    source_dir: str
    ref: str  # the converted image

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PushedImage]:
    """A busybox root plus 12 MiB of incompressible files, pushed and converted (one per module)."""
    base = tmp_path_factory.mktemp("registry-image")
    running = start_registry(base / "registry")
    try:
        source = debian_root(str(base / "src"))
        rng = random.Random(4)
        os.makedirs(os.path.join(source, "data"))
        for number in range(BIG_FILES):
            with open(os.path.join(source, "data", f"big{number}"), "wb") as file:
                file.write(rng.randbytes(BIG_FILE_BYTES))
        fix_mtimes(source)
        target = convert(push_directory(running.host, "library/busybox", source), str(base / "convert"))
        yield PushedImage(running, source, str(target))
    finally:
        running.stop()


def test_image_mount_matches_source(pushed: PushedImage, tmp_path: Path) -> None:
    config = write_image_config(str(tmp_path / "c.json"), str(tmp_path / "cache"))
    expected = snapshot_directory(pushed.source_dir)
    with image_mounted(pushed.ref, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
        actual = snapshot_directory(daemon.mountpoint)
    assert diff(expected, actual, ignore_root=True) == []
    assert len(actual) == len(expected) > 100
    # A second start reuses the bootstrap kept in the work dir (by the layer's digest), checked
    # against the record of what was extracted, without reading the layer again.
    with image_mounted(pushed.ref, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
        reread = Path(daemon.mountpoint, "etc/os-release").read_bytes()
    assert reread == Path(pushed.source_dir, "etc/os-release").read_bytes()
    assert "as recorded when extracted" in daemon.log()


def test_the_erofs_driver_uses_the_metadata_shipped_in_the_bootstrap_layer(pushed: PushedImage, tmp_path: Path) -> None:
    """`nydusify convert` puts the EROFS metadata in the bootstrap layer: nydusd writes none, and a
    kept copy damaged on disk is replaced from the layer (checked against its digest) at the next start."""
    source = ImageReference.parse(pushed.ref.rsplit(":", 1)[0] + ":src")
    ref = str(convert(source, str(tmp_path / "convert"), "--erofs", tag="nydus-erofs"))
    config = write_image_config(str(tmp_path / "c.json"), str(tmp_path / "cache"), fs_driver="erofs")
    expected = snapshot_directory(pushed.source_dir)
    mountpoint = str(tmp_path / "mnt")
    with image_mounted(ref, mountpoint, config, str(tmp_path / "log1"), fstype="erofs") as daemon:
        actual = snapshot_directory(daemon.mountpoint)
        log = daemon.log()
    assert diff(expected, actual, ignore_root=True) == []
    assert "EROFS metadata from the image's bootstrap layer" in log and "wrote EROFS metadata" not in log
    (shipped,) = (tmp_path / "cache" / "bootstraps").glob("*.erofs")
    original = shipped.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    shipped.write_bytes(bytes(damaged))
    with image_mounted(ref, mountpoint, config, str(tmp_path / "log2"), fstype="erofs") as daemon:
        assert diff(expected, snapshot_directory(daemon.mountpoint), ignore_root=True) == []
    assert shipped.read_bytes() == original
    # without --erofs (the default) the layer carries none, and nydusd writes it at mount
    with image_mounted(pushed.ref, mountpoint, config, str(tmp_path / "log3"), fstype="erofs") as daemon:
        assert diff(expected, snapshot_directory(daemon.mountpoint), ignore_root=True) == []
        assert "wrote EROFS metadata" in daemon.log()


@pytest.mark.parametrize("damaged", ["bootstrap", "record", "layer and bootstrap", "layer"])
def test_a_damaged_kept_bootstrap_is_checked_and_replaced(pushed: PushedImage, tmp_path: Path, damaged: str) -> None:
    """The kept bootstrap is checked on every start, never trusted as is: against the record of
    what was extracted from the layer, and where it differs, against the layer (itself checked
    against the manifest's digest, and fetched again if it fails)."""
    config = write_image_config(str(tmp_path / "c.json"), str(tmp_path / "cache"))
    with image_mounted(pushed.ref, str(tmp_path / "mnt"), config, str(tmp_path / "log")):
        pass
    kept = tmp_path / "cache" / "bootstraps"
    (layer,) = kept.glob("*.tar.gz")
    (bootstrap,) = kept.glob("*.boot")
    (record,) = kept.glob("*.kept")
    original_layer, original_bootstrap = layer.read_bytes(), bootstrap.read_bytes()
    victims = {
        "bootstrap": [bootstrap],
        "record": [record],
        "layer": [layer],
        "layer and bootstrap": [layer, bootstrap],
    }
    for victim in victims[damaged]:
        content = bytearray(victim.read_bytes())
        content[len(content) // 2] ^= 0x20
        victim.write_bytes(bytes(content))
    log_path = tmp_path / "log2"
    with image_mounted(pushed.ref, str(tmp_path / "mnt"), config, str(log_path)) as daemon:
        reread = Path(daemon.mountpoint, "etc/os-release").read_bytes()
        expected = snapshot_directory(pushed.source_dir)
        assert diff(expected, snapshot_directory(daemon.mountpoint), ignore_root=True) == []
    assert reread == Path(pushed.source_dir, "etc/os-release").read_bytes()
    log = log_path.read_text()
    if damaged == "layer":  # the extracted copy still is what was recorded: the layer is not read
        assert "as recorded when extracted" in log, log
    elif damaged == "layer and bootstrap":
        assert "kept bootstrap layer fails" in log and "fetching it again" in log, log
        assert layer.read_bytes() == original_layer
    else:  # the layer held: the bootstrap was extracted from it again, and recorded
        assert "verified against its digest" in log, log
        assert layer.read_bytes() == original_layer
    assert bootstrap.read_bytes() == original_bootstrap
    assert "Traceback" not in log
    with image_mounted(pushed.ref, str(tmp_path / "mnt"), config, str(tmp_path / "log3")) as daemon:
        assert Path(daemon.mountpoint, "etc/os-release").read_bytes() == reread
    assert "as recorded when extracted" in (tmp_path / "log3").read_text()


def test_missing_image_is_one_line_and_no_mount(pushed: PushedImage, tmp_path: Path) -> None:
    config = write_image_config(str(tmp_path / "c.json"), str(tmp_path / "cache"))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "--image", f"{pushed.host}/library/absent:1", "--mountpoint",
         str(mountpoint), "--config", config],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert completed.returncode != 0
    assert completed.stderr.strip().splitlines()[-1].startswith("nydusd: ")
    assert not is_mounted(str(mountpoint))


def test_small_read_fetches_only_its_chunks(pushed: PushedImage, tmp_path: Path) -> None:
    proxy = FaultProxy(pushed.host)
    try:
        config = write_image_config(
            str(tmp_path / "c.json"), str(tmp_path / "cache"), amplify_io=0, readahead=NO_READAHEAD
        )
        image = pushed.ref.replace(pushed.host, proxy.host)
        with image_mounted(image, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
            bootstrap_path = next((tmp_path / "cache" / "bootstraps").glob("*.boot"))
            bootstrap = open_bootstrap(bootstrap_path)
            blob_ids = [blob.blob_id for blob in bootstrap.blobs]
            assert sum(proxy.bytes_sent(blob_id) for blob_id in blob_ids) == 0, "mounting fetched blob data"
            with open(os.path.join(daemon.mountpoint, "etc/os-release"), "rb") as file:
                assert file.read() == Path(pushed.source_dir, "etc/os-release").read_bytes()
            fetched = sum(proxy.bytes_sent(blob_id) for blob_id in blob_ids)
        ino = bootstrap.resolve("/etc/os-release")
        assert ino is not None
        wanted = sum(chunk.compressed_size for chunk in bootstrap.chunks(ino))
        image_bytes = sum(blob.compressed_size for blob in bootstrap.blobs)
        print(f"small read on a cold mount: {fetched} blob bytes fetched of {image_bytes} ({wanted} wanted)")
        assert fetched == wanted
        assert image_bytes > BIG_FILES * BIG_FILE_BYTES
    finally:
        proxy.stop()


def file_stored_after(bootstrap: Bootstrap, path: str) -> str:
    """The file whose first chunk is stored right after the last chunk of `path`, in one blob."""
    ino = bootstrap.resolve(path)
    assert ino is not None
    last = bootstrap.chunks(ino)[-1]
    following = next(BlobOrder.build(bootstrap, last.blob_index).after(last.compressed_offset))
    for name, other in bootstrap.walk():
        inode = bootstrap.inode(other)
        if inode.is_reg and inode.data_count and inode.data_start == following:
            return name.decode()
    raise AssertionError(f"no file starts at chunk {following}")


@pytest.mark.parametrize(("amplify_io", "requests_for_second"), [(1 << 20, 0), (0, 1)])
def test_next_small_file_in_the_blob_comes_with_the_first(
    pushed: PushedImage, tmp_path: Path, amplify_io: int, requests_for_second: int
) -> None:
    """Blob-order readahead: file B, stored right after file A, is fetched with A, before B is read."""
    proxy = FaultProxy(pushed.host)
    try:
        config = write_image_config(str(tmp_path / "c.json"), str(tmp_path / "cache"), amplify_io=amplify_io)
        image = pushed.ref.replace(pushed.host, proxy.host)
        with image_mounted(image, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
            bootstrap = open_bootstrap(next((tmp_path / "cache" / "bootstraps").glob("*.boot")))
            first = "/etc/os-release"
            second = file_stored_after(bootstrap, first)
            (blob_id,) = {
                bootstrap.blobs[chunk.blob_index].blob_id for chunk in bootstrap.chunks(bootstrap.resolve(first) or 0)
            }
            with open(os.path.join(daemon.mountpoint, first.lstrip("/")), "rb") as file:
                assert file.read() == Path(pushed.source_dir, first.lstrip("/")).read_bytes()
            if amplify_io:  # what follows the first file comes behind its read: wait for it to land
                deadline = time.monotonic() + 30
                while cached_chunks(str(tmp_path / "cache")) < 2:
                    assert time.monotonic() < deadline, "the blob-order neighbours never arrived"
                    time.sleep(0.02)
            before = proxy.count("GET", blob_id)
            with open(os.path.join(daemon.mountpoint, second.lstrip("/")), "rb") as file:
                assert file.read() == Path(pushed.source_dir, second.lstrip("/")).read_bytes()
            assert proxy.count("GET", blob_id) - before == requests_for_second, (second, proxy.seen)
    finally:
        proxy.stop()


@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_container_runs_on_image(pushed: PushedImage, tmp_path: Path) -> None:
    config = write_image_config(str(tmp_path / "c.json"), str(tmp_path / "cache"))
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "run_container.py"), "--image", pushed.ref, "--config", config,
         "--workdir", str(tmp_path / "work"), "--", "/bin/sh", "-c", "cat /etc/os-release; wc -c /data/big0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr + Path(tmp_path / "work" / "nydusd.log").read_text()
    assert "ID=debian" in completed.stdout.splitlines()
    assert f"{BIG_FILE_BYTES} /data/big0" in completed.stdout
    assert not is_mounted(str(tmp_path / "work" / "lower"))


def test_prefetch_all_fetches_every_blob_in_merged_ranges(pushed: PushedImage, tmp_path: Path) -> None:
    proxy = FaultProxy(pushed.host)
    try:
        config = write_image_config(
            str(tmp_path / "c.json"),
            str(tmp_path / "cache"),
            fs_prefetch={"enable": True, "prefetch_all": True, "merging_size": 1 << 20},
        )
        image = pushed.ref.replace(pushed.host, proxy.host)
        with image_mounted(image, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
            daemon.wait_for_log("prefetch done")
            bootstrap = open_bootstrap(next((tmp_path / "cache" / "bootstraps").glob("*.boot")))
            blob_ids = [blob.blob_id for blob in bootstrap.blobs]
            prefetched = sum(proxy.bytes_sent(blob_id) for blob_id in blob_ids)
            requests = sum(proxy.count("GET", blob_id) for blob_id in blob_ids)
            assert (
                diff(snapshot_directory(pushed.source_dir), snapshot_directory(daemon.mountpoint), ignore_root=True)
                == []
            )
            after = sum(proxy.bytes_sent(blob_id) for blob_id in blob_ids)
        image_bytes = sum(blob.compressed_size for blob in bootstrap.blobs)
        assert prefetched == after == image_bytes, "prefetch fetched everything once; reads fetched nothing"
        assert requests <= image_bytes // (1 << 20) + 2 * len(blob_ids) + 4
    finally:
        proxy.stop()


def test_prefetch_files_fetch_only_those_files(pushed: PushedImage, tmp_path: Path) -> None:
    proxy = FaultProxy(pushed.host)
    try:
        config = write_image_config(str(tmp_path / "c.json"), str(tmp_path / "cache"))
        listing = tmp_path / "prefetch.txt"
        listing.write_bytes(b"/data/big2\n/etc/os-release\n")
        image = pushed.ref.replace(pushed.host, proxy.host)
        extra = ["--prefetch-files", str(listing)]
        with image_mounted(image, str(tmp_path / "mnt"), config, str(tmp_path / "log"), extra=extra) as daemon:
            daemon.wait_for_log("prefetch done")
            bootstrap = open_bootstrap(next((tmp_path / "cache" / "bootstraps").glob("*.boot")))
            fetched = sum(proxy.bytes_sent(blob.blob_id) for blob in bootstrap.blobs)
            assert (
                Path(daemon.mountpoint, "data/big2").read_bytes() == Path(pushed.source_dir, "data/big2").read_bytes()
            )
            assert sum(proxy.bytes_sent(blob.blob_id) for blob in bootstrap.blobs) == fetched
        wanted = 0
        for path in ("/data/big2", "/etc/os-release"):
            ino = bootstrap.resolve(path)
            assert ino is not None
            wanted += sum(chunk.compressed_size for chunk in bootstrap.chunks(ino))
        assert fetched == wanted
    finally:
        proxy.stop()


def read_or_errno(path: str) -> bytes | int:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        return error.errno or -1


FAULT_FILES = {"drop": "data/big0", "500": "data/big1", "truncate": "data/big2", "flip": "data/big3"}


def test_transient_faults_are_retried_and_never_served(pushed: PushedImage, tmp_path: Path) -> None:
    proxy = FaultProxy(pushed.host)
    proxy.stall_s = 1.5
    try:
        backend = {"timeout": 0.5, "retry_limit": 3}
        # no readahead, so each file's read meets its own fault
        config = write_image_config(
            str(tmp_path / "c.json"), str(tmp_path / "cache"), backend=backend, amplify_io=0, readahead=NO_READAHEAD
        )
        image = pushed.ref.replace(pushed.host, proxy.host)
        with image_mounted(image, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
            for kind, path in [*FAULT_FILES.items(), ("stall", "etc/os-release")]:
                proxy.inject(kind, "/blobs/sha256:", method="GET")
                data = read_or_errno(os.path.join(daemon.mountpoint, path))
                assert data == Path(pushed.source_dir, path).read_bytes(), f"{kind}: wrong bytes"
                assert not proxy.faults, f"{kind}: the fault was not met"
            log = daemon.log()
        assert log.count("retrying in") >= 4
        assert "fetching again after a failed verification" in log
        assert [outcome for _, _, outcome in proxy.seen if outcome != "forwarded"] == [*FAULT_FILES, "stall"]
    finally:
        proxy.stop()


@pytest.mark.parametrize("kind", ["500", "flip"])
def test_persistent_fault_is_eio_with_a_log_line_then_heals(pushed: PushedImage, tmp_path: Path, kind: str) -> None:
    proxy = FaultProxy(pushed.host)
    try:
        backend = {"retry_limit": 1}
        # no readahead: a flipped byte in the middle of a response must land in the file read
        config = write_image_config(
            str(tmp_path / "c.json"), str(tmp_path / "cache"), backend=backend, amplify_io=0, readahead=NO_READAHEAD
        )
        image = pushed.ref.replace(pushed.host, proxy.host)
        with image_mounted(image, str(tmp_path / "mnt"), config, str(tmp_path / "log")) as daemon:
            proxy.inject(kind, "/blobs/sha256:", method="GET", times=1000)
            target = os.path.join(daemon.mountpoint, "data/big1")
            assert read_or_errno(target) == errno.EIO
            proxy.faults.clear()
            assert read_or_errno(target) == Path(pushed.source_dir, "data/big1").read_bytes()
            log = daemon.log()
        expected = "ChunkDigestMismatch" if kind == "flip" else "HTTP 500"
        assert re.search(rf"ERROR .*read failed on /data/big1 \(inode \d+\): .*{expected}", log), log
    finally:
        proxy.stop()


def test_kill_9_mid_prefetch_then_restart_serves_the_same_tree(pushed: PushedImage, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    config = write_image_config(
        str(tmp_path / "c.json"),
        str(cache),
        fs_prefetch={"enable": True, "prefetch_all": True, "merging_size": 256 * 1024, "bandwidth_rate": 2 << 20},
    )
    mountpoint, log = str(tmp_path / "mnt"), str(tmp_path / "log")
    daemon = start_image_daemon(pushed.ref, mountpoint, config, log)
    try:
        deadline = time.monotonic() + 30
        while cached_chunks(str(cache)) < 4:
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.02)
        daemon.stop(signal.SIGKILL)
        cached = cached_chunks(str(cache))
        bootstrap = open_bootstrap(next((cache / "bootstraps").glob("*.boot")))
        assert 0 < cached < bootstrap.superblock.chunk_count, "killed mid-prefetch"
        assert not answers(mountpoint)
        with image_mounted(pushed.ref, mountpoint, config, log) as restarted:
            actual = snapshot_directory(restarted.mountpoint)
    finally:
        daemon.stop(signal.SIGKILL)
        force_unmount(mountpoint)
    assert diff(snapshot_directory(pushed.source_dir), actual, ignore_root=True) == []
