"""The gRPC face: `containerd.services.snapshots.v1.Snapshots` over a unix socket, translating only.

Requests become `Snapshotter` calls; its errors become the gRPC codes containerd maps back to its
`errdefs` (ALREADY_EXISTS is how the remote-snapshot protocol says "skip this layer"). Handlers
are registered by hand with the protobuf messages' own (de)serialisers, so no generated service
stub is needed. Each call is timed for the metrics endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from daemon.snapshotter.errors import (
    DaemonStartFailed,
    InvalidSnapshotRequest,
    MissingImageReference,
    SnapshotExists,
    SnapshotInUse,
    SnapshotNotFound,
)
from daemon.snapshotter.layout import Mount
from daemon.snapshotter.metrics import OperationTimes
from daemon.snapshotter.proto import mount_pb2, snapshots_pb2
from daemon.snapshotter.snapshotter import Snapshotter
from daemon.snapshotter.store import Snapshot
from rafs.errors import NydusError

log = logging.getLogger(__name__)

SERVICE = "containerd.services.snapshots.v1.Snapshots"
WORKERS = 8

GRPC_CODES: dict[type[NydusError], grpc.StatusCode] = {
    SnapshotNotFound: grpc.StatusCode.NOT_FOUND,
    SnapshotExists: grpc.StatusCode.ALREADY_EXISTS,
    SnapshotInUse: grpc.StatusCode.FAILED_PRECONDITION,
    MissingImageReference: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidSnapshotRequest: grpc.StatusCode.INVALID_ARGUMENT,
    DaemonStartFailed: grpc.StatusCode.UNAVAILABLE,
}

Reply = TypeVar("Reply")


def to_mounts(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in mounts]


def to_timestamp(ns: int) -> timestamp_pb2.Timestamp:
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromNanoseconds(ns)
    return timestamp


def to_info(snapshot: Snapshot) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(
        name=snapshot.name,
        parent=snapshot.parent_name,
        kind=int(snapshot.kind),  # type: ignore[arg-type]
        created_at=to_timestamp(snapshot.created_ns),
        updated_at=to_timestamp(snapshot.updated_ns),
        labels=snapshot.labels,
    )


class SnapshotsService:
    """One method per RPC; `_call` times it and maps errors to codes."""

    def __init__(self, snapshotter: Snapshotter, times: OperationTimes) -> None:
        self.snapshotter = snapshotter
        self.times = times

    def _call(self, operation: str, context: grpc.ServicerContext, body: Callable[[], Reply]) -> Reply:
        started = time.monotonic()
        try:
            return body()
        except NydusError as error:
            code = next((c for kind, c in GRPC_CODES.items() if isinstance(error, kind)), grpc.StatusCode.UNKNOWN)
            level = (
                logging.DEBUG if code in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.NOT_FOUND) else logging.ERROR
            )
            log.log(level, "%s: %s (%s)", operation, error, code.name)
            context.abort(code, str(error))
            raise  # abort raises; this line is never reached
        except Exception as error:
            log.exception("%s failed", operation)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
            raise
        finally:
            self.times.observe(operation, (time.monotonic() - started) * 1000)

    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            mounts = self.snapshotter.prepare(request.key, request.parent, dict(request.labels))
            return snapshots_pb2.PrepareSnapshotResponse(mounts=to_mounts(mounts))

        return self._call("PREPARE", context, body)

    def View(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            mounts = self.snapshotter.view(request.key, request.parent, dict(request.labels))
            return snapshots_pb2.ViewSnapshotResponse(mounts=to_mounts(mounts))

        return self._call("VIEW", context, body)

    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            return snapshots_pb2.MountsResponse(mounts=to_mounts(self.snapshotter.mounts(request.key)))

        return self._call("MOUNTS", context, body)

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            self.snapshotter.commit(request.name, request.key, dict(request.labels))
            return empty_pb2.Empty()

        return self._call("COMMIT", context, body)

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            self.snapshotter.remove(request.key)
            return empty_pb2.Empty()

        return self._call("REMOVE", context, body)

    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            return snapshots_pb2.StatSnapshotResponse(info=to_info(self.snapshotter.stat(request.key)))

        return self._call("STAT", context, body)

    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            paths = list(request.update_mask.paths)
            updated = self.snapshotter.update(request.info.name, dict(request.info.labels), paths)
            return snapshots_pb2.UpdateSnapshotResponse(info=to_info(updated))

        return self._call("UPDATE", context, body)

    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # Filters are not applied: containerd checks what it asked for itself.
        snapshots = self._call("LIST", context, self.snapshotter.walk)
        for start in range(0, len(snapshots), 100):
            yield snapshots_pb2.ListSnapshotsResponse(info=[to_info(s) for s in snapshots[start : start + 100]])

    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            usage = self.snapshotter.usage(request.key)
            return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

        return self._call("USAGE", context, body)

    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body() -> Any:
            self.snapshotter.cleanup()
            return empty_pb2.Empty()

        return self._call("CLEANUP", context, body)


# (method, request type, response type, streams the response)
RPCS: tuple[tuple[str, Any, Any, bool], ...] = (
    ("Prepare", snapshots_pb2.PrepareSnapshotRequest, snapshots_pb2.PrepareSnapshotResponse, False),
    ("View", snapshots_pb2.ViewSnapshotRequest, snapshots_pb2.ViewSnapshotResponse, False),
    ("Mounts", snapshots_pb2.MountsRequest, snapshots_pb2.MountsResponse, False),
    ("Commit", snapshots_pb2.CommitSnapshotRequest, empty_pb2.Empty, False),
    ("Remove", snapshots_pb2.RemoveSnapshotRequest, empty_pb2.Empty, False),
    ("Stat", snapshots_pb2.StatSnapshotRequest, snapshots_pb2.StatSnapshotResponse, False),
    ("Update", snapshots_pb2.UpdateSnapshotRequest, snapshots_pb2.UpdateSnapshotResponse, False),
    ("List", snapshots_pb2.ListSnapshotsRequest, snapshots_pb2.ListSnapshotsResponse, True),
    ("Usage", snapshots_pb2.UsageRequest, snapshots_pb2.UsageResponse, False),
    ("Cleanup", snapshots_pb2.CleanupRequest, empty_pb2.Empty, False),
)


def serve(service: SnapshotsService, address: str) -> grpc.Server:
    """A started gRPC server of `service` on the unix socket `address`."""
    handlers = {}
    for name, request_type, response_type, streams in RPCS:
        make = grpc.unary_stream_rpc_method_handler if streams else grpc.unary_unary_rpc_method_handler
        handlers[name] = make(
            getattr(service, name),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="grpc"))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if server.add_insecure_port(f"unix:{address}") == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server
