"""A real FUSE mount of real images, compared path by path with `unpack` of the same bootstrap."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from rafs import layout
from tests.daemon.images import Image, build_image, debian_root, synthetic_tree, unpack
from tests.daemon.nydusd import (
    NYDUSD,
    REPO,
    answers,
    force_unmount,
    is_mounted,
    mounted,
    requires_fuse,
    start_nydusd,
    write_config,
)
from tests.reference import diff, snapshot_directory

pytestmark = [pytest.mark.fuse, requires_fuse]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Image:
    base = tmp_path_factory.mktemp("synthetic")
    return build_image(synthetic_tree(str(base / "src")), str(base), chunk_size=0x10000)


def compare_mount_with_unpack(image: Image, work: str, config: str) -> None:
    expected = snapshot_directory(unpack(image, os.path.join(work, "unpacked")))
    with mounted(image.bootstrap, os.path.join(work, "mnt"), config, os.path.join(work, "nydusd.log")) as daemon:
        actual = snapshot_directory(daemon.mountpoint)
    assert diff(expected, actual) == []
    assert len(actual) == len(expected) > 1


@pytest.mark.parametrize("cached", [False, True], ids=["memory-cache", "blobcache"])
def test_synthetic_tree_matches_unpack(synthetic: Image, tmp_path: os.PathLike[str], cached: bool) -> None:
    work = str(tmp_path)
    config = write_config(
        os.path.join(work, "c.json"), synthetic.blob_dir, os.path.join(work, "cache") if cached else None
    )
    compare_mount_with_unpack(synthetic, work, config)


@pytest.mark.parametrize("compressor", [layout.COMPRESSOR_NONE, layout.COMPRESSOR_LZ4_BLOCK], ids=["none", "lz4_block"])
def test_other_compressors(tmp_path: os.PathLike[str], compressor: int) -> None:
    work = str(tmp_path)
    image = build_image(synthetic_tree(os.path.join(work, "src"), files=12), work, compressor=compressor)
    compare_mount_with_unpack(image, work, write_config(os.path.join(work, "c.json"), image.blob_dir))


@pytest.mark.slow
def test_debian_root_matches_unpack(tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    image = build_image(debian_root(os.path.join(work, "src"), ("busybox-static", "tzdata")), work)
    compare_mount_with_unpack(
        image, work, write_config(os.path.join(work, "c.json"), image.blob_dir, os.path.join(work, "cache"))
    )


@pytest.fixture
def mount(synthetic: Image, tmp_path: os.PathLike[str]) -> Iterator[str]:
    """The synthetic image mounted where every user can reach it (pytest's tmp is 0700)."""
    work = str(tmp_path)
    config = write_config(os.path.join(work, "c.json"), synthetic.blob_dir)
    mountpoint = tempfile.mkdtemp(prefix="nydusd-test-")
    os.chmod(mountpoint, 0o755)
    try:
        with mounted(synthetic.bootstrap, mountpoint, config, os.path.join(work, "log")) as daemon:
            yield daemon.mountpoint
    finally:
        os.rmdir(mountpoint)


def test_writes_answer_erofs(mount: str) -> None:
    target = os.path.join(mount, "etc/passwd")
    attempts: list[Callable[[], object]] = [
        lambda: os.open(target, os.O_WRONLY),
        lambda: os.open(target, os.O_RDWR),
        lambda: os.open(os.path.join(mount, "new"), os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(os.path.join(mount, "dir")),
        lambda: os.unlink(target),
        lambda: os.rmdir(os.path.join(mount, "tmp")),
        lambda: os.rename(target, target + ".old"),
        lambda: os.link(target, os.path.join(mount, "link")),
        lambda: os.symlink("x", os.path.join(mount, "symlink")),
        lambda: os.chmod(target, 0o777),
        lambda: os.chown(target, 1, 1),
        lambda: os.truncate(target, 0),
        lambda: os.utime(target, (0, 0)),
        lambda: os.setxattr(target, "user.x", b"1"),
        lambda: os.removexattr(os.path.join(mount, "usr/lib/file004"), "user.comment"),
        lambda: os.mknod(os.path.join(mount, "fifo2"), 0o644 | stat.S_IFIFO),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS


def test_missing_names_and_dots(mount: str) -> None:
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(mount, "etc/missing"))
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(mount, "etc/missing"))  # a cached negative entry answers the same
    with pytest.raises(NotADirectoryError):
        os.stat(os.path.join(mount, "etc/passwd/x"))
    deep = os.path.join(mount, "usr/lib/deep")
    assert os.stat(os.path.join(deep, ".")).st_ino == os.stat(deep).st_ino
    assert os.stat(os.path.join(deep, "..")).st_ino == os.stat(os.path.join(mount, "usr/lib")).st_ino
    assert os.stat(os.path.join(mount, "..")).st_ino == os.stat(os.path.dirname(mount)).st_ino
    listing = subprocess.run(["ls", "-a1i", deep], check=True, capture_output=True, text=True).stdout.split()
    numbers = dict(zip(listing[1::2], (int(n) for n in listing[0::2]), strict=True))
    assert numbers["."] == os.stat(deep).st_ino
    assert numbers[".."] == os.stat(os.path.join(mount, "usr/lib")).st_ino


def test_hard_links_share_inode_and_nlink(mount: str) -> None:
    names = ["usr/lib/file001", "etc/hardlink-a", "usr/lib/deep/hardlink-b"]
    infos = [os.lstat(os.path.join(mount, name)) for name in names]
    assert {info.st_ino for info in infos} == {infos[0].st_ino}
    assert all(info.st_nlink == 3 for info in infos)


def test_statfs_and_xattrs(mount: str) -> None:
    info = os.statvfs(mount)
    assert info.f_files > 10 and info.f_bfree == 0 and info.f_namemax == 255
    path = os.path.join(mount, "usr/lib/file004")
    assert sorted(os.listxattr(path)) == ["security.capability", "user.comment", "user.empty"]
    assert os.getxattr(path, "user.comment") == b"hello"
    with pytest.raises(OSError) as raised:
        os.getxattr(path, "user.absent")
    assert raised.value.errno == errno.ENODATA


def test_image_without_xattrs_tells_the_kernel_to_stop_asking(tmp_path: os.PathLike[str]) -> None:
    """No inode has xattrs: the daemon answers getxattr with ENOSYS, which the kernel turns into
    EOPNOTSUPP for this call and answers itself from then on (an overlay above asks on every
    lookup); with xattrs in the image, `test_statfs_and_xattrs` still gets ENODATA."""
    work = str(tmp_path)
    source = os.path.join(work, "src")
    os.makedirs(os.path.join(source, "etc"))
    for name in ("a", "b"):
        with open(os.path.join(source, "etc", name), "w") as file:
            file.write(name)
    image = build_image(source, work)
    config = write_config(os.path.join(work, "c.json"), image.blob_dir)
    with mounted(image.bootstrap, os.path.join(work, "mnt"), config, os.path.join(work, "log")) as daemon:
        for name in ("a", "b"):
            with pytest.raises(OSError) as raised:
                os.getxattr(os.path.join(daemon.mountpoint, "etc", name), "trusted.overlay.opaque")
            assert raised.value.errno == errno.EOPNOTSUPP
        assert os.listxattr(os.path.join(daemon.mountpoint, "etc/a")) == []
        with open(os.path.join(daemon.mountpoint, "etc/b")) as file:
            assert file.read() == "b"


def run_as(uid: int, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), user=uid, group=uid, extra_groups=[], capture_output=True, text=True)


def test_non_root_sees_local_disk_permissions(mount: str) -> None:
    """allow_other lets other users in; default_permissions makes the kernel check the modes."""
    assert run_as(1000, "cat", os.path.join(mount, "etc/passwd")).returncode == 0
    refused = run_as(1000, "cat", os.path.join(mount, "root/secret"))
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert run_as(1000, "ls", os.path.join(mount, "root")).returncode != 0
    assert run_as(1000, "cat", os.path.join(mount, "etc/owned")).returncode != 0
    assert run_as(5678, "cat", os.path.join(mount, "etc/owned")).returncode == 0


def test_sigint_unmounts_and_exits_zero(synthetic: Image, tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    mountpoint = os.path.join(work, "mnt")
    daemon = start_nydusd(
        synthetic.bootstrap,
        mountpoint,
        write_config(os.path.join(work, "c.json"), synthetic.blob_dir),
        os.path.join(work, "log"),
    )
    try:
        assert os.listdir(mountpoint)
        assert daemon.stop(signal.SIGINT) == 0
        assert not is_mounted(mountpoint)
    finally:
        daemon.stop(signal.SIGKILL)
        force_unmount(mountpoint)


def test_restart_after_kill_clears_stale_mount(synthetic: Image, tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    mountpoint = os.path.join(work, "mnt")
    config = write_config(os.path.join(work, "c.json"), synthetic.blob_dir)
    try:
        killed = start_nydusd(synthetic.bootstrap, mountpoint, config, os.path.join(work, "log1"))
        killed.stop(signal.SIGKILL)
        with pytest.raises(OSError) as raised:
            os.listdir(mountpoint)
        assert raised.value.errno == errno.ENOTCONN
        with mounted(synthetic.bootstrap, mountpoint, config, os.path.join(work, "log2")) as daemon:
            assert "etc" in os.listdir(mountpoint)
            assert "stale" in daemon.log()
        assert not is_mounted(mountpoint)
    finally:
        force_unmount(mountpoint)


def test_second_daemon_on_live_mount_is_refused(synthetic: Image, tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    mountpoint = os.path.join(work, "mnt")
    config = write_config(os.path.join(work, "c.json"), synthetic.blob_dir)
    with mounted(synthetic.bootstrap, mountpoint, config, os.path.join(work, "log1")):
        second = subprocess.run(
            [*NYDUSD, "--bootstrap", synthetic.bootstrap, "--mountpoint", mountpoint, "--config", config],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert second.returncode == 6 and "already a live FUSE mount" in second.stderr
        assert "etc" in os.listdir(mountpoint)


def test_bad_config_names_the_key_and_mounts_nothing(synthetic: Image, tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    mountpoint = os.path.join(work, "mnt")
    os.makedirs(mountpoint)
    config = write_config(os.path.join(work, "c.json"), synthetic.blob_dir, digest_validat=True)
    with pytest.raises(AssertionError, match="digest_validat") as raised:
        start_nydusd(synthetic.bootstrap, mountpoint, config, os.path.join(work, "log"))
    assert "exited with 2" in str(raised.value)
    assert not is_mounted(mountpoint)


def test_external_unmount_stops_the_daemon(synthetic: Image, tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    mountpoint = os.path.join(work, "mnt")
    config = write_config(os.path.join(work, "c.json"), synthetic.blob_dir)
    daemon = start_nydusd(synthetic.bootstrap, mountpoint, config, os.path.join(work, "log"))
    try:
        subprocess.run(["umount", mountpoint], check=True)
        assert daemon.process.wait(30) == 0
        assert not is_mounted(mountpoint)
    finally:
        daemon.stop(signal.SIGKILL)
        force_unmount(mountpoint)


def test_without_config_blobs_are_read_beside_the_bootstrap(synthetic: Image, tmp_path: os.PathLike[str]) -> None:
    work = str(tmp_path)
    beside = os.path.join(work, "image")
    shutil.copytree(synthetic.blob_dir, beside)
    bootstrap = shutil.copy(synthetic.bootstrap, beside)
    mountpoint = os.path.join(work, "mnt")
    os.makedirs(mountpoint)
    process = subprocess.Popen(
        [*NYDUSD, "--bootstrap", bootstrap, "--mountpoint", mountpoint, "--log-level", "debug"], cwd=REPO
    )
    try:
        deadline = 300
        while not (answers(mountpoint) and is_mounted(mountpoint)) and deadline and process.poll() is None:
            deadline -= 1
            time.sleep(0.05)
        with (
            open(os.path.join(mountpoint, "usr/lib/file001"), "rb") as mounted_file,
            open(os.path.join(synthetic.source, "usr/lib/file001"), "rb") as source_file,
        ):
            assert mounted_file.read() == source_file.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:  # cleanup only: an assertion here would hide the first failure
        if process.poll() is None:
            process.kill()
            process.wait()
        force_unmount(mountpoint)


def test_signals_repeated_while_stopping_do_not_kill_the_daemon_half_way(
    synthetic: Image, tmp_path: os.PathLike[str]
) -> None:
    """A supervisor may signal again while the daemon stops (the process group and the process,
    or a second `kill`): the first SIGTERM stops it, the others must not kill it before it has
    unmounted and written what it was asked to (a dead mount and no timeline otherwise)."""
    work = str(tmp_path)
    mountpoint = os.path.join(work, "mnt")
    timeline = os.path.join(work, "timeline.json")
    config = write_config(os.path.join(work, "c.json"), synthetic.blob_dir)
    daemon = start_nydusd(
        synthetic.bootstrap, mountpoint, config, os.path.join(work, "log"), extra=["--timeline-out", timeline]
    )
    try:
        with open(os.path.join(mountpoint, "usr/lib/file001"), "rb") as mounted_file:
            mounted_file.read()
        signals = 0
        deadline = time.monotonic() + 30
        while daemon.process.poll() is None and time.monotonic() < deadline:
            daemon.process.send_signal(signal.SIGINT if signals % 2 else signal.SIGTERM)
            signals += 1
            time.sleep(0.002)
        assert signals > 1, "the daemon was gone after one signal: the test proves nothing"
        assert daemon.process.wait(30) == 0, daemon.log()
        assert not is_mounted(mountpoint)
        assert os.path.getsize(timeline) > 0
    finally:
        daemon.stop(signal.SIGKILL)
        force_unmount(mountpoint)
