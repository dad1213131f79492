"""`RafsOperations` called directly, without a mount: every operation and every errno it answers.

The kernel is left out (a mount test cannot tell a wrong errno from the kernel's own checks);
the context argument is a stub, `readdir_reply` is replaced by a collector, and the read path
behind the operations is the real one over a local blob directory.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import pyfuse3
import pytest

from daemon.fs import RafsOperations
from daemon.reader import FileReader
from daemon.storage.cache import MemoryChunkCache
from daemon.storage.localfs import LocalFsBackend
from rafs import layout
from rafs.mapped import open_bootstrap
from tests.daemon.images import build_image
from tests.daemon.sources import make_source, running

pytestmark = pytest.mark.trio

CTX = cast(pyfuse3.RequestContext, None)  # no handler reads its context
CONTENT = bytes(range(256)) * 64  # 16 KiB: four 4 KiB chunks


@dataclass
class Mounted:
    operations: RafsOperations
    blob_dir: str

    def ino(self, path: str) -> int:
        found = self.operations.bootstrap.resolve(path)
        assert found is not None, path
        return found


@pytest.fixture
async def ops(tmp_path: os.PathLike[str]) -> AsyncIterator[Mounted]:
    source = os.path.join(tmp_path, "src")
    os.makedirs(os.path.join(source, "etc"))
    with open(os.path.join(source, "etc/data"), "wb") as file:
        file.write(CONTENT)
    os.symlink("data", os.path.join(source, "etc/link"))
    os.setxattr(os.path.join(source, "etc/data"), "user.colour", b"blue")
    image = build_image(source, os.path.join(tmp_path, "image"), chunk_size=4096)
    bootstrap = open_bootstrap(image.bootstrap)
    chunks, readahead = make_source(bootstrap, LocalFsBackend(image.blob_dir), MemoryChunkCache())
    async with running(chunks):
        yield Mounted(RafsOperations(bootstrap, FileReader(bootstrap, chunks, readahead)), image.blob_dir)


async def answers(call: Awaitable[Any]) -> int:
    """The errno a handler answers with (0 for success)."""
    try:
        await call
    except pyfuse3.FUSEError as error:
        return error.errno
    return 0


async def test_lookup(ops: Mounted) -> None:
    root, etc = layout.ROOT_INO, ops.ino("/etc")
    assert (await ops.operations.lookup(root, b"etc", CTX)).st_ino == etc
    assert (await ops.operations.lookup(etc, b".", CTX)).st_ino == etc
    assert (await ops.operations.lookup(etc, b"..", CTX)).st_ino == root
    negative = await ops.operations.lookup(etc, b"absent", CTX)
    assert negative.st_ino == 0 and negative.entry_timeout > 0  # a remembered ENOENT
    assert await answers(ops.operations.lookup(ops.ino("/etc/data"), b"x", CTX)) == errno.ENOTDIR
    assert await answers(ops.operations.lookup(10_000, b"x", CTX)) == errno.ENOENT
    assert ops.operations.describe(etc) == f"/etc (inode {etc})"  # log lines name what the kernel looked up


async def test_getattr(ops: Mounted) -> None:
    attributes = await ops.operations.getattr(ops.ino("/etc/data"), CTX)
    assert (attributes.st_size, attributes.st_mode & 0o170000) == (len(CONTENT), 0o100000)
    assert attributes.entry_timeout >= 1 << 31 and attributes.attr_timeout >= 1 << 31
    for bad in (0, ops.operations.bootstrap.inode_count + 1):
        assert await answers(ops.operations.getattr(bad, CTX)) == errno.ENOENT


async def test_readlink(ops: Mounted) -> None:
    assert await ops.operations.readlink(ops.ino("/etc/link"), CTX) == b"data"
    assert await answers(ops.operations.readlink(ops.ino("/etc/data"), CTX)) == errno.EINVAL


async def test_statfs_and_access(ops: Mounted) -> None:
    stats = await ops.operations.statfs(CTX)
    assert stats.f_files == ops.operations.bootstrap.inode_count and stats.f_bfree == 0
    data = ops.ino("/etc/data")
    assert await ops.operations.access(data, os.R_OK, CTX)
    assert await answers(ops.operations.access(data, os.W_OK, CTX)) == errno.EROFS


async def test_xattrs(ops: Mounted) -> None:
    data = ops.ino("/etc/data")
    assert await ops.operations.getxattr(data, b"user.colour", CTX) == b"blue"
    assert await ops.operations.listxattr(data, CTX) == [b"user.colour"]
    assert await answers(ops.operations.getxattr(data, b"user.none", CTX)) == pyfuse3.ENOATTR
    ops.operations.enable_xattr = False
    assert await answers(ops.operations.getxattr(data, b"user.colour", CTX)) == pyfuse3.ENOATTR
    assert await ops.operations.listxattr(data, CTX) == []


async def test_readdir_offsets_are_stable(ops: Mounted, monkeypatch: pytest.MonkeyPatch) -> None:
    replies: list[tuple[bytes, int]] = []
    room = [100]

    def reply(token: object, name: bytes, attributes: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if room[0] == 0:
            return False
        room[0] -= 1
        replies.append((name, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)  # what daemon.fs calls
    etc = ops.ino("/etc")
    token = cast(pyfuse3.ReaddirToken, None)
    fh = await ops.operations.opendir(etc, CTX)
    await ops.operations.readdir(fh, 0, token)
    assert replies == [(b".", 1), (b"..", 2), (b"data", 3), (b"link", 4)]
    replies.clear()
    room[0] = 1  # the kernel's buffer holds one entry: it asks again from the last offset
    await ops.operations.readdir(fh, 2, token)
    assert replies == [(b"data", 3)]
    assert await answers(ops.operations.opendir(ops.ino("/etc/data"), CTX)) == errno.ENOTDIR


async def test_open_and_read(ops: Mounted) -> None:
    data = ops.ino("/etc/data")
    info = await ops.operations.open(data, os.O_RDONLY, CTX)
    assert info.fh == data and info.keep_cache
    assert await ops.operations.read(info.fh, 0, len(CONTENT) + 100) == CONTENT  # short only at the end
    assert await ops.operations.read(info.fh, 4000, 200) == CONTENT[4000:4200]  # across a chunk boundary
    assert await ops.operations.read(info.fh, len(CONTENT), 10) == b""
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        assert await answers(ops.operations.open(data, flags, CTX)) == errno.EROFS
    assert await answers(ops.operations.open(ops.ino("/etc"), os.O_RDONLY, CTX)) == errno.EINVAL
    assert await answers(ops.operations.flush(info.fh)) == errno.ENOSYS


@pytest.mark.logs_warnings  # provoked on purpose
async def test_a_corrupt_chunk_is_eio_with_one_error_line(ops: Mounted, caplog: pytest.LogCaptureFixture) -> None:
    data = ops.ino("/etc/data")
    await ops.operations.lookup(layout.ROOT_INO, b"etc", CTX)  # so the log names the path
    await ops.operations.lookup(ops.ino("/etc"), b"data", CTX)
    record = ops.operations.bootstrap.chunk(ops.operations.bootstrap.inode(data).data_start + 1)
    blob_id = ops.operations.bootstrap.blobs[record.blob_index].blob_id
    with open(os.path.join(ops.blob_dir, blob_id), "r+b") as blob:
        blob.seek(record.compressed_offset)
        first = blob.read(1)[0]
        blob.seek(record.compressed_offset)
        blob.write(bytes([first ^ 0xFF]))
    with caplog.at_level(logging.ERROR, logger="daemon.fs"):
        assert await answers(ops.operations.read(data, 4096, 10)) == errno.EIO
    [line] = [r.getMessage() for r in caplog.records if r.name == "daemon.fs"]
    assert "read failed on /etc/data" in line and "chunk" in line


WRITES: dict[str, Callable[[RafsOperations, int], Awaitable[Any]]] = {
    "setattr": lambda o, i: o.setattr(i, pyfuse3.EntryAttributes(), cast(pyfuse3.SetattrFields, None), None, CTX),
    "mknod": lambda o, i: o.mknod(i, b"n", 0o644, 0, CTX),
    "mkdir": lambda o, i: o.mkdir(i, b"d", 0o755, CTX),
    "unlink": lambda o, i: o.unlink(i, b"data", CTX),
    "rmdir": lambda o, i: o.rmdir(i, b"etc", CTX),
    "symlink": lambda o, i: o.symlink(i, b"s", b"t", CTX),
    "rename": lambda o, i: o.rename(i, b"data", i, b"other", 0, CTX),
    "link": lambda o, i: o.link(i, i, b"l", CTX),
    "write": lambda o, i: o.write(i, 0, b"x"),
    "create": lambda o, i: o.create(i, b"c", 0o644, os.O_WRONLY, CTX),
    "setxattr": lambda o, i: o.setxattr(i, b"user.x", b"y", CTX),
    "removexattr": lambda o, i: o.removexattr(i, b"user.colour", CTX),
}


@pytest.mark.parametrize("operation", sorted(WRITES))
async def test_every_write_is_erofs(ops: Mounted, operation: str) -> None:
    assert await answers(WRITES[operation](ops.operations, ops.ino("/etc"))) == errno.EROFS
