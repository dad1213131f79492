"""The snapshotter's errors. Each leaf is one of containerd's error kinds (`errdefs`), which the
gRPC service turns into the code containerd expects (`service.GRPC_CODES`)."""

from __future__ import annotations

from rafs.errors import ConfigError, SnapshotterError


class SnapshotNotFound(SnapshotterError):
    """No snapshot by that key or name (NOT_FOUND)."""


class SnapshotExists(SnapshotterError):
    """The key or name is taken, or a remote snapshot already stands for the layer (ALREADY_EXISTS)."""


class SnapshotInUse(SnapshotterError):
    """The snapshot is in a state that forbids the request: it has children, or is not active (FAILED_PRECONDITION)."""


class InvalidSnapshotRequest(SnapshotterError):
    """A request containerd should never send: a parent that is not committed, an unknown field (INVALID_ARGUMENT)."""


class MissingImageReference(SnapshotterError):
    """A Nydus image whose snapshot labels do not say which registry to read from (FAILED_PRECONDITION)."""


class DaemonStartFailed(SnapshotterError):
    """nydusd did not reach RUNNING, or refused the image (UNAVAILABLE)."""


class SnapshotterConfigError(ConfigError):
    """The snapshotter's TOML config or command line names something it cannot use."""
