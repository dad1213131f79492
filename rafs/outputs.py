"""Every file the project writes for others appears whole or not at all: `atomic_file`, `atomic_directory`.

The builder's bootstrap, unpacked trees and JSON, and the daemon's timeline and downloaded blobs
all go through here.

Each is written under a temporary name beside its target (so the rename stays on one
filesystem), fsynced, and renamed over the target only when the block that writes it ends; if
the block raises, the temporary is removed and the target is untouched. A half-written output
that looks valid can therefore never be left behind.

`tempfile` creates files readable by their owner only (0600). A bootstrap, a blob or an
unpacked tar is meant to be read by others too (a web server serving the blob directory, a
daemon running as another user), so each gets the mode a plain `open()` would have given it:
0666 less the process umask.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO


def created_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def give_ordinary_mode(descriptor: int) -> None:
    """Set a temporary output file's mode to what a plainly created file would have."""
    os.fchmod(descriptor, created_file_mode())


def _temporary_name(path: str) -> tuple[str, str]:
    """(directory, prefix) for a temporary beside `path`."""
    target = os.path.abspath(path)
    return os.path.dirname(target), f".{os.path.basename(target)}-"


@contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` (replacing it) when the block ends without error."""
    directory, prefix = _temporary_name(path)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as output:
            give_ordinary_mode(output.fileno())
            yield output
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """An empty directory (its path is yielded) that becomes `path` when the block ends without
    error. `path` must not exist or be an empty directory, which it replaces."""
    directory, prefix = _temporary_name(path)
    temporary = tempfile.mkdtemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)  # empty: anything else raises, and the temporary is removed
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
