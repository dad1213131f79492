"""`AccessTrace`: the chunks of regular files in the order a workload first read them.

Each FUSE read that reaches a chunk not read before appends a line `PATH<TAB>START-END`: the
byte range of those new chunks (a run of them, `chunk_size` each; `rafs.pathlist` owns the
format). So the trace says both which files a start needs and which parts of them, in the order
it needed them: a large library of which the start touches a few pages is listed as those
pages, interleaved with the other files it reads meanwhile. `nydus-image create
--prefetch-files` reads it to put those chunks first in a blob and to write a prefetch chunk
table; the same file given to `nydusd --prefetch-files` prefetches those chunks. Lines are
flushed as they are written, so the file is usable even after a crash. A file that is opened
but never read, or whose path the daemon never saw, is not listed. Stdlib only; called from
the event loop, and each line is one small write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import IO

from rafs.pathlist import entry_line

log = logging.getLogger(__name__)


class AccessTrace:
    """Appends each newly read run of chunks of a file to `path`."""

    def __init__(self, path: str, chunk_size: int) -> None:
        self.path = path
        self.chunk_size = chunk_size
        self._read: dict[int, set[int]] = {}  # inode -> indexes of its chunks read so far
        self._file: IO[bytes] | None = open(path, "wb")  # noqa: SIM115 (open as long as the mount)

    def read(self, ino: int, offset: int, size: int, path_of: Callable[[int], bytes | None]) -> None:
        """Note a read of bytes [offset, offset+size) of inode `ino`; `path_of` names the file."""
        if self._file is None or size <= 0:
            return
        seen = self._read.setdefault(ino, set())
        first, last = offset // self.chunk_size, (offset + size - 1) // self.chunk_size
        new = [index for index in range(first, last + 1) if index not in seen]
        if not new:
            return
        path = path_of(ino)
        if path is None:
            return
        seen.update(new)
        runs: list[list[int]] = []  # consecutive chunk indexes
        for index in new:
            if runs and index == runs[-1][-1] + 1:
                runs[-1].append(index)
            else:
                runs.append([index])
        lines = [entry_line(path, run[0] * self.chunk_size, (run[-1] + 1) * self.chunk_size) for run in runs]
        try:
            self._file.write(b"".join(lines))
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
