"""`RafsOperations`: the FUSE operations, translating kernel requests to bootstrap lookups.

Thin on purpose (as pyfuse3's examples): every handler asks the `Bootstrap` or the
`FileReader` and turns the answer into pyfuse3's types. Errors are translated in one place,
`_translate`: a missing name is `ENOENT`, any write is `EROFS`, a chunk or backend failure is
`EIO` plus one log line naming the file and chunk. Inode numbers are the bootstrap's, so hard
links share one, and `forget` has nothing to release: the daemon keeps no per-inode state
beyond the names it has seen (for log lines).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3

from daemon.reader import FileReader
from daemon.trace import AccessTrace
from rafs import layout
from rafs.bootstrap import Bootstrap
from rafs.errors import NydusError
from rafs.records import Inode

log = logging.getLogger(__name__)

# The image never changes under a mount: let the kernel keep entries and attributes "forever".
TIMEOUT_S = float(1 << 32)
BLOCK_SIZE = 4096
# Attributes are made once per inode and kept (a dict emptied when it reaches this size): making
# them costs ~10 us (decode and check the inode record, fill 15 fields), and every readdir asks
# again for each entry's attributes, since pyfuse3 cannot let the kernel cache listings.
MAX_CACHED_ATTRIBUTES = 1 << 15

P = ParamSpec("P")
R = TypeVar("R")


def _translate(handler: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Answer every failure with an errno; log the ones a user must hear about."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except NotADirectoryError:
            raise pyfuse3.FUSEError(errno.ENOTDIR) from None
        except NydusError as error:
            operations = cast(RafsOperations, args[0])
            subject = operations.describe(args[1]) if isinstance(args[1], int) else "?"
            log.error("%s failed on %s: %s: %s", handler.__name__, subject, type(error).__name__, error)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s: unexpected error", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _read_only() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


class RafsOperations(pyfuse3.Operations):
    """Read-only FUSE view of one bootstrap."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self, bootstrap: Bootstrap, reader: FileReader, *, enable_xattr: bool = True, trace: AccessTrace | None = None
    ) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.reader = reader
        self.enable_xattr = enable_xattr
        # No xattr to serve: ENOSYS makes the kernel stop asking for the mount's life (as Nydus
        # does with xattrs off). An overlay above asks for its `trusted.overlay.*` names on
        # every lookup: a quarter of a warm start's requests on the large benchmark image.
        self.getxattr_enosys = not enable_xattr or not bootstrap.has_xattrs()
        self.trace = trace
        self._names: dict[int, tuple[int, bytes]] = {}
        self._attributes: dict[int, pyfuse3.EntryAttributes] = {}
        self._fs_blocks = sum(blob.uncompressed_size for blob in bootstrap.blobs) // BLOCK_SIZE

    # -- helpers -------------------------------------------------------------------------------

    def describe(self, ino: int) -> str:
        """The path under which the kernel last looked `ino` up, for log lines."""
        parts: list[bytes] = []
        current = ino
        while current != layout.ROOT_INO and len(parts) < 256:
            seen = self._names.get(current)
            if seen is None:
                return f"inode {ino}" + (f" (.../{os.fsdecode(b'/'.join(reversed(parts)))})" if parts else "")
            current, name = seen
            parts.append(name)
        return f"/{os.fsdecode(b'/'.join(reversed(parts)))} (inode {ino})"

    def path_of(self, ino: int) -> bytes | None:
        """The absolute path under which the kernel last looked `ino` up, or None if unknown."""
        parts: list[bytes] = []
        current = ino
        while current != layout.ROOT_INO:
            seen = self._names.get(current)
            if seen is None or len(parts) >= 4096:
                return None
            current, name = seen
            parts.append(name)
        return b"/" + b"/".join(reversed(parts))

    def attributes(self, inode: Inode) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode.ino
        attr.generation = 0
        attr.entry_timeout = TIMEOUT_S
        attr.attr_timeout = TIMEOUT_S
        attr.st_mode = inode.mode
        attr.st_nlink = inode.nlink
        attr.st_uid = inode.uid
        attr.st_gid = inode.gid
        attr.st_rdev = inode.rdev
        attr.st_size = inode.size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (inode.size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = inode.mtime_ns
        return attr

    def attributes_of(self, ino: int) -> pyfuse3.EntryAttributes:
        """`attributes` of inode `ino`, made once (never modified: pyfuse3 copies them out)."""
        attr = self._attributes.get(ino)
        if attr is None:
            if len(self._attributes) >= MAX_CACHED_ATTRIBUTES:
                self._attributes.clear()
            attr = self._attributes[ino] = self.attributes(self._inode(ino))
        return attr

    def negative_entry(self) -> pyfuse3.EntryAttributes:
        """ENOENT that the kernel may remember as long as the mount lives (PATH searches)."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = 0
        attr.entry_timeout = TIMEOUT_S
        return attr

    def _inode(self, ino: int) -> Inode:
        if not 1 <= ino <= self.bootstrap.inode_count:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.bootstrap.inode(ino)

    def _parent_of(self, directory: Inode) -> int:
        return directory.parent if directory.parent else layout.ROOT_INO

    # -- metadata ------------------------------------------------------------------------------

    @_translate
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return self.attributes_of(parent_inode)
        if name == b"..":
            return self.attributes_of(self._parent_of(parent))
        ino = self.bootstrap.lookup(parent_inode, name)
        if ino is None:
            return self.negative_entry()
        self._names[ino] = (parent_inode, name)
        return self.attributes_of(ino)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nothing to release: inodes are records in the mmapped bootstrap."""

    @_translate
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attributes_of(inode)

    @_translate
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if not self._inode(inode).is_symlink:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self.bootstrap.readlink(inode)

    @_translate
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        stats = pyfuse3.StatvfsData()
        stats.f_bsize = stats.f_frsize = BLOCK_SIZE
        stats.f_blocks = self._fs_blocks
        stats.f_bfree = stats.f_bavail = 0
        stats.f_files = self.bootstrap.inode_count
        stats.f_ffree = stats.f_favail = 0
        stats.f_namemax = 255
        return stats

    @_translate
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        """Only asked without `default_permissions`; the kernel checks modes itself otherwise."""
        self._inode(inode)
        if mode & os.W_OK:
            raise _read_only()
        return True

    @_translate
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if self.getxattr_enosys:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        self._inode(inode)
        value = self.bootstrap.xattrs(inode).get(name) if self.enable_xattr else None
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_translate
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        self._inode(inode)
        return list(self.bootstrap.xattrs(inode)) if self.enable_xattr else []

    # -- directories ---------------------------------------------------------------------------

    @_translate
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self._inode(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_translate
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Positions 0 and 1 are `.` and `..`; position p >= 2 is entry p - 2 (stable offsets)."""
        directory = self._inode(fh)
        position = start_id
        if position == 0:
            if not pyfuse3.readdir_reply(token, b".", self.attributes_of(fh), 1):
                return
            position = 1
        if position == 1:
            if not pyfuse3.readdir_reply(token, b"..", self.attributes_of(self._parent_of(directory)), 2):
                return
            position = 2
        for entry in self.bootstrap.readdir(fh, position - 2):
            if not pyfuse3.readdir_reply(token, entry.name, self.attributes_of(entry.ino), entry.index + 3):
                return
            self._names[entry.ino] = (fh, entry.name)

    async def releasedir(self, fh: int) -> None:
        """Directory handles are inode numbers; nothing to free."""

    # -- files ---------------------------------------------------------------------------------

    @_translate
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise _read_only()
        if not self._inode(inode).is_reg:
            raise pyfuse3.FUSEError(errno.EINVAL)
        self.reader.opened(inode)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @_translate
    async def read(self, fh: int, off: int, size: int) -> bytes:
        data = await self.reader.read(fh, off, size)
        if self.trace is not None:
            self.trace.read(fh, off, len(data), self.path_of)
        return data

    async def release(self, fh: int) -> None:
        """File handles are inode numbers; nothing to free."""

    async def flush(self, fh: int) -> None:
        """Nothing is ever dirty: ENOSYS tells the kernel to stop sending flushes on close."""
        raise pyfuse3.FUSEError(errno.ENOSYS)

    # -- every write answers EROFS ---------------------------------------------------------------

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _read_only()

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _read_only()

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _read_only()

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _read_only()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _read_only()

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _read_only()

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise _read_only()

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _read_only()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise _read_only()

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise _read_only()

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _read_only()

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _read_only()
