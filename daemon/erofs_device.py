"""`fs_driver: erofs`: the kernel's EROFS serves the tree; nydusd serves only its data device.

At mount, nydusd takes the image's EROFS metadata (`rafs.erofs`) from the bootstrap layer
(`nydusify convert --erofs`) or writes it (kept in the cache's work directory under the
bootstrap's digest, so a host writes it once per image; either is used only if its layout tag
is the bootstrap's), serves one file
over FUSE on a private directory, the data device (every distinct chunk, uncompressed, laid out
by `DeviceMap`), and mounts EROFS on the mountpoint with that file as its `device=`. Lookups,
listings, attributes, symlinks, xattrs and the page cache of files are then the kernel's:
nydusd answers only reads of device bytes, through the same `ChunkSource` as a file read
(cache, fetch, verification, blob-order amplification, prefetch). Nydus's own kernel-served
drivers (fscache, or `blockdev` over NBD or ublk) need what this kernel lacks; a file-backed
EROFS mount over a FUSE file needs only FUSE and Linux 6.12.

The device is read with direct I/O: each read is one EROFS read (sized by EROFS's own
readahead within a file), never the device file's readahead running into other files' chunks.
What the FUSE path does that this one cannot: whole files on open and the per-file sequential
window (the daemon sees no files, only device reads), and the API's per-file metrics.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time

import pyfuse3

from daemon.chunks import ChunkSource
from daemon.erofs_mount import mount_erofs, unmount
from daemon.mount import ImageMount
from daemon.mountpoint import mounts_at
from daemon.readahead import Readahead
from daemon.timeline import Timeline
from daemon.trace import AccessTrace
from rafs.bootstrap import Bootstrap
from rafs.erofs import DeviceMap, layout_tag, read_tag, write_erofs
from rafs.errors import MountError, NydusError
from rafs.outputs import atomic_file
from rafs.records import ChunkSlice

log = logging.getLogger(__name__)

DEVICE_NAME = b"device"
DEVICE_INO = pyfuse3.ROOT_INODE + 1
TIMEOUT_S = float(1 << 32)  # nothing under this mount ever changes


def metadata_path(bootstrap_path: str, work_dir: str) -> tuple[str, bytes]:
    """Where the EROFS metadata of `bootstrap_path` is kept in `work_dir`, and the `layout_tag`
    it must carry to be used: the file is named by the tag, so one hash of the bootstrap does."""
    with open(bootstrap_path, "rb") as file:
        tag = layout_tag(file.read())
    return os.path.join(work_dir, f"{tag.hex()}.erofs"), tag


def write_metadata(bootstrap: Bootstrap, device: DeviceMap, path: str, tag: bytes) -> None:
    """Write the EROFS metadata naming `device` as its extra device to `path` (atomically)."""
    with atomic_file(path) as file:
        file.write(write_erofs(bootstrap, device, data_device=1, tag=tag))


class ChunkOwners:
    """Which file (and which of its chunks) a device chunk belongs to, for `--trace-out`: the
    first file, in walk order, that holds it. Made once, when a trace is asked for."""

    def __init__(self, bootstrap: Bootstrap) -> None:
        self.paths: dict[int, bytes] = {}
        self._owner: dict[tuple[int, int], tuple[int, int]] = {}
        for path, ino in bootstrap.walk():
            inode = bootstrap.inode(ino)
            if not inode.is_reg or ino in self.paths:
                continue
            self.paths[ino] = path
            for position in range(inode.data_count):
                record = bootstrap.chunk(inode.data_start + position)
                self._owner.setdefault((record.blob_index, record.compressed_offset), (ino, position))

    def owner(self, bootstrap: Bootstrap, chunk_index: int) -> tuple[int, int] | None:
        record = bootstrap.chunk(chunk_index)
        return self._owner.get((record.blob_index, record.compressed_offset))


class DeviceReader:
    """Device bytes [offset, offset+size): the chunks' slices from the `ChunkSource`, the
    padding between them as zeros."""

    def __init__(
        self,
        bootstrap: Bootstrap,
        device: DeviceMap,
        chunks: ChunkSource,
        readahead: Readahead,
        *,
        trace: AccessTrace | None = None,
        timeline: Timeline | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.device = device
        self.chunks = chunks
        self.readahead = readahead
        self.trace = trace
        self.timeline = timeline
        self._owners = ChunkOwners(bootstrap) if trace is not None else None

    async def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.device.size)
        if end <= offset:
            return b""
        pieces = self.device.pieces(offset, end - offset)
        slices = [
            ChunkSlice(chunk.chunk_index, self.bootstrap.chunk(chunk.chunk_index), start, length)
            for chunk, start, length in pieces
        ]
        self.readahead.used(slices)
        parts = await self.chunks.read(slices)
        if self.trace is not None:
            self._note(slices)
        if self.timeline is not None:
            self.timeline.read_done(DEVICE_INO, offset, end - offset)
        if len(parts) == 1 and len(parts[0]) == end - offset:
            return parts[0]
        out = bytearray(end - offset)
        for (chunk, start, length), part in zip(pieces, parts, strict=True):
            at = chunk.start + start - offset
            out[at : at + length] = part
        return bytes(out)

    def _note(self, slices: list[ChunkSlice]) -> None:
        assert self.trace is not None and self._owners is not None
        owners = self._owners
        for piece in slices:
            owner = owners.owner(self.bootstrap, piece.chunk_index)
            if owner is not None:
                ino, position = owner
                chunk_size = self.bootstrap.chunk_size
                self.trace.read(ino, position * chunk_size + piece.start, piece.length, owners.paths.get)


class DeviceOperations(pyfuse3.Operations):
    """A read-only FUSE tree of one file, the data device."""

    enable_writeback_cache = False

    def __init__(self, reader: DeviceReader) -> None:
        super().__init__()
        self.reader = reader

    def _attributes(self, ino: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        if ino == pyfuse3.ROOT_INODE:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFDIR | 0o555, 2, 0
        elif ino == DEVICE_INO:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFREG | 0o444, 1, self.reader.device.size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_blksize = 4096
        attr.st_blocks = -(-attr.st_size // 512)
        attr.entry_timeout = attr.attr_timeout = TIMEOUT_S
        return attr

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE and name == DEVICE_NAME:
            return self._attributes(DEVICE_INO)
        if parent_inode == pyfuse3.ROOT_INODE and name in (b".", b".."):
            return self._attributes(pyfuse3.ROOT_INODE)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, DEVICE_NAME, self._attributes(DEVICE_INO), 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != DEVICE_INO:
            raise pyfuse3.FUSEError(errno.EISDIR if inode == pyfuse3.ROOT_INODE else errno.ENOENT)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        # Direct I/O: the kernel hands each EROFS read to us as it is, sized by EROFS's own
        # readahead within one file. Through the page cache, the device file's readahead would
        # run on past the file's last chunk into its neighbours on the device, and every
        # byte would be cached twice (as the device's page and as the file's).
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return await self.reader.read(off, size)
        except NydusError as error:
            log.error("device read [%d, +%d) failed: %s: %s", off, size, type(error).__name__, error)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("device read [%d, +%d): unexpected error", off, size)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        stats = pyfuse3.StatvfsData()
        stats.f_bsize = stats.f_frsize = 4096
        stats.f_blocks = self.reader.device.size // 4096
        stats.f_files = 2
        stats.f_namemax = 255
        return stats


class ErofsServing:
    """One image served the EROFS way: its metadata file, the private directory where the
    device is mounted over FUSE, and the EROFS mount on the caller's mountpoint."""

    def __init__(
        self,
        bootstrap_path: str,
        mount: ImageMount,
        mountpoint: str,
        timeline: Timeline | None,
        shipped: str | None = None,
    ) -> None:
        """Cheap (the device's layout, 0.02-0.03 s for 36,000 chunks); `mount` writes the metadata."""
        self.mountpoint = mountpoint
        self.bootstrap = mount.bootstrap
        self.scratch: str | None = None
        self.device_dir = ""
        self.mounted = False
        work_dir = mount.config.cache.work_dir if mount.config.cache.type == "blobcache" else ""
        if not work_dir:
            work_dir = self.scratch = tempfile.mkdtemp(prefix="nydusd-erofs-")
        try:
            self._prepare(bootstrap_path, mount, work_dir, timeline, shipped)
        except BaseException:
            self.close()
            raise

    def _prepare(
        self, bootstrap_path: str, mount: ImageMount, work_dir: str, timeline: Timeline | None, shipped: str | None
    ) -> None:
        self.device_map = DeviceMap(mount.bootstrap)
        self.work_dir = os.path.abspath(work_dir)
        self.metadata, self.tag = metadata_path(bootstrap_path, work_dir)
        if shipped is not None and read_tag(shipped) == self.tag:
            self.metadata = shipped  # written with the image by `nydusify convert`
            log.info("EROFS metadata from the image's bootstrap layer: %s", shipped)
        name = hashlib.sha256(os.fsencode(self.mountpoint)).hexdigest()[:16]
        self.device_dir = os.path.join(work_dir, f"erofs-device-{name}")
        os.makedirs(self.device_dir, exist_ok=True)
        self.device_file = os.path.join(self.device_dir, os.fsdecode(DEVICE_NAME))
        reader = DeviceReader(
            mount.bootstrap, self.device_map, mount.chunks, mount.readahead, trace=mount.trace, timeline=timeline
        )
        self.operations = DeviceOperations(reader)

    def clear_stale(self) -> None:
        """After the device directory was cleared of a dead daemon's FUSE mount: its EROFS mount
        on the mountpoint (our metadata, now without a device) is cleared too."""
        for entry in reversed(mounts_at(self.mountpoint)):
            if entry.fstype == "erofs" and os.path.commonpath([entry.source, self.work_dir]) == self.work_dir:
                log.warning("clearing the EROFS mount at %s left by a previous daemon", self.mountpoint)
                unmount(self.mountpoint, lazy=True)

    def mount(self) -> None:
        """Blocking, in a thread while the FUSE loop and the fetch workers run: write the metadata
        unless the work directory has it (1.3 s for a 40,000-file image, during which prefetch
        is already fetching), then mount; the kernel opens the device over FUSE."""
        if read_tag(self.metadata) != self.tag:  # missing, or written for another layout
            started = time.monotonic()
            write_metadata(self.bootstrap, self.device_map, self.metadata, self.tag)
            log.info("wrote EROFS metadata %s in %.2f s", self.metadata, time.monotonic() - started)
        mount_erofs(self.metadata, self.mountpoint, self.device_file)
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            try:
                unmount(self.mountpoint)
            except MountError:
                log.warning("%s is busy: detached, the kernel lets go of it when unused", self.mountpoint)
                unmount(self.mountpoint, lazy=True)
            self.mounted = False

    def close(self) -> None:
        if self.device_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self.device_dir)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
