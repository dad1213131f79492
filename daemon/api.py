"""The API's routes (Nydus's `/api/v1/...`, field names as Nydus's), over a running `Daemon`.

Each route is a small method that reads the daemon and returns JSON; what may block (opening an
image, statting cache files) runs in a worker thread, so no request stalls the FUSE loop. The
table is `docs/api.md`. Errors are `ApiError`s: `{"code": ..., "message": ...}` with a 4xx/5xx.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from daemon.apiserver import ApiError, Request, Response
from daemon.logs import set_log_level
from rafs.errors import ConfigError
from rafs.pathlist import whole_files

if TYPE_CHECKING:
    from daemon.serve import Daemon

Route = Callable[[Request], Awaitable[Response]]


def _object(request: Request) -> dict[str, object]:
    body = request.json()
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidBody", "request body must be a JSON object")
    return body


def _string(body: dict[str, object], key: str, *, required: bool = True) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or (required and not value):
        raise ApiError(400, "InvalidBody", f"{key}: a string is required")
    return value


class Api:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.routes: dict[str, dict[str, Route]] = {
            "/api/v1/daemon": {"GET": self.get_daemon, "PUT": self.put_daemon},
            "/api/v1/daemon/events": {"GET": self.get_events},
            "/api/v1/daemon/backend": {"GET": self.get_backend_info},
            "/api/v1/daemon/start": {"PUT": self.put_start},
            "/api/v1/daemon/exit": {"PUT": self.put_exit},
            "/api/v1/daemon/fuse/sendfd": {"PUT": self.takeover},
            "/api/v1/daemon/fuse/takeover": {"PUT": self.takeover},
            "/api/v1/mount": {"POST": self.post_mount, "PUT": self.put_mount, "DELETE": self.delete_mount},
            "/api/v1/metrics": {"GET": self.get_metrics},
            "/api/v1/metrics/files": {"GET": self.get_files},
            "/api/v1/metrics/pattern": {"GET": self.get_pattern},
            "/api/v1/metrics/backend": {"GET": self.get_backend},
            "/api/v1/metrics/blobcache": {"GET": self.get_blobcache},
            "/api/v1/metrics/inflight": {"GET": self.get_inflight},
        }

    async def handle(self, request: Request) -> Response:
        methods = self.routes.get(request.path.rstrip("/") or "/")
        if methods is None:
            raise ApiError(404, "NotFound", f"no route {request.path}")
        route = methods.get(request.method)
        if route is None:
            raise ApiError(405, "MethodNotAllowed", f"{request.method} {request.path}: use {', '.join(methods)}")
        return await route(request)

    # -- the daemon -------------------------------------------------------------------------------

    async def get_daemon(self, request: Request) -> Response:
        await trio.to_thread.run_sync(self._warm_version)
        return Response(200, self.daemon.info())

    @staticmethod
    def _warm_version() -> None:
        from daemon.version import git_commit, package_version

        package_version()
        git_commit()

    async def put_daemon(self, request: Request) -> Response:
        level = _string(_object(request), "log_level")
        try:
            set_log_level(level)
        except ConfigError as error:
            raise ApiError(400, "InvalidLogLevel", str(error)) from None
        return Response(204)

    async def get_events(self, request: Request) -> Response:
        return Response(200, self.daemon.events.report())

    async def get_backend_info(self, request: Request) -> Response:
        return Response(200, self.daemon.mount_for(request.query.get("mountpoint")).backend_info())

    async def put_start(self, request: Request) -> Response:
        if self.daemon.state != "RUNNING":
            raise ApiError(409, "NotReady", f"daemon is {self.daemon.state}")
        return Response(204)

    async def put_exit(self, request: Request) -> Response:
        """Answered first, then the daemon unmounts and exits 0."""
        return Response(204, after=self.daemon.request_exit)

    async def takeover(self, request: Request) -> Response:
        raise ApiError(501, "NotImplemented", "takeover (hot upgrade, failover) is not implemented by this daemon")

    # -- shared mode ------------------------------------------------------------------------------

    def _mountpoint(self, request: Request) -> str:
        mountpoint = request.query.get("mountpoint", "")
        if not mountpoint:
            raise ApiError(400, "InvalidMountpoint", "?mountpoint=/name is required")
        return mountpoint

    async def _mount(self, request: Request, *, remount: bool) -> Response:
        mountpoint = self._mountpoint(request)
        body = _object(request)
        fs_type = _string(body, "fs_type", required=False) or "rafs"
        if fs_type != "rafs":
            raise ApiError(400, "UnsupportedFsType", f"fs_type {fs_type!r}: only 'rafs' is served")
        source = _string(body, "source")
        config = _string(body, "config", required=False)
        prefetch = body.get("prefetch_files")
        if prefetch is not None and (
            not isinstance(prefetch, list) or not all(isinstance(path, str) for path in prefetch)
        ):
            raise ApiError(400, "InvalidBody", "prefetch_files: a list of paths is required")
        files = whole_files(tuple(path.encode() for path in prefetch)) if prefetch is not None else None
        await self.daemon.mount(mountpoint, source, config, files, remount=remount)
        return Response(204)

    async def post_mount(self, request: Request) -> Response:
        return await self._mount(request, remount=False)

    async def put_mount(self, request: Request) -> Response:
        return await self._mount(request, remount=True)

    async def delete_mount(self, request: Request) -> Response:
        await self.daemon.umount(self._mountpoint(request))
        return Response(204)

    # -- metrics ----------------------------------------------------------------------------------

    async def get_metrics(self, request: Request) -> Response:
        return Response(200, self.daemon.mount_for(request.query.get("id")).metrics.report())

    async def get_files(self, request: Request) -> Response:
        metrics = self.daemon.mount_for(request.query.get("id")).metrics
        if request.query.get("latest", "").lower() == "true":
            if not metrics.latest_read_files_enabled:
                raise ApiError(400, "NotEnabled", "files read since the last call: set latest_read_files in the config")
            return Response(200, metrics.take_latest())
        if not metrics.files_enabled:
            raise ApiError(400, "NotEnabled", "per-file metrics: set iostats_files in the config")
        return Response(200, metrics.files_report())

    async def get_pattern(self, request: Request) -> Response:
        metrics = self.daemon.mount_for(request.query.get("id")).metrics
        if not metrics.access_pattern_enabled:
            raise ApiError(400, "NotEnabled", "access pattern: set access_pattern in the config")
        return Response(200, metrics.pattern_report())

    async def get_backend(self, request: Request) -> Response:
        return Response(200, self.daemon.mount_for(request.query.get("id")).backend_metrics.report())

    async def get_blobcache(self, request: Request) -> Response:
        mount = self.daemon.mount_for(request.query.get("id"))
        return Response(200, await trio.to_thread.run_sync(mount.blobcache_report))

    async def get_inflight(self, request: Request) -> Response:
        return Response(200, self.daemon.inflight.report())
