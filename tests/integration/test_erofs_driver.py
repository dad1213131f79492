"""`fs_driver: erofs`: the kernel's EROFS serves the tree, nydusd its data device over FUSE."""

from __future__ import annotations

import errno
import os
import random
import signal
from pathlib import Path

import pytest

from daemon.mountpoint import mounts_at
from rafs.erofs import TAG_OFFSET, TAG_SIZE
from tests.daemon.images import Image, build_image, synthetic_tree
from tests.daemon.nydusd import Daemon, force_unmount, mounted, requires_fuse, start_nydusd, write_config
from tests.reference import diff, snapshot_directory

pytestmark = [pytest.mark.fuse, requires_fuse]
CHUNK = 0x10000


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    base = tmp_path_factory.mktemp("erofs-image")
    return build_image(synthetic_tree(str(base / "src")), str(base / "image"), chunk_size=CHUNK)


def erofs_config(path: Path, image: Image, work_dir: Path) -> str:
    return write_config(str(path), image.blob_dir, str(work_dir), fs_driver="erofs")


def device_mounts(work_dir: Path) -> list[str]:
    """The FUSE mounts of data devices under `work_dir`."""
    found = []
    for name in os.listdir(work_dir) if work_dir.exists() else []:
        path = str(work_dir / name)
        if name.startswith("erofs-device-") and any(entry.fstype.startswith("fuse") for entry in mounts_at(path)):
            found.append(path)
    return found


def test_the_kernel_serves_the_image_tree(image: Image, tmp_path: Path) -> None:
    work = tmp_path / "cache"
    config = erofs_config(tmp_path / "c.json", image, work)
    mountpoint = tmp_path / "mnt"
    with mounted(image.bootstrap, str(mountpoint), config, str(tmp_path / "log"), fstype="erofs") as daemon:
        assert [entry.fstype for entry in mounts_at(str(mountpoint))] == ["erofs"]
        assert len(device_mounts(work)) == 1
        actual = snapshot_directory(str(mountpoint))
        assert "wrote EROFS metadata" in daemon.log()
    assert diff(snapshot_directory(image.source), actual, ignore_root=True) == []
    assert not mounts_at(str(mountpoint)), "the EROFS mount stayed"
    assert device_mounts(work) == [] and not [name for name in os.listdir(work) if name.startswith("erofs-device-")]


def test_the_metadata_is_written_once_per_image(image: Image, tmp_path: Path) -> None:
    work = tmp_path / "cache"
    config = erofs_config(tmp_path / "c.json", image, work)
    with mounted(image.bootstrap, str(tmp_path / "mnt"), config, str(tmp_path / "log1"), fstype="erofs"):
        pass
    (written,) = [name for name in os.listdir(work) if name.endswith(".erofs")]
    first = os.stat(work / written)
    with mounted(image.bootstrap, str(tmp_path / "mnt"), config, str(tmp_path / "log2"), fstype="erofs") as daemon:
        assert (tmp_path / "mnt" / "etc" / "passwd").read_bytes().startswith(b"root:")
        assert "wrote EROFS metadata" not in daemon.log()
    assert os.stat(work / written).st_mtime_ns == first.st_mtime_ns and os.listdir(work).count(written) == 1
    # metadata whose layout tag is not this bootstrap's (another writer version) is written again
    with open(work / written, "r+b") as file:
        file.seek(TAG_OFFSET)
        file.write(bytes(TAG_SIZE))
    with mounted(image.bootstrap, str(tmp_path / "mnt"), config, str(tmp_path / "log3"), fstype="erofs") as daemon:
        assert (tmp_path / "mnt" / "etc" / "passwd").read_bytes().startswith(b"root:")
        assert "wrote EROFS metadata" in daemon.log()


def test_a_damaged_chunk_is_an_error_never_wrong_bytes(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    data = random.Random(3).randbytes(3 * CHUNK)
    (source / "file").write_bytes(data)
    image = build_image(str(source), str(tmp_path / "image"), chunk_size=CHUNK)
    (blob,) = os.listdir(image.blob_dir)
    blob_path = Path(image.blob_dir) / blob
    stored = bytearray(blob_path.read_bytes())
    stored[len(stored) // 2] ^= 0xFF
    blob_path.write_bytes(bytes(stored))
    config = erofs_config(tmp_path / "c.json", image, tmp_path / "cache")
    with mounted(image.bootstrap, str(tmp_path / "mnt"), config, str(tmp_path / "log"), fstype="erofs") as daemon:
        with pytest.raises(OSError) as raised:
            (tmp_path / "mnt" / "file").read_bytes()
        assert raised.value.errno == errno.EIO
        assert "device read" in daemon.log()


def test_a_restart_after_kill_clears_both_mounts(image: Image, tmp_path: Path) -> None:
    work = tmp_path / "cache"
    config = erofs_config(tmp_path / "c.json", image, work)
    mountpoint = str(tmp_path / "mnt")
    killed: Daemon = start_nydusd(image.bootstrap, mountpoint, config, str(tmp_path / "log1"), fstype="erofs")
    try:
        killed.stop(signal.SIGKILL)
        with pytest.raises(OSError):
            Path(mountpoint, "etc", "passwd").read_bytes()  # a dead device behind the kernel's mount
        with mounted(image.bootstrap, mountpoint, config, str(tmp_path / "log2"), fstype="erofs") as daemon:
            assert Path(mountpoint, "etc", "passwd").read_bytes().startswith(b"root:")
            assert [entry.fstype for entry in mounts_at(mountpoint)] == ["erofs"]
            assert "left by a previous daemon" in daemon.log()
        assert device_mounts(work) == []
    finally:
        force_unmount(mountpoint)
        for path in device_mounts(work):
            force_unmount(path)


def test_the_trace_names_the_files_read(image: Image, tmp_path: Path) -> None:
    config = erofs_config(tmp_path / "c.json", image, tmp_path / "cache")
    trace = tmp_path / "trace.txt"
    log = str(tmp_path / "log")
    extra = ["--trace-out", str(trace)]
    with mounted(image.bootstrap, str(tmp_path / "mnt"), config, log, extra=extra, fstype="erofs") as daemon:
        assert (Path(daemon.mountpoint) / "etc" / "passwd").read_bytes().startswith(b"root:")
    assert f"/etc/passwd\t0-{CHUNK}\n" in trace.read_text()


def test_an_unknown_fs_driver_is_refused_in_one_line(image: Image, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    config = write_config(str(tmp_path / "c.json"), image.blob_dir, fs_driver="fscache")
    (tmp_path / "mnt").mkdir()
    result = cli("nydusd", ["--bootstrap", image.bootstrap, "--mountpoint", str(tmp_path / "mnt"), "--config", config])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "fs_driver" in result.stderr
