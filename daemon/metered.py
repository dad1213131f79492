"""`MeteredOperations`: `RafsOperations` that count every request for the API.

A subclass, so `daemon.fs` stays a thin translator that knows nothing of metrics: each handler
here notes the request as in flight, awaits the real one and files its outcome and latency in
the mount's `FsMetrics`. `ino_base` is added to inode numbers reported as in flight, so that in
shared mode they are the numbers the kernel knows (see `daemon.shared`).
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import pyfuse3

from daemon.fs import RafsOperations
from daemon.metrics import Fop, FsMetrics, Inflight
from daemon.reader import FileReader
from daemon.trace import AccessTrace
from rafs.bootstrap import Bootstrap

R = TypeVar("R")


class MeteredOperations(RafsOperations):
    def __init__(
        self,
        bootstrap: Bootstrap,
        reader: FileReader,
        *,
        metrics: FsMetrics,
        inflight: Inflight,
        ino_base: int = 0,
        enable_xattr: bool = True,
        trace: AccessTrace | None = None,
    ) -> None:
        super().__init__(bootstrap, reader, enable_xattr=enable_xattr, trace=trace)
        self.metrics = metrics
        self.inflight = inflight
        self.ino_base = ino_base

    async def measured(self, fop: Fop, ino: int, call: Coroutine[Any, Any, R]) -> R:
        unique = self.inflight.begin(self.ino_base | ino, fop)
        started = time.perf_counter_ns()
        try:
            result = await call
        except BaseException:
            self.metrics.failed(fop, ino, time.perf_counter_ns() - started)
            raise
        finally:
            self.inflight.end(unique)
        self.metrics.done(fop, ino, time.perf_counter_ns() - started)
        return result

    async def read(self, fh: int, off: int, size: int) -> bytes:
        unique = self.inflight.begin(self.ino_base | fh, Fop.READ)
        started = time.perf_counter_ns()
        try:
            data = await super().read(fh, off, size)
        except BaseException:
            self.metrics.failed(Fop.READ, fh, time.perf_counter_ns() - started)
            raise
        finally:
            self.inflight.end(unique)
        self.metrics.read(fh, len(data), time.perf_counter_ns() - started)
        return data

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self.measured(Fop.LOOKUP, parent_inode, super().lookup(parent_inode, name, ctx))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self.measured(Fop.GETATTR, inode, super().getattr(inode, ctx))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.measured(Fop.READLINK, inode, super().readlink(inode, ctx))

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return await self.measured(Fop.STATFS, pyfuse3.ROOT_INODE, super().statfs(ctx))

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return await self.measured(Fop.ACCESS, inode, super().access(inode, mode, ctx))

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.measured(Fop.GETXATTR, inode, super().getxattr(inode, name, ctx))

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return await self.measured(Fop.LISTXATTR, inode, super().listxattr(inode, ctx))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self.measured(Fop.OPENDIR, inode, super().opendir(inode, ctx))

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        await self.measured(Fop.READDIR, fh, super().readdir(fh, start_id, token))

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return await self.measured(Fop.OPEN, inode, super().open(inode, flags, ctx))

    async def release(self, fh: int) -> None:
        await self.measured(Fop.RELEASE, fh, super().release(fh))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        fop = Fop.BATCH_FORGET if len(inode_list) > 1 else Fop.FORGET
        self.metrics.done(fop, inode_list[0][0] if inode_list else 0, 0)
