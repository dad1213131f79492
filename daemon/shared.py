"""`SharedOperations`: one FUSE mount serving many images, each in a subdirectory of its root.

pyfuse3 allows one FUSE session per process, so shared mode (Nydus's `nydusd` without
`--bootstrap`, fed by `POST /api/v1/mount?mountpoint=/sub`) multiplexes here: the root is a
pseudo-directory whose entries are the mounted images; every other request goes to the image
it belongs to, a `MeteredOperations` that never learns it is shared.

Inode numbers keep the images apart: the kernel sees `slot << SLOT_SHIFT | ino`, where `ino` is
the image's own number and `slot` (from 1, never reused while the process lives) names the
mount. A remount or unmount therefore never lets an old kernel inode alias a new image's: a
number whose slot is gone answers ENOENT. File and directory handles are encoded the same way.
Everything runs on the event loop; the table changes only between awaits.
"""

from __future__ import annotations

import errno
import logging
import stat
import time
from collections.abc import Sequence

import pyfuse3

from daemon.metrics import Fop
from daemon.mount import ImageMount
from rafs import layout
from rafs.errors import NydusError

log = logging.getLogger(__name__)

SLOT_SHIFT = 40
LOCAL_MASK = (1 << SLOT_SHIFT) - 1
ROOT = pyfuse3.ROOT_INODE
TIMEOUT_S = float(1 << 32)
MAX_CACHED_ATTRIBUTES = 1 << 15
MAX_NAME_BYTES = 255


def check_mount_name(mountpoint: str) -> str:
    """The subdirectory name of `mountpoint` (`/sub`), or ValueError saying why it cannot be one."""
    name = mountpoint.removeprefix("/")
    if not mountpoint.startswith("/") or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"mountpoint {mountpoint!r}: expected one directory below the root, as /name")
    if len(name.encode()) > MAX_NAME_BYTES or "\0" in name:
        raise ValueError(f"mountpoint {mountpoint!r}: not a valid file name")
    return name


def _copy_attributes(source: pyfuse3.EntryAttributes, ino: int) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    for name in (
        "generation", "entry_timeout", "attr_timeout", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev",
        "st_size", "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
    ):  # fmt: skip
        setattr(attr, name, getattr(source, name))
    attr.st_ino = ino
    return attr


class SharedOperations(pyfuse3.Operations):
    """The root of a shared daemon and the router to its images."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self) -> None:
        super().__init__()
        self.started_ns = time.time_ns()
        self.by_name: dict[str, int] = {}  # subdirectory name -> slot
        self.by_slot: dict[int, ImageMount] = {}
        self._names: dict[int, str] = {}  # slot -> name
        self._next_slot = 1
        self._attributes: dict[int, pyfuse3.EntryAttributes] = {}  # global ino -> translated attributes

    # -- the table --------------------------------------------------------------------------------

    def reserve_slot(self) -> int:
        """A fresh slot (never used before); its `ino_base` is `slot << SLOT_SHIFT`."""
        slot = self._next_slot
        self._next_slot += 1
        return slot

    def add(self, name: str, slot: int, mount: ImageMount) -> ImageMount | None:
        """Serve `mount` as `/name`; the mount it replaces there, if any (a remount)."""
        old_slot = self.by_name.get(name)
        old = self._drop(old_slot) if old_slot is not None else None
        self.by_name[name] = slot
        self.by_slot[slot] = mount
        self._names[slot] = name
        if old is not None:
            self._invalidate(name)
        return old

    def remove(self, name: str) -> ImageMount | None:
        """Stop serving `/name`; the mount that was there."""
        slot = self.by_name.pop(name, None)
        if slot is None:
            return None
        mount = self._drop(slot)
        self._invalidate(name)
        return mount

    def _drop(self, slot: int) -> ImageMount:
        mount = self.by_slot.pop(slot)
        del self._names[slot]
        self._attributes = {ino: attr for ino, attr in self._attributes.items() if ino >> SLOT_SHIFT != slot}
        return mount

    def _invalidate(self, name: str) -> None:
        """Make the kernel forget `/name`, so its next lookup reaches this table."""
        try:
            pyfuse3.invalidate_entry_async(ROOT, name.encode(), ignore_enoent=True)
        except Exception as error:  # no FUSE session (tests without a mount)
            log.debug("cannot invalidate /%s: %s", name, error)

    def _route(self, ino: int) -> tuple[ImageMount, int, int]:
        """The mount of kernel inode `ino`, its own number there and its slot's base."""
        slot = ino >> SLOT_SHIFT
        mount = self.by_slot.get(slot)
        if mount is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return mount, ino & LOCAL_MASK, slot << SLOT_SHIFT

    def _global(self, base: int, attr: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        if attr.st_ino == 0:  # a negative entry
            return attr
        ino = base | attr.st_ino
        translated = self._attributes.get(ino)
        if translated is None:
            if len(self._attributes) >= MAX_CACHED_ATTRIBUTES:
                self._attributes.clear()
            translated = self._attributes[ino] = _copy_attributes(attr, ino)
        return translated

    def root_attributes(self) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ROOT
        attr.st_mode = stat.S_IFDIR | 0o755
        attr.st_nlink = 2 + len(self.by_slot)
        attr.st_blksize = 4096
        attr.entry_timeout = TIMEOUT_S
        attr.attr_timeout = 0  # the number of mounts changes
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self.started_ns
        return attr

    def _mount_root(self, slot: int) -> pyfuse3.EntryAttributes:
        mount = self.by_slot[slot]
        return self._global(slot << SLOT_SHIFT, mount.operations.attributes_of(layout.ROOT_INO))

    # -- metadata ---------------------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT:
            if name in (b".", b".."):
                return self.root_attributes()
            slot = self.by_name.get(name.decode(errors="surrogateescape"))
            if slot is None:
                raise pyfuse3.FUSEError(errno.ENOENT)  # not remembered: a mount may come
            return self._mount_root(slot)
        mount, local, base = self._route(parent_inode)
        if name == b".." and local == layout.ROOT_INO:
            return self.root_attributes()
        return self._global(base, await mount.operations.lookup(local, name, ctx))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == ROOT:
            return self.root_attributes()
        mount, local, base = self._route(inode)
        return self._global(base, await mount.operations.getattr(local, ctx))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        mount, local, _ = self._route(inode)
        return await mount.operations.readlink(local, ctx)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        stats = pyfuse3.StatvfsData()
        stats.f_bsize = stats.f_frsize = 4096
        stats.f_files = sum(m.bootstrap.inode_count for m in self.by_slot.values()) + 1
        stats.f_namemax = MAX_NAME_BYTES
        return stats

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        if inode == ROOT:
            return True
        mount, local, _ = self._route(inode)
        return await mount.operations.access(local, mode, ctx)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == ROOT:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        mount, local, _ = self._route(inode)
        try:
            return await mount.operations.getxattr(local, name, ctx)
        except pyfuse3.FUSEError as error:
            # An image without xattrs answers ENOSYS, which would stop the kernel asking any
            # image of this one FUSE connection: here it only means "no such attribute".
            if error.errno == errno.ENOSYS:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if inode == ROOT:
            return []
        mount, local, _ = self._route(inode)
        return await mount.operations.listxattr(local, ctx)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nothing to release here or in the images."""

    # -- directories ------------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode == ROOT:
            return ROOT
        mount, local, base = self._route(inode)
        return base | await mount.operations.opendir(local, ctx)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """The root lists the mounts (offsets by slot, so they stay stable as mounts come and go);
        an image's directory is listed as `daemon.fs` does, with inode numbers translated."""
        if fh == ROOT:
            root = self.root_attributes()
            if start_id < 1 and not pyfuse3.readdir_reply(token, b".", root, 1):
                return
            if start_id < 2 and not pyfuse3.readdir_reply(token, b"..", root, 2):
                return
            for slot in sorted(self.by_slot):
                if slot + 2 > start_id:
                    name = self._names[slot].encode(errors="surrogateescape")
                    if not pyfuse3.readdir_reply(token, name, self._mount_root(slot), slot + 2):
                        return
            return
        mount, local, base = self._route(fh)
        await mount.operations.measured(Fop.READDIR, local, self._readdir_image(mount, local, base, start_id, token))

    async def _readdir_image(
        self, mount: ImageMount, directory: int, base: int, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        operations = mount.operations
        try:
            inode = mount.bootstrap.inode(directory)
        except NydusError as error:
            log.error("readdir failed on inode %d of %s: %s", directory, mount.id, error)
            raise pyfuse3.FUSEError(errno.EIO) from None
        if not inode.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        position = start_id
        if position == 0:
            if not pyfuse3.readdir_reply(token, b".", self._global(base, operations.attributes_of(directory)), 1):
                return
            position = 1
        if position == 1:
            if directory == layout.ROOT_INO:
                parent = self.root_attributes()
            else:
                parent = self._global(base, operations.attributes_of(inode.parent or layout.ROOT_INO))
            if not pyfuse3.readdir_reply(token, b"..", parent, 2):
                return
            position = 2
        for entry in mount.bootstrap.readdir(directory, position - 2):
            attr = self._global(base, operations.attributes_of(entry.ino))
            if not pyfuse3.readdir_reply(token, entry.name, attr, entry.index + 3):
                return

    async def releasedir(self, fh: int) -> None:
        """Handles are inode numbers; nothing to free."""

    # -- files ------------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode == ROOT:
            raise pyfuse3.FUSEError(errno.EISDIR)
        mount, local, base = self._route(inode)
        info = await mount.operations.open(local, flags, ctx)
        info.fh = base | info.fh
        return info

    async def read(self, fh: int, off: int, size: int) -> bytes:
        mount, local, _ = self._route(fh)
        return await mount.operations.read(local, off, size)

    async def release(self, fh: int) -> None:
        slot = fh >> SLOT_SHIFT
        mount = self.by_slot.get(slot)
        if mount is not None:
            await mount.operations.release(fh & LOCAL_MASK)

    async def flush(self, fh: int) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)
