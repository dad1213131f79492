"""The backend interface: "bytes a..b of blob X", nothing about files, FUSE or the event loop.

Every backend (localfs, http, registry) implements `BlobBackend` and raises only
`BackendError` subclasses, so the read path maps every failure to one errno without knowing
which backend is behind it. Backends are synchronous and thread-safe: the daemon calls them
from worker threads.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from rafs.errors import BackendError as BackendError  # the branch root, part of this interface


class BlobNotFound(BackendError):
    """The backend has no blob of that id."""


class RangeNotSatisfied(BackendError):
    """The blob is shorter than the range asked for (truncated or wrong blob)."""


class AuthError(BackendError):
    """The backend refused our credentials."""


class TransientError(BackendError):
    """A failure that may pass if retried (timeout, reset connection, 5xx)."""


class BlobBackend(Protocol):
    """Where blobs live. Implementations must be safe to call from several threads at once."""

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        """Exactly `length` bytes of blob `blob_id` from `offset`, or a `BackendError`."""
        ...

    def blob_size(self, blob_id: str) -> int:
        """The blob's size in bytes, or `BlobNotFound`."""
        ...

    def close(self) -> None:
        """Release files and connections; later calls may fail."""
        ...


@runtime_checkable
class MirrorWarming(Protocol):
    """A backend reading through pull-through mirrors, which it can ask to start caching a blob."""

    def warm_mirrors(self, blob_id: str) -> None:
        """Ask the mirrors about the blob once (blocking for that question only, never for the
        caching); a mirror that has not cached it starts."""
        ...


def check_blob_id(blob_id: str) -> None:
    """Refuse ids that are not a sha256 hex digest, so no id can name a path outside a store."""
    if len(blob_id) != 64 or any(c not in "0123456789abcdef" for c in blob_id):
        raise BlobNotFound(f"invalid blob id {blob_id!r}")
