"""`AccessTrace`: the paths of regular files in the order they were first opened.

Written one path a line, flushed as it goes, so the file is usable even after a crash; it is
exactly what `nydus-image create --prefetch-files` reads to put those files first in a blob.
A path that cannot be resolved (the kernel opened an inode whose name the daemon never saw)
is skipped. Stdlib only; called from the event loop, and each line is one small write.
"""

from __future__ import annotations

import logging
from typing import IO

log = logging.getLogger(__name__)


class AccessTrace:
    """Appends each file's path to `path` the first time the file is opened."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: set[int] = set()
        self._file: IO[bytes] | None = open(path, "wb")  # noqa: SIM115 (open as long as the mount)

    def record(self, ino: int, path: bytes | None) -> None:
        """Note an access to inode `ino`, found under `path` (absolute, or None if unknown)."""
        if ino in self._seen or path is None or self._file is None:
            return
        self._seen.add(ino)
        try:
            self._file.write(path + b"\n")
            self._file.flush()
        except OSError as error:
            log.error("access trace %s: %s; tracing stopped", self.path, error.strerror)
            self.close()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
