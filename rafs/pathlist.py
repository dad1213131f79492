"""Read a prefetch list: the file `nydusd --trace-out` writes and `--prefetch-files` reads.

One entry a line, in the order the data should be fetched; blank lines and `#` comments are
skipped. An entry is a path (the whole file, or every file below a directory: Nydus's format)
or a path, a tab and a byte range `START-END` of the file (END exclusive), which names only the
chunks holding those bytes. A path may appear on many lines: a trace lists each file's chunks
in the order they were first read, interleaved with other files'. A line whose text after its
last tab is not a range is a path that contains a tab. Like `rafs.mapped`, this module touches
a file so that the builder and the daemon read the one format the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rafs.errors import ConfigError

_RANGE = re.compile(rb"(\d+)-(\d+)")


@dataclass(frozen=True)
class PrefetchEntry:
    """One line of a prefetch list: a path and, when only part of the file is wanted, the bytes."""

    path: bytes
    start: int = 0
    end: int | None = None  # None: the whole file

    def chunk_indexes(self, chunk_size: int, chunk_count: int) -> range:
        """Indexes of the file's chunks (of `chunk_size` bytes, `chunk_count` of them) it names."""
        if self.end is None:
            return range(chunk_count)
        return range(min(self.start // chunk_size, chunk_count), min(-(-self.end // chunk_size), chunk_count))


def entry_line(path: bytes, start: int, end: int) -> bytes:
    """The line for bytes [start, end) of the file at `path` (what `--trace-out` writes)."""
    return b"%s\t%d-%d\n" % (path, start, end)


def parse_entry(line: bytes, where: str) -> PrefetchEntry:
    path, tab, suffix = line.rpartition(b"\t")
    found = _RANGE.fullmatch(suffix) if tab else None
    if found is None:
        return PrefetchEntry(line)
    start, end = int(found[1]), int(found[2])
    if end <= start:
        raise ConfigError(f"{where}: byte range {start}-{end} is empty")
    return PrefetchEntry(path, start, end)


def read_prefetch_entries(path: str) -> tuple[PrefetchEntry, ...]:
    """The entries listed in `path`; `ConfigError` naming the file (and line) if it cannot be read."""
    try:
        with open(path, "rb") as file:
            lines = [line.strip() for line in file.read().splitlines()]
    except OSError as error:
        raise ConfigError(f"--prefetch-files {path}: {error.strerror}") from None
    return tuple(
        parse_entry(line, f"--prefetch-files {path} line {number}")
        for number, line in enumerate(lines, 1)
        if line and not line.startswith(b"#")
    )


def whole_files(paths: tuple[bytes, ...]) -> tuple[PrefetchEntry, ...]:
    """Entries naming these paths whole (a list of paths from the API or a test)."""
    return tuple(PrefetchEntry(path) for path in paths)
