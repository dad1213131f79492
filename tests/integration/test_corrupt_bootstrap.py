"""A corrupt bootstrap is refused or answers EIO: never other bytes, sizes or metadata.

Through the console scripts, as a user would: `nydusd --bootstrap` on a real FUSE mount and
`nydus-image unpack`, on bootstraps damaged by hand (the issue's cases) and by hypothesis
(random flips and zeroed runs), compared with the undamaged image's unpacked tree.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rafs import layout
from rafs.bootstrap import Bootstrap
from tests.conftest import run_console
from tests.daemon.images import Image, build_image, synthetic_tree, unpack
from tests.daemon.nydusd import force_unmount, is_mounted, requires_fuse, write_config
from tests.reference import Snap, Snapshot, snapshot_directory

pytestmark = [pytest.mark.fuse, requires_fuse]

MOUNT_TIMEOUT_S = 60.0  # only catches a hang; a mount takes about a second


@dataclass(frozen=True)
class Original:
    image: Image
    data: bytes
    expected: Snapshot  # the undamaged tree, hard-link groups left out (a partial walk cannot see them)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Original:
    base = tmp_path_factory.mktemp("corrupt")
    image = build_image(synthetic_tree(str(base / "src"), files=6), str(base), chunk_size=0x10000)
    expected = snapshot_directory(unpack(image, str(base / "unpacked")))
    return Original(image, Path(image.bootstrap).read_bytes(), {p: replace(s, links=()) for p, s in expected.items()})


def inode_offset(data: bytes, path: str) -> int:
    """Where the inode record of `path` starts in the bootstrap bytes."""
    bootstrap = Bootstrap(data, verify=False)
    ino = bootstrap.resolve(path)
    assert ino is not None
    return bootstrap.superblock.inode_table_offset + (ino - 1) * layout.INODE.size


def _nydusd() -> str:
    found = shutil.which("nydusd")
    if found is None:
        pytest.skip("console script nydusd is not installed (pip install -e .)")
    return found


@dataclass
class MountResult:
    refused: bool  # nydusd exited before mounting
    walked: dict[str, Snap | None]  # path -> what the mount showed, None where it answered an error
    listings: dict[str, list[str]]  # directory -> names, for directories whose listing succeeded
    errnos: set[int]
    log: str
    probe_errno: int | None = None  # what reading `probe` answered (None: it read fine)


def walk_tolerantly(root: str) -> tuple[dict[str, Snap | None], dict[str, list[str]], set[int]]:
    """Everything readable under `root`; an error on a path (EIO) is recorded, not raised."""
    walked: dict[str, Snap | None] = {}
    listings: dict[str, list[str]] = {}
    errnos: set[int] = set()
    pending = [""]
    while pending:
        relative = pending.pop()
        full = os.path.join(root, relative) if relative else root
        try:
            info = os.lstat(full)
            xattrs = tuple(
                sorted(
                    (name.encode(), os.getxattr(full, name, follow_symlinks=False))
                    for name in os.listxattr(full, follow_symlinks=False)
                )
            )
            data = b""
            if stat.S_ISREG(info.st_mode):
                with open(full, "rb") as file:
                    data = file.read()
            target = os.fsencode(os.readlink(full)) if stat.S_ISLNK(info.st_mode) else b""
            if stat.S_ISDIR(info.st_mode):
                names = sorted(os.listdir(full))
                listings[relative] = names
                pending.extend(os.path.join(relative, name) if relative else name for name in names)
        except OSError as error:
            walked[relative] = None
            errnos.add(error.errno or 0)
            continue
        walked[relative] = Snap(
            mode=info.st_mode,
            uid=info.st_uid,
            gid=info.st_gid,
            mtime_ns=info.st_mtime_ns,
            size=info.st_size if stat.S_ISREG(info.st_mode) else 0,
            data=data,
            target=target,
            rdev=info.st_rdev if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else 0,
            xattrs=xattrs,
            links=(),
        )
    return walked, listings, errnos


@dataclass
class Workspace:
    directory: str
    blob_dir: str

    def bootstrap(self, data: bytes, name: str = "image.boot") -> str:
        path = os.path.join(self.directory, name)
        Path(path).write_bytes(data)
        return path


@pytest.fixture
def workspace(original: Original) -> Iterator[Workspace]:
    directory = tempfile.mkdtemp(prefix="corrupt-")
    try:
        yield Workspace(directory, original.image.blob_dir)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def mount_and_walk(work: Workspace, bootstrap: str, probe: str = "") -> MountResult:
    """Run `nydusd --bootstrap` on it; walk the mount if it mounts; always stop and unmount."""
    mountpoint = os.path.join(work.directory, "mnt")
    os.makedirs(mountpoint, exist_ok=True)
    config = write_config(os.path.join(work.directory, "nydusd.json"), work.blob_dir)
    log_path = os.path.join(work.directory, "nydusd.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [_nydusd(), "--bootstrap", bootstrap, "--config", config, "--mountpoint", mountpoint],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not is_mounted(mountpoint):
            if process.poll() is not None:
                return MountResult(True, {}, {}, set(), Path(log_path).read_text(errors="replace"))
            assert time.monotonic() < deadline, "nydusd neither mounted nor exited"
            time.sleep(0.02)
        probe_errno = None
        if probe:
            try:
                Path(mountpoint, probe).read_bytes()
            except OSError as error:
                probe_errno = error.errno
        walked, listings, errnos = walk_tolerantly(mountpoint)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        force_unmount(mountpoint)
    return MountResult(False, walked, listings, errnos, Path(log_path).read_text(errors="replace"), probe_errno)


def wrong_answers(expected: Snapshot, result: MountResult) -> list[str]:
    """Every path the mount answered differently from the original (errors are allowed)."""
    wrong = []
    for path, snap in result.walked.items():
        if snap is None:
            continue
        if path not in expected:
            wrong.append(f"{path!r}: not in the image")
        elif snap != expected[path]:
            wrong.append(f"{path!r}: differs")
    for directory, names in result.listings.items():
        prefix = f"{directory}/" if directory else ""
        want = sorted(p[len(prefix) :] for p in expected if p.startswith(prefix) and p and "/" not in p[len(prefix) :])
        if names != want:
            wrong.append(f"{directory!r}: lists {names}, not {want}")
    return wrong


def unpack_cli(work: Workspace, bootstrap: str) -> tuple[subprocess.CompletedProcess[str], str]:
    output = os.path.join(work.directory, "out")
    return run_console("nydus-image", ["unpack", "-B", bootstrap, "-D", work.blob_dir, "--output", output]), output


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def test_an_altered_size_answers_eio_not_short_content(original: Original, workspace: Workspace) -> None:
    """The issue's case: a record the chunk digests cannot catch (the size) is caught by the tree.

    The file answers EIO; so does its directory's listing (which carries every entry's
    attributes); everything else is served as it was."""
    data = bytearray(original.data)
    record = inode_offset(original.data, "/usr/lib/file000")
    size = int.from_bytes(data[record + 16 : record + 24], "little")
    assert size > 1
    data[record + 16 : record + 24] = (size // 2).to_bytes(8, "little")
    bootstrap = workspace.bootstrap(bytes(data))
    result = mount_and_walk(workspace, bootstrap, probe="usr/lib/file000")
    assert not result.refused, result.log
    assert result.probe_errno == errno.EIO
    assert result.walked["usr/lib"] is None
    assert wrong_answers(original.expected, result) == []
    assert result.walked["etc/passwd"] == original.expected["etc/passwd"]
    failures = [line for line in result.log.splitlines() if "CorruptBootstrap" in line]
    assert failures and all(bootstrap in line and "inode" in line for line in failures), result.log
    assert_no_traceback(result.log)


def test_a_damaged_root_refuses_the_mount(original: Original, workspace: Workspace) -> None:
    data = bytearray(original.data)
    data[inode_offset(original.data, "/") + 8] ^= 0x40  # the root's uid
    bootstrap = workspace.bootstrap(bytes(data))
    result = mount_and_walk(workspace, bootstrap)
    assert result.refused
    lines = [line for line in result.log.splitlines() if line.strip()]
    assert len(lines) == 1 and bootstrap in lines[0] and "root" in lines[0], result.log


def test_unpack_of_a_zeroed_record_fails_and_leaves_nothing(original: Original, workspace: Workspace) -> None:
    """The issue's case: zeroed bytes over a 4096-byte file's record were unpacked as an empty file."""
    data = bytearray(original.data)
    bootstrap_view = Bootstrap(original.data, verify=False)
    ino = next(
        ino
        for _, ino in bootstrap_view.walk()
        if bootstrap_view.record(ino).is_reg and bootstrap_view.record(ino).size >= 4096
    )
    record = bootstrap_view.superblock.inode_table_offset + (ino - 1) * layout.INODE.size
    data[record + 16 : record + 16 + 64] = bytes(64)  # size, rdev, mtime, flags, parent, chunks
    bootstrap = workspace.bootstrap(bytes(data))
    completed, output = unpack_cli(workspace, bootstrap)
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and bootstrap in lines[0], completed.stderr
    assert not os.path.exists(output)
    assert sorted(os.listdir(workspace.directory)) == ["image.boot"]  # no temporary directory left


DAMAGE = st.tuples(
    st.sampled_from(["flip", "zero"]),
    st.floats(0.0, 1.0, exclude_max=True),  # where, as a fraction of the bootstrap
    st.integers(1, 255),  # flip mask
    st.integers(8, 512),  # zeroed run length
)


def damaged(data: bytes, damage: tuple[str, float, int, int]) -> bytes:
    kind, where, mask, length = damage
    altered = bytearray(data)
    offset = layout.SUPERBLOCK_SIZE + int(where * (len(data) - layout.SUPERBLOCK_SIZE))  # past the CRC'd superblock
    if kind == "flip":
        altered[offset] ^= mask
    else:
        altered[offset : offset + length] = bytes(len(altered[offset : offset + length]))
    return bytes(altered)


def check_damage(original: Original, work: Workspace, damage: tuple[str, float, int, int]) -> None:
    data = damaged(original.data, damage)
    bootstrap = work.bootstrap(data)
    result = mount_and_walk(work, bootstrap)
    assert_no_traceback(result.log)
    if not result.refused:
        assert wrong_answers(original.expected, result) == []
    completed, output = unpack_cli(work, bootstrap)
    assert_no_traceback(completed.stderr)
    if completed.returncode == 0:
        unpacked = {p: replace(s, links=()) for p, s in snapshot_directory(output).items()}
        assert unpacked == original.expected
        shutil.rmtree(output)
    else:
        assert not os.path.exists(output)
        assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr


@settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(damage=DAMAGE)
def test_random_damage_is_served_right_or_refused(
    original: Original, workspace: Workspace, damage: tuple[str, float, int, int]
) -> None:
    """A handful of mounts in the quick suite (each is a daemon start); the slow one below runs many."""
    check_damage(original, workspace, damage)


@pytest.mark.slow
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(damage=DAMAGE)
def test_random_damage_is_served_right_or_refused_many_seeds(
    original: Original, workspace: Workspace, damage: tuple[str, float, int, int]
) -> None:
    check_damage(original, workspace, damage)


def test_a_relocated_chunk_record_is_not_served_another_chunks_cached_bytes(tmp_path: Path) -> None:
    """A verified file whose chunk record was pointed at another file's (cached) chunk.

    Where a chunk is stored is outside the Merkle tree; what keeps this right is that a cache hit
    must match the reader's (verified) chunk digest, not only the place in the blob."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(3000))
    (source / "b").write_bytes(os.urandom(3000))
    image = build_image(str(source), str(tmp_path / "image"), chunk_size=0x10000)
    work = Workspace(str(tmp_path / "work"), image.blob_dir)
    os.makedirs(work.directory)
    config = write_config(os.path.join(work.directory, "nydusd.json"), image.blob_dir, str(tmp_path / "cache"))
    data = bytearray(Path(image.bootstrap).read_bytes())
    view = Bootstrap(bytes(data), verify=False)
    a, b = view.resolve("/a"), view.resolve("/b")
    assert a is not None and b is not None
    table = view.superblock.chunk_table_offset
    a_record = table + view.record(a).data_start * layout.CHUNK.size
    b_record = table + view.record(b).data_start * layout.CHUNK.size
    data[a_record : a_record + 20] = data[b_record : b_record + 20]  # blob, flags, stored offset and size
    bootstrap = work.bootstrap(bytes(data))
    mountpoint = os.path.join(work.directory, "mnt")
    os.makedirs(mountpoint)
    for path in ("b", "a"):  # b's chunk is cached first, then a's record names its place
        log = os.path.join(work.directory, f"{path}.log")
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [_nydusd(), "--bootstrap", bootstrap, "--config", config, "--mountpoint", mountpoint],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + MOUNT_TIMEOUT_S
            while not is_mounted(mountpoint):
                assert process.poll() is None and time.monotonic() < deadline, Path(log).read_text()
                time.sleep(0.02)
            try:
                served = Path(mountpoint, path).read_bytes()
            except OSError:
                served = None
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            force_unmount(mountpoint)
        assert served is None or served == (source / path).read_bytes(), f"{path} served other bytes"
