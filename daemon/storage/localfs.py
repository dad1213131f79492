"""`LocalFsBackend`: blobs as files named by their id in one directory (Nydus's `localfs`).

One read-only descriptor per blob, opened on first use and shared by all threads through
`os.pread`, which has no file position to race on.
"""

from __future__ import annotations

import errno
import os
import threading

from daemon.storage.backend import BackendError, BlobNotFound, RangeNotSatisfied, check_blob_id


class LocalFsBackend:
    """Serves `dir/<blob_id>`; implements `daemon.storage.backend.BlobBackend`."""

    def __init__(self, directory: str) -> None:
        if not os.path.isdir(directory):
            raise BlobNotFound(f"blob directory {directory} does not exist")
        self.directory = directory
        self._descriptors: dict[str, int] = {}
        self._lock = threading.Lock()

    def _descriptor(self, blob_id: str) -> int:
        check_blob_id(blob_id)
        with self._lock:
            found = self._descriptors.get(blob_id)
            if found is not None:
                return found
            try:
                descriptor = os.open(os.path.join(self.directory, blob_id), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise BlobNotFound(f"not in {self.directory}", blob_id=blob_id) from None
            except OSError as error:
                raise BackendError(f"cannot open: {error.strerror}", blob_id=blob_id) from None
            self._descriptors[blob_id] = descriptor
            return descriptor

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        descriptor = self._descriptor(blob_id)
        parts: list[bytes] = []
        position, remaining = offset, length
        while remaining:
            try:
                part = os.pread(descriptor, remaining, position)
            except OSError as error:
                if error.errno == errno.EINTR:
                    continue
                raise BackendError(f"read failed: {error.strerror}", blob_id=blob_id) from None
            except OverflowError:  # an offset no file can have (a corrupt chunk record)
                raise RangeNotSatisfied(f"range [{offset}, +{length}) beyond any file", blob_id=blob_id) from None
            if not part:
                raise RangeNotSatisfied(f"range [{offset}, +{length}) beyond the end at {position}", blob_id=blob_id)
            parts.append(part)
            position += len(part)
            remaining -= len(part)
        return b"".join(parts)

    def blob_size(self, blob_id: str) -> int:
        return os.fstat(self._descriptor(blob_id)).st_size

    def close(self) -> None:
        with self._lock:
            for descriptor in self._descriptors.values():
                os.close(descriptor)
            self._descriptors.clear()
