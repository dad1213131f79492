"""`serve`: the daemon's life: open, mount, answer FUSE and API requests until told to stop, unmount.

Two modes, as Nydus's nydusd: with a bootstrap, the FUSE mount is that one image (`ImageMount`
at id "/"); without one (shared mode), it is an empty root into which `POST /api/v1/mount`
places images as subdirectories (`daemon.shared`). The API socket (`--apisock`) is bound before
anything else, so the snapshotter can watch `state` go from INIT to RUNNING; everything else
that can fail (bootstrap, config, backend, cache directory, stale mount) is done before
`pyfuse3.init` mounts, so the mountpoint appears only when the daemon can serve it.

SIGINT, SIGTERM and `PUT /api/v1/daemon/exit` stop the FUSE loop (a signal repeated while it
stops is ignored); requests still waiting on a backend get a short grace period and are then
cancelled, and the filesystem is unmounted on every exit path Python controls. A daemon killed
outright leaves a stale mount that the next start clears (`daemon.mountpoint`) and a stale
socket that the next start replaces.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from functools import partial

import pyfuse3
import trio

from daemon.apiserver import ApiError, ApiSocket, serve_api
from daemon.config import DaemonConfig, parse_config
from daemon.erofs_device import ErofsServing
from daemon.metrics import ErrorEvents, Inflight
from daemon.mount import ImageMount, MountOptions, open_image
from daemon.mountpoint import mounts_at, prepare_mountpoint
from daemon.shared import SLOT_SHIFT, SharedOperations, check_mount_name
from daemon.storage.backend import BlobBackend
from daemon.timeline import Timeline
from rafs.errors import ConfigError, NydusError
from rafs.pathlist import PrefetchEntry

log = logging.getLogger(__name__)

# The kernel's largest FUSE request (FUSE_MAX_MAX_PAGES = 256 pages since Linux 4.20).
MAX_READ_BYTES = 1 << 20
STOP_GRACE_S = 2.0
MAX_FUSE_TASKS = 128
UNMOUNT_DRAIN_S = 2.0
FAILOVER_POLICIES = ("resend", "flush", "none")


@dataclass(frozen=True)
class ServeOptions:
    bootstrap: str | None  # None: shared mode (images come through the API)
    mountpoint: str
    config: DaemonConfig | None  # shared mode: the default for API mounts that bring none
    allow_other: bool = True
    prefetch_files: tuple[PrefetchEntry, ...] | None = None  # `--prefetch-files`: overrides the bootstrap's table
    trace_out: str | None = None  # `--trace-out`: first-access order of files
    timeline_out: str | None = None  # `--timeline-out`: requests and blocked reads, for benchmarks
    started_at: float = 0.0  # when the process began (time.time()), for the timeline
    apisock: str | None = None  # `--apisock`: the API's unix socket
    daemon_id: str | None = None  # `--id`: reported by the API
    fuse_tasks: int = MAX_FUSE_TASKS  # `--thread-num`: FUSE requests answered at once
    failover_policy: str = "resend"  # `--failover-policy`: recorded; applies only to takeover
    erofs_metadata: str | None = None  # `--image`: EROFS metadata that came with the bootstrap, if any


def mount_options(allow_other: bool) -> set[str]:
    """Kernel permission checks and read-only.

    No `max_read=`: libfuse refuses it unless `init()` sets the same value, which pyfuse3
    cannot. Without it the kernel's limit is `max_pages`, which libfuse already negotiates at
    its maximum (1 MiB requests); `raise_readahead` lets sequential reads use them.
    """
    options = {"default_permissions", "ro", "fsname=nydusd", "subtype=rafs"}
    if allow_other:
        options.add("allow_other")
    return options


def raise_readahead(mountpoint: str) -> None:
    """Let sequential reads reach the daemon in 1 MiB requests (the kernel default is 128 KiB).

    Only once the kernel's INIT has been answered (the `stat` waits for it): the knob set
    earlier is overwritten by INIT's negotiation.
    """
    os.stat(mountpoint)
    for entry in mounts_at(mountpoint):
        path = f"/sys/class/bdi/{entry.device}/read_ahead_kb"
        try:
            with open(path, "w", encoding="ascii") as knob:
                knob.write(str(MAX_READ_BYTES // 1024))
        except OSError as error:
            log.debug("cannot raise readahead via %s: %s", path, error)


class Daemon:
    """The running daemon as the API sees it: state, mounts, in-flight requests, error events."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.state = "INIT"
        self.inflight = Inflight()
        self.events = ErrorEvents()
        self.mounts: dict[str, ImageMount] = {}  # by id: "/" or "/sub"
        self.shared = SharedOperations() if options.bootstrap is None else None
        self.stop_requested = trio.Event()
        self.nursery: trio.Nursery | None = None  # set by `serve`: where mounts run
        self._mount_lock = trio.Lock()  # one mount change at a time (each opens files in a thread)

    # -- starting and stopping ------------------------------------------------------------------

    def open_single(self, backend: BlobBackend | None, timeline: Timeline | None) -> ImageMount:
        assert self.options.bootstrap is not None and self.options.config is not None
        options = MountOptions(
            id="/", prefetch_files=self.options.prefetch_files, trace_out=self.options.trace_out, timeline=timeline
        )
        mount = open_image(self.options.bootstrap, self.options.config, options, self.inflight, backend=backend)
        self.mounts["/"] = mount
        return mount

    def request_exit(self) -> None:
        self.stop_requested.set()

    async def stop_when_asked(self, scope: trio.CancelScope) -> None:
        """Stop the FUSE loop on SIGINT/SIGTERM or `request_exit`; cancel what lingers after a grace period."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals)
            await self.stop_requested.wait()
            nursery.cancel_scope.cancel()
        self.state = "STOPPING"
        pyfuse3.terminate()
        await trio.sleep(STOP_GRACE_S)
        log.warning("requests still pending after %.0f s: cancelling them", STOP_GRACE_S)
        scope.cancel()

    async def _signals(self) -> None:
        """The first SIGINT or SIGTERM asks the daemon to stop; any later one is ignored.

        A supervisor may signal again while the daemon stops (its process group, then the
        process). The default action would kill it half-way through unmounting and writing its
        outputs, leaving a dead mount; so what the receiver restores when it closes is SIG_IGN.
        """
        for stopping in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stopping, signal.SIG_IGN)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s: unmounting", signal.Signals(signum).name)
                self.request_exit()
                return

    def close_all(self) -> None:
        for mount in self.mounts.values():
            mount.stop()
            mount.close()
        self.mounts.clear()

    # -- what the API reads ----------------------------------------------------------------------

    def info(self) -> dict[str, object]:
        from daemon.version import version_info

        return {
            "id": self.options.daemon_id,
            "version": version_info(),
            "supervisor": None,
            "state": self.state,
            "failover_policy": self.options.failover_policy,
            "backend_collection": {mount_id: mount.backend_info() for mount_id, mount in sorted(self.mounts.items())},
        }

    def mount_for(self, mount_id: str | None) -> ImageMount:
        """The mount of metrics `id` (the only one when `id` is left out)."""
        if mount_id is None or mount_id == "":
            if len(self.mounts) == 1:
                return next(iter(self.mounts.values()))
            known = ", ".join(sorted(self.mounts)) or "none"
            raise ApiError(404, "NoCounter", f"give ?id= (a mountpoint); mounted: {known}")
        mount = self.mounts.get(mount_id)
        if mount is None:
            raise ApiError(404, "NoCounter", f"nothing is mounted at {mount_id!r}")
        return mount

    # -- shared mode: mounting through the API ---------------------------------------------------

    def _shared(self) -> SharedOperations:
        if self.shared is None:
            raise ApiError(400, "NotSharedMode", "this daemon serves one image (--bootstrap); start it without one")
        return self.shared

    def _mount_config(self, text: str) -> DaemonConfig:
        if not text:
            if self.options.config is None:
                raise ConfigError("mount: no config given, and the daemon was started without --config")
            return self.options.config
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"mount: config is not JSON: {error}") from None
        return parse_config(data)

    def _open_for_api(
        self,
        mountpoint: str,
        source: str,
        config_text: str,
        prefetch_files: tuple[PrefetchEntry, ...] | None,
        slot: int,
    ) -> ImageMount:
        """In a worker thread: the image opened, and its backend asked for one blob's size so
        that an unreachable backend fails the mount, not the container's first read."""
        config = self._mount_config(config_text)
        if config.fs_driver != "fusedev":
            raise ConfigError(f"fs_driver {config.fs_driver!r} serves one image a daemon (--bootstrap or --image)")
        options = MountOptions(id=mountpoint, prefetch_files=prefetch_files, ino_base=slot << SLOT_SHIFT)
        mount = open_image(source, config, options, self.inflight)
        try:
            if mount.bootstrap.blobs:
                mount.backend.blob_size(mount.bootstrap.blobs[0].blob_id)
        except BaseException:
            mount.close()
            raise
        return mount

    async def mount(
        self,
        mountpoint: str,
        source: str,
        config_text: str,
        prefetch_files: tuple[PrefetchEntry, ...] | None,
        *,
        remount: bool,
    ) -> None:
        shared = self._shared()
        try:
            name = check_mount_name(mountpoint)
        except ValueError as error:
            raise ApiError(400, "InvalidMountpoint", str(error)) from None
        async with self._mount_lock:
            if remount and name not in shared.by_name:
                raise ApiError(404, "NotMounted", f"nothing is mounted at {mountpoint}")
            if not remount and name in shared.by_name:
                raise ApiError(409, "AlreadyMounted", f"{mountpoint} is already mounted; PUT remounts it")
            slot = shared.reserve_slot()
            try:
                mount = await trio.to_thread.run_sync(
                    self._open_for_api, mountpoint, source, config_text, prefetch_files, slot
                )
            except ConfigError as error:
                raise ApiError(400, "InvalidConfig", f"mount {mountpoint}: {error}") from None
            except (NydusError, OSError) as error:
                log.error("mount %s of %s failed: %s", mountpoint, source, error)
                raise ApiError(500, "MountFailed", f"mount {mountpoint}: {error}") from None
            assert self.nursery is not None
            await self.nursery.start(mount.run)
            old = shared.add(name, slot, mount)
            self.mounts[mountpoint] = mount
            log.info("%s %s at %s (%d inodes)", "remounted" if old else "mounted", source, mountpoint,
                     mount.bootstrap.inode_count)  # fmt: skip
            if old is not None:
                await self._retire(old)

    async def umount(self, mountpoint: str) -> None:
        shared = self._shared()
        async with self._mount_lock:
            mount = shared.remove(mountpoint.removeprefix("/"))
            if mount is None:
                raise ApiError(404, "NotMounted", f"nothing is mounted at {mountpoint}")
            del self.mounts[mountpoint]
            log.info("unmounted %s (%s)", mountpoint, mount.chunks.stats)
            await self._retire(mount)

    async def _retire(self, mount: ImageMount) -> None:
        """Stop a mount taken out of the table: its tasks now, its files once its requests are answered."""
        mount.stop()
        base = mount.options.ino_base
        with trio.move_on_after(UNMOUNT_DRAIN_S):
            while any(entry["inode"] >> SLOT_SHIFT == base >> SLOT_SHIFT for entry in self.inflight.report()):
                await trio.sleep(0.01)
        await trio.to_thread.run_sync(mount.close)


async def serve(
    options: ServeOptions,
    *,
    backend: BlobBackend | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `options` until unmounted, signalled or asked to exit over the API."""
    from daemon.api import Api

    daemon = Daemon(options)
    timeline = Timeline(options.started_at or time.time()) if options.timeline_out else None
    api_socket = ApiSocket.bind(options.apisock) if options.apisock else None
    logging.getLogger().addHandler(daemon.events)
    mounted = False
    erofs: ErofsServing | None = None
    failure: NydusError | None = None  # what stopped the EROFS mount
    mountpoint = os.path.abspath(options.mountpoint)
    try:
        # Everything that can fail is done before the nursery, so it fails as itself, not in a group.
        single = daemon.open_single(backend, timeline) if daemon.shared is None else None
        operations: pyfuse3.Operations
        fuse_at = mountpoint  # where the FUSE mount goes: the mountpoint, or EROFS's device directory
        if single is not None and single.config.fs_driver == "erofs":
            assert options.bootstrap is not None
            erofs = ErofsServing(options.bootstrap, single, mountpoint, timeline, options.erofs_metadata)
            operations, fuse_at = erofs.operations, erofs.device_dir
        elif single is not None:
            operations = single.operations
        else:
            assert daemon.shared is not None
            operations = daemon.shared
        prepare_mountpoint(fuse_at)
        if erofs is not None:
            erofs.clear_stale()
            prepare_mountpoint(mountpoint)
        pyfuse3.init(operations, fuse_at, mount_options(options.allow_other))
        mounted = True
        if options.failover_policy != "none":
            log.debug("failover policy %s: applies to takeover, which this daemon does not do", options.failover_policy)
        async with trio.open_nursery() as nursery:
            daemon.nursery = nursery

            async def answer_fuse_requests() -> None:
                await pyfuse3.main(max_tasks=options.fuse_tasks)
                nursery.cancel_scope.cancel()

            if single is not None:
                await nursery.start(single.run)
            nursery.start_soon(answer_fuse_requests)
            if erofs is not None:  # the kernel opens the device while mounting: FUSE must be answering
                try:
                    await trio.to_thread.run_sync(erofs.mount)
                except NydusError as error:  # raised as itself once the nursery has wound down
                    failure = error
                    nursery.cancel_scope.cancel()
            if failure is None:  # mounted: say so, and start what serves beside the FUSE loop
                if timeline is not None:
                    timeline.mounted()
                if single is not None:
                    log.info("mounted %s at %s (%d inodes, %d blobs%s)", options.bootstrap, mountpoint,
                             single.bootstrap.inode_count, len(single.bootstrap.blobs),
                             ", EROFS over the device at " + fuse_at if erofs is not None else "")  # fmt: skip
                else:
                    log.info(
                        "serving an empty root at %s (shared mode: images are mounted through the API)", mountpoint
                    )
                daemon.state = "RUNNING"
                if api_socket is not None:
                    nursery.start_soon(serve_api, api_socket, Api(daemon).handle)
                task_status.started()
                nursery.start_soon(daemon.stop_when_asked, nursery.cancel_scope)
                nursery.start_soon(partial(trio.to_thread.run_sync, raise_readahead, fuse_at, abandon_on_cancel=True))
        if failure is not None:
            raise failure
    finally:
        daemon.state = "STOPPED"
        if erofs is not None:
            erofs.unmount()
        if mounted:
            pyfuse3.close(unmount=True)
        if erofs is not None:
            erofs.close()
        stats = {mount_id: mount.chunks.stats for mount_id, mount in daemon.mounts.items()}
        daemon.close_all()
        if api_socket is not None:
            api_socket.close()
        logging.getLogger().removeHandler(daemon.events)
        if timeline is not None and options.timeline_out:
            timeline.write(options.timeline_out)
        if mounted:
            log.info("unmounted %s (%s)", mountpoint, stats.get("/", stats))
